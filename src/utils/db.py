"""PostgreSQL connections for the source and the warehouse, and safe SQL identifiers.

A database is located by a URL (``postgresql://user:password@host:port/dbname``; a Unix socket
directory goes in ``?host=/path``, as libpq and psql accept it) or, in AWS, by the name of a
Secrets Manager secret holding the connection as JSON::

    {"host": "...", "port": 5432, "username": "...", "password": "...", "dbname": "..."}

(``user`` and ``database`` are accepted for ``username`` and ``dbname``). Connections use pg8000.
Passwords never appear in messages or ``repr``.
"""
from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from totes.utils.errors import ConfigError, DatabaseRejected, DatabaseUnavailable

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: How long a database may keep totes waiting, in seconds: for a lock (the session's
#: ``lock_timeout``), and twice that for a connection to be answered (twice, so that the
#: server's own lock timeout, which names the lock, comes first). Set by
#: ``TOTES_DB_TIMEOUT_SECONDS``; a wait that runs out is transient (retry later).
DEFAULT_TIMEOUT_SECONDS = 60.0
TIMEOUT_VARIABLE = "TOTES_DB_TIMEOUT_SECONDS"
#: Once connected, how long one network read may wait: a statement may legitimately send
#: nothing for minutes (the sort before a large extract's first row), so this is the longest
#: a stage may run (Lambda's 15 minutes), not the connection wait.
READ_TIMEOUT_SECONDS = 900.0


def timeout_seconds(env=os.environ) -> float:
    """``TOTES_DB_TIMEOUT_SECONDS`` or 60.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    text = env.get(TIMEOUT_VARIABLE)
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r}: give a positive number of seconds")
    return value


# SQLSTATE classes a retry cannot fix: invalid authorization (28), invalid catalog name (3D).
_TERMINAL_SQLSTATE_PREFIXES = ("28", "3D")


def quote_ident(name: str) -> str:
    """Return ``name`` as a quoted SQL identifier, after checking it is a plain lower-case name.

    Raises:
        ConfigError: ``name`` is not ``[a-z_][a-z0-9_]*`` of at most 63 characters.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(
            f"{name!r} is not a valid identifier: use lower-case letters, digits and _ "
            "(at most 63 characters, not starting with a digit)"
        )
    return f'"{name}"'


#: The ``engine`` values of a secret that mean MySQL (as :mod:`totes.utils.mysql` reads them).
MYSQL_ENGINES = ("mysql", "mariadb", "aurora-mysql")
#: URL schemes of a MySQL or MariaDB database.
MYSQL_SCHEMES = ("mysql", "mariadb")


def parse_url(role: str, url: str, schemes: tuple[str, ...], example: str,
              default_port: int) -> tuple[str, dict]:
    """Split a database URL into ``(scheme, {"user", "password", "host", "port", "database",
    "query"})``, every part percent-decoded; ``password`` is None when absent.

    How it is read (libpq's URI form, made robust for passwords): the credentials are
    everything before the **last** ``@``, the user before their first ``:`` and the password
    after it, so a password may hold any character, ``/ ? # @ :`` included. A user name
    holding ``:`` or ``@``, and a database name or query value holding ``/ ? # @``, must be
    percent-encoded. The URL is never echoed in a message.

    Raises:
        ConfigError: the scheme is not one of ``schemes``, the port is not a number from 1 to
            65535, or the URL names no database (the message names the role, not the URL).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in schemes:
        raise ConfigError(f"{role} database URL must look like {example}")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    location, _, query_text = location.partition("?")
    hostport, _, database = location.partition("/")
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    database = unquote(database.split("#", 1)[0])
    if not database:
        raise ConfigError(f"{role} database URL names no database (…/dbname)")
    user, colon, password = userinfo.partition(":")
    hostname, port_text = _host_and_port(hostport)
    return scheme.lower(), {
        "user": unquote(user), "password": unquote(password) if colon and password else None,
        "host": unquote(hostname) or "localhost",
        "port": _port(role, port_text or query.get("port") or str(default_port)),
        "database": database, "query": query}


def database_from_url(role: str, url: str):
    """The database a URL names: a :class:`Database` for ``postgresql://``, a
    :class:`totes.utils.mysql.MySQLDatabase` for ``mysql://`` or ``mariadb://`` (a source
    only: the warehouse is PostgreSQL).

    Raises:
        ConfigError: as :meth:`Database.from_url`, or a MySQL URL for the warehouse.
    """
    if url.partition("://")[0].lower() in MYSQL_SCHEMES:
        from totes.utils.mysql import MySQLDatabase

        _refuse_mysql(role)
        return MySQLDatabase.from_url(role, url)
    return Database.from_url(role, url)


def _refuse_mysql(role: str) -> None:
    if role == "warehouse":
        raise ConfigError("the warehouse database must be PostgreSQL (postgresql://...); "
                          "MySQL and MariaDB are supported as sources")


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
    def from_secret(cls, role: str, secret_id: str, session=None):
        """Read the connection JSON (see module docstring) from Secrets Manager: a
        :class:`Database`, or a :class:`totes.utils.mysql.MySQLDatabase` when the JSON says
        ``"engine": "mysql"`` (a source only).

        Raises:
            ConfigError: the secret is not JSON or lacks host, username, password or dbname.
            DatabaseUnavailable: Secrets Manager could not be reached.
        """
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = (session or boto3.session.Session()).client("secretsmanager")
        try:
            value = client.get_secret_value(SecretId=secret_id)["SecretString"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("ThrottlingException", "InternalServiceError"):
                raise DatabaseUnavailable(f"secret {secret_id!r} of the {role} database: "
                                          f"{code}") from exc
            raise ConfigError(f"secret {secret_id!r} of the {role} database: {code}") from exc
        except BotoCoreError as exc:
            raise DatabaseUnavailable(f"secret {secret_id!r} of the {role} database: "
                                      f"{type(exc).__name__}") from exc
        try:
            doc = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"secret {secret_id!r} of the {role} database must be JSON with "
                              "host, port, username, password and dbname") from exc
        if isinstance(doc, dict) and str(doc.get("engine", "")).lower() in MYSQL_ENGINES:
            from totes.utils.mysql import MySQLDatabase

            _refuse_mysql(role)
            return MySQLDatabase.from_document(role, secret_id, doc)
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
        :meth:`from_secret`): what ``make put-secrets`` stores. Contains the password."""
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

        The session waits at most :func:`timeout_seconds` for a lock (``lock_timeout``).

        Raises:
            DatabaseUnavailable: the server could not be reached, or did not answer within
                :func:`timeout_seconds` (retry may help).
            DatabaseRejected: authentication failed or the database does not exist.
        """
        timeout = timeout_seconds()
        network_timeout = 2 * timeout
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
                f"the {self.describe()} accepted the connection but did not answer within "
                f"{network_timeout:g} s; check the server's load, or wait longer with "
                f"{TIMEOUT_VARIABLE}") from None
        except (InterfaceError, DatabaseError, OSError) as exc:
            server_error = _server_error(exc)
            if server_error is None:
                raise DatabaseUnavailable(
                    f"cannot reach the {self.describe()}: {_network_reason(exc)}. Check that "
                    "the server is running and accepts connections there, and that the URL "
                    f"or secret of the {self.role} database names the right host and port"
                ) from None
            state, message = _sqlstate(server_error)
            error = (DatabaseRejected if state.startswith(_TERMINAL_SQLSTATE_PREFIXES)
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


def _host_and_port(hostport: str) -> tuple[str, str]:
    """``("db.example.com", "5432")`` of ``db.example.com:5432``; IPv6 in brackets."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = hostport.partition(":")
    return host, port


