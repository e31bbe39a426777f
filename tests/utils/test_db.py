"""Database locations and errors: URLs, unreachable servers, no password in messages."""
import pytest

from totes.contracts.errors import ConfigError, DatabaseRejected, DatabaseUnavailable
from totes.contracts.identifiers import quote_ident
from totes.utils.postgres import Database


def test_urls_with_a_host_or_a_socket_directory():
    tcp = Database.from_url("source", "postgresql://etl:s%40cret@db.example.com:6543/totesys")
    assert tcp.params["host"] == "db.example.com" and tcp.params["port"] == 6543
    assert tcp.params["password"] == "s@cret" and tcp.params["database"] == "totesys"
    sock = Database.from_url("warehouse", "postgresql://postgres:@/warehouse?host=/tmp/pg")
    assert sock.params["unix_sock"] == "/tmp/pg/.s.PGSQL.5432"
    assert "s@cret" not in repr(tcp) and "s@cret" not in tcp.describe()


def test_tls_follows_libpq_sslmode():
    import ssl

    def tls(url):
        return Database.from_url("source", url).params.get("ssl_context", "pg8000 default")

    assert tls("postgresql://u@/db?host=/tmp/pg") is False  # never over a Unix socket
    assert tls("postgresql://u@/db?host=/tmp/pg&sslmode=require") is False
    assert tls("postgresql://u@db.example.com/db?sslmode=disable") is False
    assert tls("postgresql://u@db.example.com/db") == "pg8000 default"  # prefer
    assert isinstance(tls("postgresql://u@db.example.com/db?sslmode=require"), ssl.SSLContext)


def test_a_bad_url_is_a_configuration_error_that_never_echoes_it():
    cases = {"mysql://x:hunter2@y/z": "source database URL must look like postgresql://",
             "hunter2": "source database URL must look like postgresql://",
             "postgresql://x:hunter2@y": "names no database",
             "postgresql://x:hunter2@y:abc/db": "port 'abc' is not a number from 1 to 65535",
             "postgresql://x:hunter2@y:70000/db": "port '70000' is not a number from 1 to",
             "postgresql://x:hunter2@y:0/db": "port '0' is not a number from 1 to 65535"}
    for url, message in cases.items():
        with pytest.raises(ConfigError, match=message) as error:
            Database.from_url("source", url)
        assert "hunter2" not in str(error.value), url


PRINTABLE = [chr(c) for c in range(32, 127)]


@pytest.mark.parametrize("character", PRINTABLE)
def test_every_printable_character_survives_in_credentials_and_names(character):
    from urllib.parse import quote

    password, user, name = f"p{character}w", f"u{character}", f"db{character}x"
    raw = Database.from_url("source", f"postgresql://{quote(user, safe='')}:{password}"
                                      f"@db.example.com:6543/{quote(name, safe='')}")
    encoded = Database.from_url("source", f"postgresql://{quote(user, safe='')}:"
                                          f"{quote(password, safe='')}@db.example.com:6543/"
                                          f"{quote(name, safe='')}")
    for parsed in (raw, encoded):
        assert (parsed.params["user"], parsed.params["password"], parsed.params["database"],
                parsed.params["host"], parsed.params["port"]) == \
            (user, password, name, "db.example.com", 6543)
        assert password not in repr(parsed) and "p" + character + "w" not in parsed.describe()


def test_a_password_with_url_characters_never_reaches_a_message():
    database = Database.from_url("source", "postgresql://etl:SECRET/part@q#x@127.0.0.1:9/db")
    assert database.params["password"] == "SECRET/part@q#x"
    with pytest.raises(DatabaseUnavailable) as error:
        database.connect()
    assert "SECRET" not in str(error.value) and "part" not in str(error.value)
    assert str(error.value).startswith("cannot reach the source database db at 127.0.0.1:9")


def test_a_server_that_accepts_but_never_answers_is_transient(monkeypatch):
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    monkeypatch.setenv("TOTES_CONNECT_TIMEOUT_SECONDS", "0.5")
    database = Database.from_url("source", f"postgresql://etl@127.0.0.1:"
                                           f"{listener.getsockname()[1]}/db")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="did not answer within 0.5 s.*"
                                                  "TOTES_CONNECT_TIMEOUT_SECONDS"):
        database.connect()
    assert time.monotonic() - started < 5
    listener.close()
    monkeypatch.setenv("TOTES_DB_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ConfigError, match="TOTES_DB_TIMEOUT_SECONDS='soon': input should be "
                                          "a valid number"):
        database.connect()


def test_an_unreachable_server_is_transient_and_hides_the_password():
    database = Database.from_url("source", "postgresql://etl:hunter2@127.0.0.1:9/totesys")
    with pytest.raises(DatabaseUnavailable) as error:
        database.connect()
    assert error.value.retryable
    assert "source database totesys at 127.0.0.1:9" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_a_missing_database_is_terminal(server):
    missing = Database("warehouse", dict(server.params, database="no_such_db"))
    message = 'warehouse database no_such_db .*"no_such_db" does not exist'
    with pytest.raises(DatabaseRejected, match=message) as error:
        missing.connect()
    assert not error.value.retryable


def test_identifiers_are_validated_and_quoted():
    assert quote_ident("sales_order") == '"sales_order"'
    for bad in ("Sales", "a-b", 'x"; DROP TABLE y; --', "1st", "", "a" * 64):
        with pytest.raises(ConfigError, match="not a valid identifier"):
            quote_ident(bad)


@pytest.fixture
def secrets(monkeypatch):
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("secretsmanager")


