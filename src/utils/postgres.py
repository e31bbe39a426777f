"""PostgreSQL connections for the source and the warehouse.

A database is located by a URL (``postgresql://user:password@host:port/dbname``; a Unix socket
directory goes in ``?host=/path``, as libpq and psql accept it) or, in AWS, by the name of a
Secrets Manager secret holding the connection as JSON::

    {"host": "...", "port": 5432, "username": "...", "password": "...", "dbname": "..."}

(``user`` and ``database`` are accepted for ``username`` and ``dbname``). Connections use pg8000.
Passwords never appear in messages or ``repr``.

How long a database may keep totes waiting, in seconds: ``TOTES_CONNECT_TIMEOUT_SECONDS``
(:class:`totes.utils.settings.Settings`, 10) for a connection to be answered, and
``TOTES_DB_TIMEOUT_SECONDS`` for a lock (the session's ``lock_timeout``); a wait that runs out
is transient (retry later).
"""
from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import Literal

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from totes.contracts.errors import ConfigError, DatabaseRejected, DatabaseUnavailable
from totes.utils import settings
from totes.utils.database_url import parse_url
from totes.utils.postgres_errors import (READ_TIMEOUT_SECONDS, REJECTED_SQLSTATE_PREFIXES,
                                         network_reason, server_error, sqlstate_and_message,
                                         translate_error)

#: The variable that sets how long a database may keep totes waiting.
TIMEOUT_VARIABLE = settings.variable("db_timeout_seconds")
#: The variable that sets how long a connection may take to be answered.
CONNECT_TIMEOUT_VARIABLE = settings.variable("connect_timeout_seconds")


@dataclass(frozen=True)
class Database:
    """Where one database is and how to log in; ``role`` ("source", "warehouse") names it in
    messages. ``params`` are pg8000 connect arguments and hold the password, so ``repr`` hides
    them."""

    role: str
    params: dict = field(repr=False)
    engine = "postgresql"

    @classmethod
    def from_url(cls, role: str, url: str) -> "Database":
        """Parse ``postgresql://user:password@host:port/dbname[?host=/socket/dir&sslmode=require]``.

        How it is read (libpq's URI form, made robust for passwords): the credentials are
        everything before the **last** ``@``, the user before their first ``:`` and the
        password after it, so a password may hold any character, ``/ ? # @ :`` included.
        Every part is percent-decoded (``%2F`` is ``/``; write a ``%`` followed by two hex
        digits as ``%25``). A user name holding ``:`` or ``@``, and a database name or query
        value holding ``/ ? # @``, must be percent-encoded. The URL is never echoed in a
        message.

        Raises:
            ConfigError: the URL is not a PostgreSQL URL, its port is not a number from 1 to
                65535, or it names no database (the message names the role, not the URL).
        """
        _, parts = parse_url(role, url, ("postgresql", "postgres"),
                             "postgresql://user:password@host:port/dbname", 5432)
        query = parts["query"]
        params: dict = {
            "user": parts["user"] or query.get("user", "postgres"),
            "password": parts["password"],
            "database": parts["database"],
        }
        host, port = query.get("host") or parts["host"], parts["port"]
        if host.startswith("/"):
            params["unix_sock"] = f"{host}/.s.PGSQL.{port}"
        else:
            params["host"], params["port"] = host, port
        _set_tls(params, query.get("sslmode", "prefer"))
        return cls(role, params)

    @classmethod
    def from_document(cls, role: str, secret_id: str, doc: dict) -> "Database":
        """The database of a secret's JSON (see the module docstring; read by
        :func:`totes.utils.secrets.read_secret`).

        Raises:
            ConfigError: the JSON lacks host, username, password or dbname.
        """
        try:
            params = {
                "host": doc["host"],
                "port": int(doc.get("port", 5432)),
                "user": doc.get("username", doc.get("user")),
                "password": doc["password"],
                "database": doc.get("dbname", doc.get("database")),
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"secret {secret_id!r} of the {role} database must be JSON with "
                              "host, port, username, password and dbname") from exc
        if not params["user"] or not params["database"]:
            raise ConfigError(f"secret {secret_id!r} of the {role} database lacks "
                              "username or dbname")
        if params["host"].startswith("/"):  # a Unix socket directory, as libpq reads host
            params["unix_sock"] = f"{params.pop('host')}/.s.PGSQL.{params.pop('port')}"
        _set_tls(params, doc.get("sslmode", "require"))
        return cls(role, params)

    def to_secret(self) -> str:
        """The connection as the JSON a Secrets Manager secret holds (see
        :meth:`from_document`): what ``make put-secrets`` stores. Contains the password."""
        if "unix_sock" in self.params:
            folder, _, name = self.params["unix_sock"].rpartition("/")
            host, port = folder, int(name.rsplit(".", 1)[1])
        else:
            host, port = self.params["host"], self.params["port"]
        return json.dumps({"engine": "postgres", "host": host, "port": port,
                           "username": self.params["user"],
                           "password": self.params.get("password") or "",
                           "dbname": self.params["database"],
                           "sslmode": _SSLMODE[type(self.params.get("ssl_context", None))]})

    def location(self) -> tuple:
        """Where the database is: ``(socket path or (host, port), database name)``."""
        where = self.params.get("unix_sock") or (self.params["host"].lower(), self.params["port"])
        return where, self.params["database"]

    def describe(self) -> str:
        """``source database totesys at db.example.com:5432`` (no user, no password)."""
        where = self.params.get("unix_sock") or f"{self.params['host']}:{self.params['port']}"
        return f"{self.role} database {self.params['database']} at {where}"

    def session(self, application_name: str, doing: str) -> "Session":
        """A connection for one piece of work: ``with source.session("totes-plan", "checking
        the configured tables") as session: session.conn.run(...)``. See :class:`Session`."""
        return Session(self, application_name, doing)

    def connect(self, application_name: str = "totes") -> pg8000.native.Connection:
        """Open a pg8000 native connection with UTC, ISO dates and ``application_name``.

        The session waits at most ``TOTES_DB_TIMEOUT_SECONDS`` for a lock (``lock_timeout``).

        Raises:
            DatabaseUnavailable: the server could not be reached, or did not answer within
                ``TOTES_CONNECT_TIMEOUT_SECONDS`` (retry may help).
            DatabaseRejected: authentication failed or the database does not exist.
        """
        current = settings.current()
        timeout = current.db_timeout_seconds
        network_timeout = current.connect_timeout_seconds
        try:
            if "ssl_context" in self.params:
                conn = pg8000.native.Connection(application_name=application_name,
                                                timeout=network_timeout, **self.params)
            else:
                # sslmode=prefer: pg8000 builds an SSL context per connection, and OpenSSL's
                # certificate loading crashed when parallel ingest threads did it at once.
                with _PREFER_TLS_LOCK:
                    conn = pg8000.native.Connection(application_name=application_name,
                                                    timeout=network_timeout, **self.params)
        except TimeoutError:
            raise DatabaseUnavailable(
                f"the {self.describe()} did not answer within {network_timeout:g} s; check "
                "that the server is running and reachable there (a firewall that drops "
                "packets looks the same), or wait longer with "
                f"{CONNECT_TIMEOUT_VARIABLE}") from None
        except (InterfaceError, DatabaseError, OSError) as exc:
            refusal = server_error(exc)
            if refusal is None:
                raise DatabaseUnavailable(
                    f"cannot reach the {self.describe()}: {network_reason(exc)}. Check that "
                    "the server is running and accepts connections there, and that the URL "
                    f"or secret of the {self.role} database names the right host and port"
                ) from None
            state, message = sqlstate_and_message(refusal)
            error = (DatabaseRejected if state.startswith(REJECTED_SQLSTATE_PREFIXES)
                     else DatabaseUnavailable)
            raise error(f"the {self.describe()} refused the connection: {message} "
                        f"(SQLSTATE {state})") from None
        socket_ = getattr(conn, "_usock", None)  # pg8000 keeps the socket there
        if socket_ is not None:
            socket_.settimeout(READ_TIMEOUT_SECONDS)
        conn.run("SET TIME ZONE 'UTC'")
        conn.run("SET datestyle TO ISO, YMD")
        conn.run("SELECT set_config('lock_timeout', :ms, false)", ms=f"{int(timeout * 1000)}ms")
        return conn