def _port(role: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{role} database URL: port {text!r} is not a number from 1 to 65535")
    return port


def _server_error(exc: BaseException) -> DatabaseError | None:
    """The server's error behind ``exc``, if any. When a server refuses a connection (no such
    database, bad password) it sends its error and closes the socket; pg8000 then writes a
    Terminate message to that socket and raises the broken pipe as "network error", with the
    server's error only in the exception's context."""
    while exc is not None:
        if isinstance(exc, DatabaseError):
            return exc
        exc = exc.__context__
    return None


def _sqlstate(exc: Exception) -> tuple[str, str]:
    """(SQLSTATE, message with the server's detail line, such as the key a constraint names)."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    message = fields.get("M", str(exc))
    if fields.get("D"):
        message = f"{message}: {fields['D']}"
    return fields.get("C", ""), message


def sqlstate_of(exc: Exception) -> str:
    """The SQLSTATE of a pg8000 ``DatabaseError`` (``"23505"``), or ``""``."""
    return _sqlstate(exc)[0]


def _network_reason(exc: BaseException) -> str:
    """What the operating system said when a connection failed (``Connection refused``,
    ``Name or service not known``, ``timed out``), not the driver's own wording."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.strerror or str(seen)):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


# SQLSTATE classes where the same statement can succeed later: connection exception (08),
# transaction rollback such as serialization failure or deadlock (40), insufficient
# resources (53), operator intervention such as a shutdown or a cancelled query (57), and a
# lock not granted within lock_timeout (55P03).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "53", "57", "55P03")


def translate_error(exc: Exception, doing: str) -> Exception:
    """Turn a pg8000 error raised while ``doing`` (e.g. "extracting table payment from the
    source database") into a :class:`DatabaseUnavailable` when a retry can help, else into a
    ``TerminalError`` subclass; other exceptions are returned unchanged."""
    from totes.utils.errors import TerminalError

    if isinstance(exc, TimeoutError):
        return DatabaseUnavailable(f"{doing}: no answer for {READ_TIMEOUT_SECONDS:g} s")
    if isinstance(exc, (InterfaceError, ConnectionError, socket.gaierror)):
        return DatabaseUnavailable(f"{doing}: connection lost ({_network_reason(exc)})")
    if isinstance(exc, DatabaseError):
        state, message = _sqlstate(exc)
        kind = DatabaseUnavailable if state.startswith(_TRANSIENT_SQLSTATE_PREFIXES) \
            else TerminalError
        return kind(f"{doing}: {message} (SQLSTATE {state})")
    return exc


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


def copy_into(conn, table: str, columns: list[str], batches) -> None:
    """Bulk-load Arrow record ``batches`` into ``table`` (``columns`` in batch order) with
    ``COPY ... FROM STDIN (FORMAT csv)``, one CSV chunk per batch: bounded memory, no row-by-row
    INSERT. CSV follows PostgreSQL's rules: an unquoted empty field is NULL, ``""`` is an empty
    string."""
    import io

    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False)

    def chunks():
        for batch in batches:
            if batch.num_rows:
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, options)
                yield buffer.getvalue()

    column_list = ", ".join(quote_ident(c) for c in columns)
    conn.run(f"COPY {quote_ident(table)} ({column_list}) FROM STDIN WITH (FORMAT csv)",
             stream=chunks())


