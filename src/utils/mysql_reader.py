"""Reading a MySQL or MariaDB source table: the in-flight cutoff, the ``SELECT`` of a run's rows
(by mode, for a partition) in a consistent snapshot, streamed through an unbuffered cursor
into Arrow record batches written one Parquet row group at a time.

* **In-flight transactions.** InnoDB lists its open transactions in
  ``information_schema.innodb_trx`` (the ``PROCESS`` privilege shows them). A run extracts
  only rows whose watermark is older than the start of the oldest one and at least
  :data:`CLOCK_MARGIN_SECONDS` older than the server's clock (a writer's ``NOW()`` is taken
  when its statement starts, a moment before its transaction is listed). The cutoff is
  compared with the column as it is stored: a ``DATETIME`` in the server's global time zone
  (``@@global.time_zone``, which writers' sessions use by default), a ``TIMESTAMP`` in UTC.
  ``trx_started`` is whole seconds, which only moves the cutoff earlier (safe). A role without
  ``PROCESS`` stops ``in_flight_safety_lag_seconds`` short of the clock instead.
* **Watermarks** are ``datetime``/``timestamp`` columns only: MySQL does not tell which
  transaction wrote a row, so an integer watermark cannot be made safe against in-flight
  inserts (:func:`totes.utils.mysql_catalog.check_table`).
* **Snapshot.** ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` at ``REPEATABLE
  READ``. MySQL cannot share a snapshot between connections, so the parts of a partitioned
  batch each take their own; all are bounded by the one cutoff, so together they hold each
  row version before it exactly once (a version written after the cutoff waits for the next
  run, whichever part's snapshot saw it).
* **Streaming.** PyMySQL's unbuffered cursor (``SSCursor``) fetches rows as the server sends
  them, ``rows_per_batch`` at a time (from ``record_batch_bytes`` and the table's average row
  length), each turned into one Arrow record batch: memory stays bounded whatever the table's
  size. PyMySQL is pure Python: expect tens of thousands of rows per second, not COPY speed.
"""
from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator, Optional, Sequence

import pyarrow as pa
import pymysql

from totes.contracts.config import TablePlan
from totes.contracts.errors import ConfigError
from totes.contracts.quarantine import UNREADABLE, add_unreadable, with_unreadable
from totes.contracts.source_schema import SourceColumn
from totes.contracts.identifiers import quote_ident
from totes.contracts.partitions import Partition, column_cast, partitions_of
from totes.contracts.stage_results import HeldBackBy
from totes.contracts.watermark import Watermark
from totes.utils.mysql import ACCESS_DENIED_ERRORS, error_number
from totes.utils.mysql_catalog import arrow_schema, check_table, watermark_index_advice
from totes.utils.source_reader import Inspected, Job, SourceReader

log = logging.getLogger(__name__)

#: The cutoff is at least this far behind the server's clock (seconds).
CLOCK_MARGIN_SECONDS = 1.0
#: An open transaction older than this (seconds) that holds the cutoff back is reported.
HELD_BACK_WARNING_SECONDS = 60.0
#: Rows fetched and turned into one record batch at a time: at least, at most.
MIN_ROWS_PER_BATCH, MAX_ROWS_PER_BATCH = 1_000, 50_000

_OLDEST_TRANSACTION_SQL = """
SELECT t.trx_mysql_thread_id, p.USER, p.HOST, p.COMMAND,
       TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6))
FROM information_schema.innodb_trx t
LEFT JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id
WHERE t.trx_mysql_thread_id <> CONNECTION_ID()
ORDER BY t.trx_started LIMIT 1
"""


