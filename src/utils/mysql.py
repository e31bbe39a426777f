"""MySQL and MariaDB connections for a source database, through PyMySQL.

A MySQL source is located by a URL, ``mysql://user:password@host:port/dbname`` (``mariadb://``
is the same; a Unix socket goes in ``?unix_socket=/path/to/mysqld.sock``; TLS with
``?sslmode=require``, plain with ``disable``, the default), or, in AWS, by a Secrets Manager
secret whose JSON says ``"engine": "mysql"`` (or ``"mariadb"``), as RDS writes it::

    {"engine": "mysql", "host": "...", "port": 3306, "username": "...", "password": "...",
     "dbname": "..."}

The URL is read by the same rules as a PostgreSQL one (:meth:`totes.utils.postgres.Database.
from_url`: any character in a password, every part percent-decoded, never echoed).

Every session is set up alike: ``time_zone = '+00:00'`` (``TIMESTAMP`` values are read in
UTC; ``DATETIME`` values as stored), ``ANSI_QUOTES`` added to the ``sql_mode`` (so
:func:`totes.contracts.identifiers.quote_ident`'s double quotes are identifiers in both
engines), and the lock waits (``innodb_lock_wait_timeout``, ``lock_wait_timeout``) of
``TOTES_DB_TIMEOUT_SECONDS``. Errors are mapped as PostgreSQL's are: a server that
cannot be reached, a lost connection, a lock wait or deadlock are
:class:`~totes.contracts.errors.DatabaseUnavailable` (retry); a refused login or unknown database
is :class:`~totes.contracts.errors.DatabaseRejected`; anything else a ``TerminalError`` naming the
MySQL error number.
"""
from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Literal

import pymysql
import pymysql.cursors

from totes.contracts.errors import (ConfigError, DatabaseRejected, DatabaseUnavailable,
                                    TerminalError)
from totes.utils import settings
from totes.utils.database_url import MYSQL_SCHEMES, parse_url
from totes.utils.postgres import CONNECT_TIMEOUT_VARIABLE
from totes.utils.postgres_errors import READ_TIMEOUT_SECONDS

DEFAULT_PORT = 3306

# MySQL error numbers where the same statement can succeed later: cannot connect (2002, 2003),
# server gone or connection lost (2006, 2013), too many connections (1040), shutdown in
# progress (1053), lock wait timeout (1205), deadlock (1213), query interrupted (1317),
# connection killed (1927), statement time limit (3024), idle connection closed (4031).
_TRANSIENT_ERRORS = {1040, 1053, 1205, 1213, 1317, 1927, 2002, 2003, 2006, 2013, 3024, 4031}
# Refused logins and unknown databases: a person must change the URL, the secret or a grant.
_REJECTED_ERRORS = {1044, 1045, 1049, 1698}
#: Privilege errors: table access denied (1142), column access denied (1143), a privilege
#: such as PROCESS missing (1227).
ACCESS_DENIED_ERRORS = {1142, 1143, 1227}


def error_number(exc: BaseException) -> int:
    """The MySQL error number of a PyMySQL error (``1205``), or 0."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return 0


def _message(exc: BaseException) -> str:
    return str(exc.args[1]) if len(exc.args) > 1 else str(exc)


def translate_mysql_error(exc: Exception, doing: str) -> Exception:
    """Turn a PyMySQL error raised while ``doing`` into a :class:`DatabaseUnavailable` when a
    retry can help, else into a ``TerminalError``; other exceptions are returned unchanged."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return DatabaseUnavailable(f"{doing}: connection lost ({exc})")
    if not isinstance(exc, pymysql.err.MySQLError):
        return exc
    number = error_number(exc)
    if number in _TRANSIENT_ERRORS or (number == 0 and isinstance(
            exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError))):
        return DatabaseUnavailable(f"{doing}: {_message(exc)} (MySQL error {number})")
    if number in _REJECTED_ERRORS:
        return DatabaseRejected(f"{doing}: {_message(exc)} (MySQL error {number})")
    return TerminalError(f"{doing}: {_message(exc)} (MySQL error {number})")


class MySQLConnection:
    """A PyMySQL connection with the one call the pipeline's generic code uses:
    ``run(sql, **params)`` returns the rows as a list of tuples (``%(name)s`` placeholders,
    values bound by the driver). ``raw`` is the PyMySQL connection, for streaming cursors."""

    def __init__(self, raw: pymysql.connections.Connection):
        self.raw = raw

    def run(self, sql: str, **params) -> list[tuple]:
        with self.raw.cursor() as cursor:
            cursor.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    def streaming_cursor(self) -> pymysql.cursors.SSCursor:
        """An unbuffered cursor: rows come from the server as they are fetched."""
        return self.raw.cursor(pymysql.cursors.SSCursor)

    def close(self) -> None:
        self.raw.close()