def copy_binary_into(conn, table: str, schema, batches) -> int:
    """Bulk-load Arrow record ``batches`` into ``table`` with ``COPY ... FROM STDIN (FORMAT
    binary)``, one encoded chunk per batch (bounded memory); returns the rows copied.

    ``schema`` (a ``pyarrow.Schema``) names the columns, in order, and their Arrow types, which
    must be those of the table's columns (int32 for ``int``, decimal128 for ``numeric``,
    date32, time64[us], timestamp[us], string for ``varchar``/``text``, bool): each batch is
    cast to it, then encoded by pgpq (PostgreSQL's binary COPY format, from Arrow's buffers).
    The server then converts no text: on 2,000,000 fact rows of 14 columns this COPY took
    2.2 s where ``FORMAT csv`` (:func:`copy_into`) took 3.8-4.1 s.

    Raises:
        DatabaseError: the server refused the data (a type that is not the column's gives
            ``incorrect binary data format``, SQLSTATE 22P03).
    """
    import pgpq

    encoder = pgpq.ArrowToPostgresBinaryEncoder(schema)

    def chunks():
        yield encoder.write_header()
        for batch in batches:
            if batch.num_rows:  # small batches are kept until enough, or the end, comes
                encoded = encoder.write_batch(batch.select(schema.names).cast(schema))
                if encoded:
                    yield encoded
        yield encoder.finish()

    column_list = ", ".join(quote_ident(c) for c in schema.names)
    conn.run(f"COPY {quote_ident(table)} ({column_list}) FROM STDIN WITH (FORMAT binary)",
             stream=chunks())
    return conn.row_count


class Session:
    """Context manager around one connection: opens it on entry, always closes it, and turns a
    driver error raised inside into a :class:`DatabaseUnavailable` (retry can help) or a
    ``TerminalError``, with a message starting with ``doing`` (update it as work proceeds).
    An error the pipeline raised itself passes through unchanged."""

    def __init__(self, database: Database, application_name: str, doing: str):
        self.database, self.application_name, self.doing = database, application_name, doing
        self.conn: pg8000.native.Connection | None = None

    def __enter__(self) -> "Session":
        self.conn = self.database.connect(self.application_name)
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        close_quietly(self.conn)
        if exc is not None and isinstance(exc, Exception):
            translated = translate_error(exc, self.doing)
            if translated is not exc:
                raise translated from exc
        return False


def merge_staged(conn, target: str, stage: str, columns: list[str], key: list[str],
                 update_when: str | None = None) -> tuple[int, int]:
    """``INSERT INTO target (columns) SELECT columns FROM stage`` in one set-based statement.
    On a ``key`` conflict the row is left as it is when ``update_when`` is None; otherwise its
    other columns are updated where ``update_when`` holds (a condition over the quoted
    ``target`` and ``EXCLUDED``, built from identifiers only). Returns (inserted, updated)."""
    names = [quote_ident(c) for c in columns]
    q_target, listed = quote_ident(target), ", ".join(names)
    conflict = ", ".join(quote_ident(c) for c in key)
    if update_when is None:
        action = "DO NOTHING"
    else:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c, raw in zip(names, columns) if raw not in key)
        # Identifiers only (update_when is built from quoted identifiers by the caller).
        action = f"DO UPDATE SET {sets} WHERE {update_when}"  # nosec B608
    # Identifiers only, each through quote_ident; no values.
    (inserted, updated), = conn.run(
        f"WITH merged AS (INSERT INTO {q_target} ({listed}) "  # nosec B608
        f"SELECT {listed} FROM {quote_ident(stage)} ON CONFLICT ({conflict}) {action} "
        "RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) "
        "FROM merged")
    return inserted, updated
