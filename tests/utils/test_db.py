"""Database locations and errors: URLs, unreachable servers, no password in messages."""
import pytest

from totes.utils.db import Database, quote_ident
from totes.utils.errors import ConfigError, DatabaseRejected, DatabaseUnavailable


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


def test_a_bad_url_is_a_configuration_error():
    with pytest.raises(ConfigError, match="source database URL must start with postgresql"):
        Database.from_url("source", "mysql://x@y/z")
    with pytest.raises(ConfigError, match="names no database"):
        Database.from_url("source", "postgresql://x@y")


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
    tcp = Database.from_url("source", "postgresql://etl:s3cret@db.example.com:6543/totesys"
                                      "?sslmode=require")
    secrets.create_secret(Name="totes/source", SecretString=tcp.to_secret())
    read = Database.from_secret("source", "totes/source")
    assert {k: read.params[k] for k in ("host", "port", "user", "password", "database")} == {
        "host": "db.example.com", "port": 6543, "user": "etl", "password": "s3cret",
        "database": "totesys"}
    assert "ssl_context" in read.params  # sslmode=require survives the round trip
    plain = Database.from_url("source", "postgresql://etl:pw@db.example.com/totesys")
    secrets.create_secret(Name="totes/plain", SecretString=plain.to_secret())
    assert "ssl_context" not in Database.from_secret("source", "totes/plain").params

    # The test server listens on a Unix socket: a secret naming its directory connects.
    secrets.create_secret(Name="totes/local", SecretString=server.to_secret())
    local = Database.from_secret("warehouse", "totes/local")
    with local.session("test", "reading the version") as session:
        assert session.conn.run("SELECT 1") == [[1]]


def test_a_bad_secret_is_a_configuration_error_without_its_value(secrets):
    secrets.create_secret(Name="totes/bad", SecretString='{"host": "h", "password": "pw!"}')
    with pytest.raises(ConfigError, match="secret 'totes/bad' of the source database lacks "
                                          "username or dbname") as error:
        Database.from_secret("source", "totes/bad")
    assert "pw!" not in str(error.value)
    secrets.create_secret(Name="totes/text", SecretString="pw! not json")
    with pytest.raises(ConfigError, match="must be JSON with host, port, username") as error:
        Database.from_secret("source", "totes/text")
    assert "pw!" not in str(error.value)
    with pytest.raises(ConfigError, match="ResourceNotFoundException"):
        Database.from_secret("source", "totes/missing")