def test_a_connection_round_trips_through_secrets_manager(secrets, server):
    from totes.utils.databases import database_from_secret

    tcp = Database.from_url("source", "postgresql://etl:s3cret@db.example.com:6543/totesys"
                                      "?sslmode=require")
    secrets.create_secret(Name="totes/source", SecretString=tcp.to_secret())
    read = database_from_secret("source", "totes/source")
    assert {k: read.params[k] for k in ("host", "port", "user", "password", "database")} == {
        "host": "db.example.com", "port": 6543, "user": "etl", "password": "s3cret",
        "database": "totesys"}
    assert "ssl_context" in read.params  # sslmode=require survives the round trip
    plain = Database.from_url("source", "postgresql://etl:pw@db.example.com/totesys")
    secrets.create_secret(Name="totes/plain", SecretString=plain.to_secret())
    assert "ssl_context" not in database_from_secret("source", "totes/plain").params

    # The test server listens on a Unix socket: a secret naming its directory connects.
    secrets.create_secret(Name="totes/local", SecretString=server.to_secret())
    local = database_from_secret("warehouse", "totes/local")
    with local.session("test", "reading the version") as session:
        assert session.conn.run("SELECT 1") == [[1]]


def test_a_bad_secret_is_a_configuration_error_without_its_value(secrets):
    from totes.utils.databases import database_from_secret

    secrets.create_secret(Name="totes/bad", SecretString='{"host": "h", "password": "pw!"}')
    with pytest.raises(ConfigError, match="secret 'totes/bad' of the source database lacks "
                                          "username or dbname") as error:
        database_from_secret("source", "totes/bad")
    assert "pw!" not in str(error.value)
    secrets.create_secret(Name="totes/text", SecretString="pw! not json")
    with pytest.raises(ConfigError, match="must be JSON with host, port, username") as error:
        database_from_secret("source", "totes/text")
    assert "pw!" not in str(error.value)
    with pytest.raises(ConfigError, match="ResourceNotFoundException"):
        database_from_secret("source", "totes/missing")


# ---- MySQL and MariaDB sources --------------------------------------------------------------
def test_a_mysql_url_is_read_by_the_same_rules():
    from totes.utils.databases import database_from_url

    tcp = database_from_url("source", "mysql://etl:p%40ss/w@rd@db.example.com:3307/totesys"
                                      "?sslmode=require")
    assert tcp.engine == "mysql"
    assert {k: tcp.params[k] for k in ("user", "password", "host", "port", "database")} == {
        "user": "etl", "password": "p@ss/w@rd", "host": "db.example.com", "port": 3307,
        "database": "totesys"}
    assert "ssl" in tcp.params and "w@rd" not in repr(tcp) + tcp.describe()
    assert tcp.describe() == "source database totesys at db.example.com:3307 (MySQL)"
    sock = database_from_url("source", "mariadb://root@localhost/totesys?unix_socket=/run/m.sock")
    assert sock.params["unix_socket"] == "/run/m.sock" and "host" not in sock.params
    assert "ssl" not in sock.params  # plain unless asked
    assert database_from_url("source", "postgresql://etl@h/db").engine == "postgresql"
    with pytest.raises(ConfigError, match="the warehouse database must be PostgreSQL"):
        database_from_url("warehouse", "mysql://etl:pw@h/warehouse")
    with pytest.raises(ConfigError, match="source database URL names no database"):
        database_from_url("source", "mysql://etl:pw@h:3306/")
    with pytest.raises(ConfigError, match="sslmode 'sometimes'"):
        database_from_url("source", "mysql://etl:pw@h/db?sslmode=sometimes")


def test_a_mysql_secret_is_read_as_rds_writes_it(secrets, mariadb):
    import json

    from totes.utils.databases import database_from_secret
    from totes.utils.mysql import MySQLDatabase

    secrets.create_secret(Name="totes/rds", SecretString=json.dumps({
        "engine": "mysql", "host": "db.example.com", "port": 3306, "username": "etl",
        "password": "pw!", "dbname": "totesys"}))
    rds = database_from_secret("source", "totes/rds")
    assert isinstance(rds, MySQLDatabase) and rds.params["host"] == "db.example.com"
    assert "ssl" in rds.params  # TLS by default for a secret, as for PostgreSQL's
    with pytest.raises(ConfigError, match="must be PostgreSQL"):
        database_from_secret("warehouse", "totes/rds")
    # A secret naming the test server's socket connects.
    local = MySQLDatabase.from_url("source", mariadb.url("mysql"))
    secrets.create_secret(Name="totes/mariadb", SecretString=local.to_secret())
    read = database_from_secret("source", "totes/mariadb")
    with read.session("test", "reading the version") as session:
        (version,), = session.conn.run("SELECT VERSION()")
    assert "MariaDB" in version


def test_a_command_finds_its_databases_by_secret_when_no_url_is_given(secrets, server,
                                                                      tmp_path):
    from totes.local.workspace import Workspace
    from totes.utils.settings import Settings

    secrets.create_secret(Name="totes/wh", SecretString=server.to_secret())
    with_secret = Settings(warehouse_secret="totes/wh", home=str(tmp_path))
    workspace = Workspace(current=with_secret)
    assert not workspace.is_embedded("warehouse") and workspace.is_embedded("source")
    with workspace.database("warehouse").session("test", "reading") as session:
        assert session.conn.run("SELECT 1") == [[1]]
    by_url = Workspace(warehouse_url="postgresql://u@h/db", current=with_secret)
    assert by_url.secret("warehouse") is None  # a URL wins over the secret


def test_the_tests_server_runs_without_durability(server):
    """The session's throwaway server (EmbeddedPostgres(durable=False)) skips fsync."""
    with server.session("tests", "reading the server's settings") as session:
        assert session.conn.run("SHOW fsync") == [["off"]]
        assert session.conn.run("SHOW full_page_writes") == [["off"]]
        assert session.conn.run("SHOW synchronous_commit") == [["on"]]  # commits in the log