@dataclass(frozen=True)
class MySQLDatabase:
    """Where one MySQL or MariaDB database is and how to log in (PyMySQL connect arguments,
    hidden from ``repr``: they hold the password); ``role`` names it in messages."""

    role: str
    params: dict = field(repr=False)
    engine = "mysql"

    @classmethod
    def from_url(cls, role: str, url: str) -> "MySQLDatabase":
        """Parse ``mysql://user:password@host:port/dbname[?unix_socket=/path&sslmode=require]``
        (the module docstring says how).

        Raises:
            ConfigError: not a MySQL URL, a bad port, or no database name (the message names
                the role, not the URL).
        """
        _, parts = parse_url(role, url, MYSQL_SCHEMES, "mysql://user:password@host:port/"
                             "dbname", DEFAULT_PORT)
        params = {"user": parts["user"] or "root", "password": parts["password"] or "",
                  "database": parts["database"]}
        socket_path = parts["query"].get("unix_socket")
        if socket_path:
            params["unix_socket"] = socket_path
        else:
            params["host"], params["port"] = parts["host"], parts["port"]
        _set_tls(params, parts["query"].get("sslmode", parts["query"].get("ssl-mode",
                                                                          "disable")))
        return cls(role, params)

    @classmethod
    def from_document(cls, role: str, secret_id: str, doc: dict) -> "MySQLDatabase":
        """The database of a secret's JSON (see the module docstring).

        Raises:
            ConfigError: the JSON lacks host, username, password or dbname.
        """
        try:
            params = {"host": doc["host"], "port": int(doc.get("port", DEFAULT_PORT)),
                      "user": doc.get("username", doc.get("user")), "password": doc["password"],
                      "database": doc.get("dbname", doc.get("database"))}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"secret {secret_id!r} of the {role} database must be JSON with "
                              "host, port, username, password and dbname") from exc
        if not params["user"] or not params["database"]:
            raise ConfigError(f"secret {secret_id!r} of the {role} database lacks username "
                              "or dbname")
        if params["host"].startswith("/"):
            params["unix_socket"] = params.pop("host")
            params.pop("port")
        _set_tls(params, doc.get("sslmode", "require"))
        return cls(role, params)

    def to_secret(self) -> str:
        """The connection as a secret's JSON (contains the password)."""
        host = self.params.get("unix_socket") or self.params["host"]
        return json.dumps({"engine": "mysql", "host": host,
                           "port": self.params.get("port", DEFAULT_PORT),
                           "username": self.params["user"],
                           "password": self.params.get("password") or "",
                           "dbname": self.params["database"],
                           "sslmode": "require" if "ssl" in self.params else "disable"})

    def location(self) -> tuple:
        """``(socket path or (host, port), database name)``."""
        where = self.params.get("unix_socket") or (self.params["host"].lower(),
                                                   self.params["port"])
        return where, self.params["database"]

    def describe(self) -> str:
        """``source database totesys at db.example.com:3306 (MySQL)`` (no user, no password)."""
        where = self.params.get("unix_socket") or f"{self.params['host']}:{self.params['port']}"
        return f"{self.role} database {self.params['database']} at {where} (MySQL)"

    def session(self, application_name: str, doing: str) -> "MySQLSession":
        """A connection for one piece of work (as :meth:`totes.utils.postgres.Database.session`)."""
        return MySQLSession(self, application_name, doing)

    def connect(self, application_name: str = "totes") -> MySQLConnection:
        """Open a connection set up as the module docstring says.

        Raises:
            DatabaseUnavailable: the server could not be reached or did not answer in time.
            DatabaseRejected: the login was refused or the database does not exist.
        """
        timeout = settings.current().db_timeout_seconds
        wait = max(1, int(timeout))
        setup = ("SET time_zone = '+00:00', "
                 "sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'ANSI_QUOTES'), "
                 f"innodb_lock_wait_timeout = {wait}, lock_wait_timeout = {wait}")
        try:
            raw = pymysql.connect(**self.params, charset="utf8mb4", autocommit=True,
                                  connect_timeout=settings.current().connect_timeout_seconds,
                                  read_timeout=READ_TIMEOUT_SECONDS,
                                  write_timeout=READ_TIMEOUT_SECONDS, init_command=setup,
                                  program_name=application_name)
        except pymysql.err.MySQLError as exc:
            number = error_number(exc)
            if number in _REJECTED_ERRORS:
                raise DatabaseRejected(f"the {self.describe()} refused the connection: "
                                       f"{_message(exc)} (MySQL error {number})") from None
            if number in (2002, 2003, 2013) or number in _TRANSIENT_ERRORS:
                raise DatabaseUnavailable(
                    f"cannot reach the {self.describe()}: {_message(exc)}. Check that the "
                    "server is running and accepts connections there, that the URL or secret "
                    f"of the {self.role} database names the right host and port, or wait "
                    f"longer with {CONNECT_TIMEOUT_VARIABLE}") from None
            raise DatabaseRejected(f"the {self.describe()} refused the connection: "
                                   f"{_message(exc)} (MySQL error {number})") from None
        return MySQLConnection(raw)


def _set_tls(params: dict, sslmode: str) -> None:
    """``require``/``verify-*`` (or MySQL's ``REQUIRED``/``VERIFY_*``): TLS with a verifying
    context; ``disable``/``prefer`` (PyMySQL does not fall back): plain."""
    mode = sslmode.lower().replace("_", "-")
    if mode in ("require", "required", "verify-ca", "verify-full", "verify-identity"):
        params["ssl"] = ssl.create_default_context()
    elif mode not in ("disable", "disabled", "prefer", "preferred", "allow"):
        raise ConfigError(f"sslmode {sslmode!r}: use disable, require or verify-full")


class MySQLSession:
    """Context manager around one MySQL connection, as :class:`totes.utils.postgres.Session`:
    always closed; a driver error raised inside becomes DatabaseUnavailable (retry) or a
    TerminalError whose message starts with ``doing``."""

    #: The open connection (from :meth:`__enter__` on).
    conn: MySQLConnection

    def __init__(self, database: MySQLDatabase, application_name: str, doing: str):
        self.database, self.application_name, self.doing = database, application_name, doing

    def __enter__(self) -> "MySQLSession":
        self.conn = self.database.connect(self.application_name)
        return self

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        try:
            self.conn.close()
        except (pymysql.err.MySQLError, OSError):
            pass  # a connection that broke with the work: the work's error is the one raised
        if exc is not None and isinstance(exc, Exception):
            translated = translate_mysql_error(exc, self.doing)
            if translated is not exc:
                raise translated from exc
        return False