_PREFER_TLS_LOCK = threading.Lock()
# What each ssl_context setting means, in libpq's sslmode words (for to_secret).
_SSLMODE = {bool: "disable", type(None): "prefer", ssl.SSLContext: "require"}


def _set_tls(params: dict, sslmode: str) -> None:
    """Set pg8000's ``ssl_context`` as libpq reads ``sslmode``: never over a Unix socket or
    with ``disable``; a verifying context, built once here, with ``require``/``verify-*``;
    with ``prefer`` (libpq's default) pg8000 tries TLS and falls back to plain."""
    if "unix_sock" in params or sslmode in ("disable", "allow"):
        params["ssl_context"] = False
    elif sslmode in ("require", "verify-ca", "verify-full"):
        params["ssl_context"] = ssl.create_default_context()


def close_quietly(conn) -> None:
    """Close ``conn`` after the work on it has succeeded or already raised; a connection
    that broke with that work cannot be closed cleanly, and the error that matters is the
    one already raised."""
    try:
        conn.close()
    except (InterfaceError, DatabaseError, OSError):
        pass


def run_script(conn, script: str) -> None:
    """Run the statements of a SQL script, separated by blank lines (``--`` lines ignored)."""
    for statement in script.split("\n\n"):
        lines = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
        if "".join(lines).strip():
            conn.run("\n".join(lines))


class Session:
    """Context manager around one connection: opens it on entry, always closes it, and turns a
    driver error raised inside into a :class:`DatabaseUnavailable` (retry can help) or a
    ``TerminalError``, with a message starting with ``doing`` (update it as work proceeds).
    An error the pipeline raised itself passes through unchanged."""

    #: The open connection (from :meth:`__enter__` on).
    conn: pg8000.native.Connection

    def __init__(self, database: Database, application_name: str, doing: str):
        self.database, self.application_name, self.doing = database, application_name, doing

    def __enter__(self) -> "Session":
        self.conn = self.database.connect(self.application_name)
        return self

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        close_quietly(self.conn)
        if exc is not None and isinstance(exc, Exception):
            translated = translate_error(exc, self.doing)
            if translated is not exc:
                raise translated from exc
        return False
