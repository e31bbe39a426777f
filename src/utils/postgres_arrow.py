"""Bulk reads of a PostgreSQL source straight into Arrow, with the ADBC PostgreSQL driver
(``adbc-driver-postgresql``: libpq's binary ``COPY`` decoded into Arrow arrays in C, no
Python per row).

pg8000 stays the driver of every other statement; this adapter only runs one ``SELECT`` of a
bulk extract (a first, full, reingest or backfill read of a table), on a second connection
that joins the extract's transaction through its exported snapshot (``SET TRANSACTION
SNAPSHOT``, PostgreSQL's documented way for several sessions to see the same data), so the
cursor, the cutoff and the partitions read exactly the rows the pg8000 path reads. The
statement's values are bound settings (``set_config``), as in the pg8000 path.

Why ADBC: on the 2,000,000-row benchmark table pg8000 parses one ``CopyData`` message per row
in Python (about 3.5 s); the ADBC driver reads the same rows in about 2 s. No maintained
library decodes psycopg's binary ``COPY`` into Arrow; ADBC is the Arrow project's own driver.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.errors import (DatabaseRejected, DatabaseUnavailable, DataError,
                                    TerminalError)
from totes.utils import settings
from totes.utils.postgres_errors import REJECTED_SQLSTATE_PREFIXES

#: Transient SQLSTATE classes, as :mod:`totes.utils.postgres_errors` lists them.
_TRANSIENT = ("08", "40", "53", "57", "55P03")


def available() -> bool:
    """Whether the ADBC PostgreSQL driver is installed (it is a dependency of totes; a
    trimmed package may leave it out, and the pg8000 path then reads every extract)."""
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def _quote(value: object) -> str:
    """A libpq connection-string value: single-quoted, ``\\`` and ``'`` escaped (libpq's
    rule for keyword/value strings), so that a password may hold any character."""
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(params: dict, application_name: str) -> str:
    """libpq's keyword/value connection string of pg8000's connect ``params`` (as
    :class:`totes.utils.postgres.Database` holds them): the same host or socket, database,
    user, password and TLS (pg8000's verified context becomes ``sslmode=verify-full`` with the
    system's roots; no context becomes ``prefer``; ``False`` becomes ``disable``), UTC, ISO
    dates, ``connect_timeout`` and ``lock_timeout`` (``TOTES_DB_TIMEOUT_SECONDS``). Holds
    the password: never log it."""
    current = settings.current()
    parts = {"dbname": params["database"], "user": params["user"],
             "application_name": application_name,
             "connect_timeout": max(1, int(current.connect_timeout_seconds)),
             "options": "-c TimeZone=UTC -c DateStyle=ISO,YMD "
                        f"-c lock_timeout={int(current.db_timeout_seconds * 1000)}"}
    if params.get("password"):
        parts["password"] = params["password"]
    if "unix_sock" in params:
        folder, _, name = params["unix_sock"].rpartition("/")
        parts["host"], parts["port"] = folder, name.rsplit(".", 1)[1]
    else:
        parts["host"], parts["port"] = params["host"], params["port"]
    context = params.get("ssl_context", None)
    if context is False:
        parts["sslmode"] = "disable"
    elif context is None:
        parts["sslmode"] = "prefer"
    else:
        parts["sslmode"], parts["sslrootcert"] = "verify-full", "system"
    return " ".join(f"{key}={_quote(value)}" for key, value in parts.items())


def _translated(exc: BaseException, doing: str) -> BaseException:
    """An ADBC error raised while ``doing`` as totes' own: transient SQLSTATEs (and a lost
    connection) as :class:`DatabaseUnavailable`, a refused login as
    :class:`DatabaseRejected`, the rest as :class:`TerminalError`."""
    import adbc_driver_manager

    if not isinstance(exc, adbc_driver_manager.Error):
        return exc
    state = getattr(exc, "sqlstate", None) or ""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if state.startswith(REJECTED_SQLSTATE_PREFIXES):
        return DatabaseRejected(f"{doing}: {message} (SQLSTATE {state})")
    if not state or state.startswith(_TRANSIENT) or \
            isinstance(exc, adbc_driver_manager.OperationalError):
        shown = f" (SQLSTATE {state})" if state else ""
        return DatabaseUnavailable(f"{doing}: {message}{shown}")
    return TerminalError(f"{doing}: {message} (SQLSTATE {state})")


def as_lake_batch(batch: pa.RecordBatch, schema: pa.Schema, table: str) -> pa.RecordBatch:
    """``batch`` as the driver gives it (int4 as int32, numeric as PostgreSQL's text in an
    opaque extension type, ...) cast to the lake file's ``schema`` (column for column, by
    name). A value its type cannot hold was made NULL by the statement already
    (:func:`totes.utils.postgres_reader.select_list`); a cast that still fails is bad data.

    Raises:
        DataError: a value could not be cast to its lake type (names ``table``).
    """
    columns = []
    for field in schema:
        column = batch.column(field.name)
        if isinstance(column.type, pa.ExtensionType) or \
                isinstance(column, pa.ExtensionArray):
            column = column.storage
        if column.type != field.type:
            try:
                column = pc.cast(column, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(table, f"column {field.name} has a value that cannot be read "
                                f"as {field.type}: {exc}") from None
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


@contextlib.contextmanager
def snapshot_read(params: dict, application_name: str, snapshot: str, values: dict[str, str],
                  select: str, schema: pa.Schema, table: str, doing: str,
                  batch_bytes: int) -> Iterator[Iterator[pa.RecordBatch]]:
    """The rows of ``select`` (identifiers only; its values read from the settings
    ``totes.<name>`` that ``values`` gives, bound) as record batches of ``schema`` of about
    ``batch_bytes`` each, read on a new connection in the exported ``snapshot`` (a
    repeatable-read, read-only transaction), which is rolled back and closed at the end.

    Raises:
        DatabaseUnavailable: the server could not be reached or failed transiently (retry).
        DatabaseRejected: the login was refused.
        TerminalError: the statement failed for good (the SQLSTATE is in the message).
        DataError: a value could not be cast to its lake type.
    """
    import adbc_driver_postgresql.dbapi as adbc

    try:
        conn = adbc.connect(conninfo(params, application_name))
    except adbc.Error as exc:
        raise _translated(exc, doing) from None
    try:
        cursor = conn.cursor()
        hint = {"adbc.postgresql.batch_size_hint_bytes": str(batch_bytes)}
        cursor.adbc_statement.set_options(**hint)
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SET TRANSACTION SNAPSHOT " + _snapshot_literal(snapshot))
        for name, value in values.items():
            cursor.execute("SELECT set_config($1, $2, true)", (f"totes.{name}", str(value)))
            cursor.fetchall()
        cursor.execute(select)
        reader = cursor.fetch_record_batch()
    except adbc.Error as exc:
        conn.close()
        raise _translated(exc, doing) from None

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for batch in reader:
                if batch.num_rows:
                    yield as_lake_batch(batch, schema, table)
        except adbc.Error as exc:
            raise _translated(exc, doing) from None
        except OSError as exc:  # the stream's errors surface as Arrow's IOError
            raise DatabaseUnavailable(f"{doing}: {exc}") from None

    try:
        yield batches()
    finally:
        with contextlib.suppress(Exception):  # the statement's own error is the one raised
            conn.rollback()
        conn.close()


def _snapshot_literal(snapshot: str) -> str:
    """``'00000004-000000F2-1'``: a snapshot id (checked by the reader's
    ``export_snapshot``) as a SQL literal; SET TRANSACTION SNAPSHOT takes no parameter."""
    if not snapshot.replace("-", "").isalnum():
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    return f"'{snapshot}'"


def server_encoding(conn) -> Optional[str]:
    """The source's ``server_encoding`` read on pg8000 ``conn`` (``UTF8``): the ADBC driver
    reads text as UTF-8, so only a UTF-8 database takes this path (``SQL_ASCII`` text goes
    through the pg8000 path, which keeps bytes that are not UTF-8)."""
    (encoding,), = conn.run("SELECT current_setting('server_encoding')")
    return encoding