def _read_cutoff(conn, lag_seconds: float
                 ) -> tuple[datetime, datetime, bool, Optional[HeldBackBy]]:
    """(the cutoff in the global time zone, the cutoff in UTC, whether the role sees every
    transaction, the old open transaction that holds it back). Leaves the session in UTC."""
    try:
        # trx_started is printed in the system time zone: compare it with NOW() there.
        conn.run("SET time_zone = 'SYSTEM'")
        try:
            oldest = conn.run(_OLDEST_TRANSACTION_SQL)
            sees_all = True
        except pymysql.err.MySQLError as exc:
            if error_number(exc) not in ACCESS_DENIED_ERRORS:
                raise
            oldest, sees_all = [], False
        conn.run("SET time_zone = @@global.time_zone")
        (local_now, utc_now), = conn.run("SELECT NOW(6), UTC_TIMESTAMP(6)")
    finally:
        conn.run("SET time_zone = '+00:00'")
    behind = CLOCK_MARGIN_SECONDS if sees_all else max(lag_seconds, CLOCK_MARGIN_SECONDS)
    held_back = None
    if oldest:
        thread, user, host, command, age_us = oldest[0]
        age = (age_us or 0) / 1e6
        behind = max(behind, age)
        if age > HELD_BACK_WARNING_SECONDS:
            held_back = HeldBackBy(pid=int(thread), role=user or "", application_name=host or "",
                                   state=command or "", transaction_age_seconds=round(age, 1))
    step = timedelta(seconds=behind)
    return local_now - step, utc_now - step, sees_all, held_back


def inspect_table(conn, plan: TablePlan) -> Inspected:
    """Check the table and the backfill bounds, and read its columns and the cutoff (before
    the snapshot is taken). ``Inspected.cutoff`` is the cutoff as the watermark column stores
    it (ISO text; a ``TIMESTAMP`` column's with ``+00:00``).

    Raises:
        SourceSchemaError: the table or its key/watermark column is missing or unusable.
        PermissionDenied: the role may not read the table.
        ConfigError: a backfill bound is not a timestamp, or ``from`` is not before ``to``.
    """
    table = plan.table
    columns = check_table(conn, table, plan.primary_key, plan.watermark_column)
    schema = with_unreadable(arrow_schema(columns, table))
    read = tuple(SourceColumn(name, schema.field(name).type, column_type, nullable)
                 for name, _, column_type, _, nullable in columns)
    kinds = {name: data_type for name, data_type, *_ in columns}
    cast = None
    if plan.watermark_column:
        cast = "timestamptz" if kinds[plan.watermark_column].lower() == "timestamp" \
            else "timestamp"
    if plan.mode == "backfill":
        _check_range(plan)
    if plan.distributed is not None:  # a part of a distributed batch: plan's cutoff for all
        return Inspected(schema, cast, plan.distributed.cutoff,
                         datetime.fromisoformat(plan.distributed.moment), None, read)
    local, utc, sees_all, held_back = _read_cutoff(conn, plan.in_flight_safety_lag_seconds)
    cutoff = utc.replace(tzinfo=timezone.utc) if cast == "timestamptz" else local
    text = cutoff.isoformat(sep=" ", timespec="microseconds")
    if not sees_all and cast:
        log.info("%s: the source user cannot see InnoDB's open transactions; stopping %ss "
                 "short of the server's clock (GRANT PROCESS ON *.* removes the lag)",
                 table, plan.in_flight_safety_lag_seconds)
    if held_back is not None:
        log.warning("%s: rows changed after %s wait for a transaction open for %.0f s "
                    "(thread %s, user %s, %s); they are extracted once it ends", table, text,
                    held_back.transaction_age_seconds, held_back.pid, held_back.role,
                    held_back.state)
    return Inspected(schema, cast, text, utc, held_back, read)


def _check_range(plan: TablePlan) -> None:
    column = f"{plan.table}.{plan.watermark_column}"
    bounds = {}
    for flag, value in (("--from", plan.backfill_from), ("--to", plan.backfill_to)):
        try:
            bounds[flag] = _as_bound(value or "")
        except (TypeError, ValueError):
            raise ConfigError(f"backfill {flag} {value!r} is not a timestamp, the type of "
                              f"{column}") from None
    if not bounds["--from"] < bounds["--to"]:
        raise ConfigError(f"backfill of {plan.table}: --from {plan.backfill_from!r} must be "
                          f"before --to {plan.backfill_to!r} (the range is [from, to))")


