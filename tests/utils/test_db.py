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