def _as_bound(text: str) -> datetime:
    """A timestamp as MySQL compares it: naive, a zoned one moved to UTC (sessions are in
    UTC, where ``TIMESTAMP`` columns are read)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def select_sql(plan: TablePlan, source: Inspected, low: Optional[Watermark],
               part: Optional[Partition] = None, keys: Optional[Sequence[int]] = None
               ) -> tuple[str, dict]:
    """The ``SELECT`` of this run's rows (of partition ``part``, when given; with ``keys``,
    of those primary keys only) and its bound
    values, by mode, as :func:`totes.utils.postgres_reader.extract_sql`: incremental after
    ``low`` and before the cutoff in ``(watermark, key)`` order; reingest before the cutoff;
    backfill in ``[from, to)`` and before the cutoff; full every row, in key order. The
    statement holds identifiers only, each through ``quote_ident`` (``ANSI_QUOTES`` is on);
    values are bound by the driver."""
    q_pk = quote_ident(plan.primary_key)
    conditions: list[str] = []
    values: dict[str, object] = {}
    if plan.mode != "full":
        q_wm = quote_ident(plan.watermark())
        conditions.append(f"{q_wm} < %(cutoff)s")
        values["cutoff"] = _as_bound(source.cutoff)
        if plan.mode == "incremental" and low is not None:
            # Expanded rather than a row comparison, which MariaDB does not use an index for.
            conditions.append(f"{q_wm} >= %(low_value)s AND ({q_wm} > %(low_value)s OR "
                              f"{q_pk} > %(low_pk)s)")
            values.update(low_value=_as_bound(low.value), low_pk=low.primary_key)
        backfill = plan.backfill_range()
        if backfill is not None:
            conditions.append(f"{q_wm} >= %(range_from)s AND {q_wm} < %(range_to)s")
            values.update(range_from=_as_bound(backfill["from"]),
                          range_to=_as_bound(backfill["to"]))
        order = f"{q_wm}, {q_pk}"
    else:
        order = q_pk
    if part is not None and (part.lower is not None or part.upper is not None):
        cast = column_cast(source.schema, plan)
        q_column = quote_ident(plan.partitioning())
        bound: Callable[[str], object] = int if cast == "bigint" else _as_bound
        if part.lower is not None:
            conditions.append(f"{q_column} >= %(part_lower)s")
            values["part_lower"] = bound(part.lower)
        if part.upper is not None:
            below = f"{q_column} < %(part_upper)s"
            conditions.append(f"({below} OR {q_column} IS NULL)" if part.lower is None
                              else below)
            values["part_upper"] = bound(part.upper)
    if keys is not None:
        if keys:
            conditions.append(f"{q_pk} IN %(keys)s")
            values["keys"] = tuple(int(k) for k in keys)
        else:
            conditions.append("FALSE")
    select_list = ", ".join(quote_ident(name) for name in source.schema.names
                            if name != UNREADABLE)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT {select_list} FROM {quote_ident(plan.table)}{where} "  # nosec B608
            f"ORDER BY {order}"), values


def rows_per_batch(conn, table: str, batch_bytes: int) -> int:
    """Rows per record batch: ``batch_bytes`` over the table's average row length
    (``information_schema.tables``), within [MIN_ROWS_PER_BATCH, MAX_ROWS_PER_BATCH] (rows
    are Python objects on the way: the upper bound keeps that memory under ~50 MB)."""
    rows = conn.run("SELECT AVG_ROW_LENGTH FROM information_schema.tables WHERE TABLE_SCHEMA "
                    "= DATABASE() AND TABLE_NAME = %(table)s", table=table)
    average = max(int(rows[0][0] or 0), 64) if rows else 64
    return max(MIN_ROWS_PER_BATCH, min(MAX_ROWS_PER_BATCH, batch_bytes // average))


_CONVERT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError)


def _converter(field: pa.Field):
    kind = field.type

    def convert(values: Sequence, pool: pa.MemoryPool, unreadable: list) -> pa.Array:
        """The column as ``kind``; a value that cannot be (a zero date ``0000-00-00``, text
        that is not UTF-8) is NULL and kept as text in ``unreadable`` (one JSON text or
        None per row)."""
        try:
            if pa.types.is_boolean(kind):
                values = [None if v is None else bool(v) for v in values]
            return pa.array(values, type=kind, memory_pool=pool)
        except _CONVERT_ERRORS:
            pass
        if pa.types.is_string(kind):  # time, year, set...: the server's text of it
            values = [None if v is None else v if isinstance(v, str) else
                      v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
                      for v in values]
        kept = []
        for i, value in enumerate(values):
            try:
                pa.array([value], type=kind)
                if isinstance(value, str):
                    value.encode("utf-8")  # a lone surrogate: bytes that were not UTF-8
                kept.append(value)
            except (*_CONVERT_ERRORS, UnicodeEncodeError):
                text = value.encode("utf-8", "surrogateescape").decode(
                    "utf-8", "backslashreplace") if isinstance(value, str) else str(value)
                unreadable[i] = add_unreadable(unreadable[i], field.name, text)
                kept.append(None)
        return pa.array(kept, type=kind, memory_pool=pool)
    return convert


def _record_batches(cursor, schema: pa.Schema, table: str, size: int,
                    pool: pa.MemoryPool) -> Iterator[pa.RecordBatch]:
    """Record batches of ``schema`` (a lake file's: its last column is
    :data:`~totes.contracts.quarantine.UNREADABLE`, which the ``SELECT`` leaves NULL and
    the converters fill) of ``size`` rows each, from the cursor's rows."""
    converters = [_converter(field) for field in schema if field.name != UNREADABLE]
    while True:
        rows = cursor.fetchmany(size)
        if not rows:
            return
        yield _batch(rows, schema, converters, pool)


def _batch(rows: Sequence[Sequence], schema: pa.Schema, converters: list,
           pool: pa.MemoryPool) -> pa.RecordBatch:
    columns = list(zip(*rows))
    unreadable: list = [None] * len(rows)
    arrays = [convert(column, pool, unreadable) for convert, column in zip(converters, columns)]
    if UNREADABLE in schema.names:
        arrays.append(pa.array(unreadable, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def rows_batch(rows: Sequence[Sequence], schema: pa.Schema,
               pool: Optional[pa.MemoryPool] = None) -> pa.RecordBatch:
    """``rows`` (tuples of Python values as PyMySQL, or the binlog, gives them, one per
    column of ``schema`` but :data:`~totes.contracts.quarantine.UNREADABLE`) as one record
    batch of ``schema``, converted as a table's rows are when read (a value the column's type
    cannot hold is NULL and kept as text in ``UNREADABLE``, when ``schema`` has it)."""
    converters = [_converter(field) for field in schema if field.name != UNREADABLE]
    return _batch(rows, schema, converters, pool or pa.default_memory_pool())


class MySQLReader(SourceReader):
    """How ingest reads a MySQL or MariaDB source (the interface of
    :mod:`totes.utils.source_reader`)."""

    engine = "mysql"
    #: MySQL cannot hand a snapshot to another connection.
    shares_snapshots = False

    def check_table(self, conn, table: str, primary_key: str,
                    watermark_column: Optional[str]) -> list:
        """As :func:`totes.utils.mysql_catalog.check_table`."""
        return check_table(conn, table, primary_key, watermark_column)

    def index_advice(self, conn, table: str, watermark_column: str,
                     primary_key: str) -> Optional[str]:
        """As :func:`totes.utils.mysql_catalog.watermark_index_advice`."""
        return watermark_index_advice(conn, table, watermark_column, primary_key)

    def inspect(self, conn, plan: TablePlan) -> Inspected:
        """As :func:`inspect_table`."""
        return inspect_table(conn, plan)

    def begin(self, conn, snapshot: Optional[str] = None) -> None:
        """Start a read-only transaction with a consistent snapshot at REPEATABLE READ
        (``snapshot`` is always None: see the module docstring)."""
        conn.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.run("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")

    def export_snapshot(self, conn, table: str) -> None:
        """MySQL exports no snapshot."""
        return None

    def partitions(self, conn, plan: TablePlan, schema: pa.Schema) -> list[Partition]:
        """As :func:`totes.contracts.partitions.partitions_of`, the bounds read in ``conn``'s
        snapshot when the configuration gives none."""
        def bounds() -> tuple[Optional[str], Optional[str]]:
            q_column = quote_ident(plan.partitioning())
            (low, high), = conn.run(  # identifiers only, each through quote_ident
                f"SELECT CAST(MIN({q_column}) AS CHAR), CAST(MAX({q_column}) AS CHAR) "
                f"FROM {quote_ident(plan.table)}")  # nosec B608
            return low, high

        return partitions_of(plan, schema, bounds)

    @contextlib.contextmanager
    def primary_keys(self, conn, table: str, primary_key: str, doing: str
                     ) -> Iterator[Iterator[pa.Array]]:
        """Every value of ``table``'s ``primary_key``, in key order (a scan of the primary
        key), fetched from an unbuffered cursor 100,000 at a time.

        Raises:
            pymysql errors: mapped by the session (``doing`` says what).
        """
        key = quote_ident(primary_key)
        cursor = conn.streaming_cursor()
        cursor.execute(f"SELECT {key} FROM {quote_ident(table)} ORDER BY {key}")  # nosec B608

        def arrays() -> Iterator[pa.Array]:
            while rows := cursor.fetchmany(100_000):
                yield pa.array([row[0] for row in rows], pa.int64())
        yield arrays()
        cursor.close()

    def key_after(self, conn, table: str, primary_key: str, start: Optional[int],
                  rows: int) -> Optional[int]:
        """As :meth:`SourceReader.key_after`, its values bound."""
        key = quote_ident(primary_key)
        after = f"WHERE {key} >= %(start)s " if start is not None else ""
        values = {"start": int(start)} if start is not None else {}
        found = conn.run(f"SELECT {key} FROM {quote_ident(table)} {after}"  # nosec B608
                         f"ORDER BY {key} LIMIT 1 OFFSET %(rows)s", rows=int(rows), **values)
        return int(found[0][0]) if found else None

    @contextlib.contextmanager
    def batches(self, conn, plan: TablePlan, inspected: Inspected, job: Job, doing: str,
                part: Optional[Partition] = None, keys: Optional[Sequence[int]] = None
                ) -> Iterator[Iterator[pa.RecordBatch]]:
        """This run's rows (of ``part``; of ``keys`` only) as record batches of
        ``job.schema``, in the transaction :meth:`begin` started; the caller reads them to
        the end.

        A value that cannot be read as its column's type is NULL and kept as text in
        :data:`~totes.contracts.quarantine.UNREADABLE`.

        Raises:
            pymysql errors: mapped by the session (``doing`` says what).
        """
        size = rows_per_batch(conn, plan.table, job.block_bytes)
        sql, values = select_sql(plan, inspected, job.low, part, keys)
        cursor = conn.streaming_cursor()
        cursor.execute(sql, values)
        yield _record_batches(cursor, job.schema, plan.table, size, job.pool)
        # Closed only once read to its end: closing an unbuffered cursor early would read the
        # rest of the result; after a failure the session closes the connection instead.
        cursor.close()
