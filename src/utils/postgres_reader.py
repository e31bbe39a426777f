"""Reading a PostgreSQL source table: the in-flight cutoff, the ``COPY (SELECT ...) TO STDOUT``
of a run's rows (by mode, for a partition, in one snapshot), and the CSV stream parsed into
Arrow record batches written one Parquet row group at a time, the watermarks in the footer.

* **In-flight transactions.** Before taking its snapshot a run reads the start of the oldest
  transaction still open in the source database (``pg_stat_activity``; the role needs
  ``pg_read_all_stats`` to see other roles' sessions) and extracts only rows whose watermark is
  older than that and than the database's clock. A role that cannot see other sessions stops
  ``in_flight_safety_lag_seconds`` short of the database's clock instead.
* **Streaming.** ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` is written by pg8000 into a pipe
  (:func:`totes.utils.postgres_copy.copy_stream`), parsed by pyarrow's streaming CSV reader
  into record batches of ``record_batch_bytes``
  (:func:`totes.utils.postgres_copy.csv_record_batches`) and written one Parquet row group
  per batch by ingest: memory stays bounded whatever the table's size.
"""
from __future__ import annotations

import contextlib
import logging
import re
from datetime import datetime, timezone
from typing import Iterator, Optional, Sequence

import pyarrow as pa
from pg8000.exceptions import DatabaseError

from totes.contracts.config import TablePlan
from totes.contracts.errors import ConfigError, DataError
from totes.contracts.identifiers import quote_ident
from totes.contracts.partitions import Partition, column_cast, partitions_of
from totes.contracts.quarantine import UNREADABLE, with_unreadable
from totes.contracts.stage_results import HeldBackBy
from totes.contracts.watermark import Watermark
from totes.contracts.source_schema import UNBOUNDED_MARK, SourceColumn
from totes.utils import postgres_arrow, settings
from totes.utils.postgres_catalog import (arrow_type, check_table, column_nullability,
                                          is_integer, watermark_index_advice)
from totes.utils.postgres_copy import copy_stream, csv_record_batches
from totes.utils.source_reader import Inspected, Job, SourceReader

log = logging.getLogger(__name__)

_CUTOFF_SQL = """
WITH role AS (
    SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all
    FROM pg_roles WHERE rolname = current_user
), open_transactions AS (
    SELECT pid, usename, application_name, state, xact_start FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend' AND xact_start IS NOT NULL
), activity AS (
    SELECT min(xact_start) AS oldest FROM open_transactions
), oldest AS (
    SELECT pid, usename, application_name, state,
           extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age
    FROM open_transactions ORDER BY xact_start LIMIT 1
), cutoff AS (
    SELECT role.sees_all,
           CASE WHEN role.sees_all THEN least(activity.oldest, clock_timestamp())
                ELSE least(activity.oldest,
                           clock_timestamp() - make_interval(secs => CAST(:lag AS float8)))
           END AS instant
    FROM role, activity
)
SELECT sees_all, instant::text,
       (instant AT TIME ZONE (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'))::text,
       oldest.pid, oldest.usename, oldest.application_name, oldest.state, oldest.age
FROM cutoff LEFT JOIN oldest ON true
"""
#: An open transaction older than this (seconds) that holds the cutoff back is reported.
HELD_BACK_WARNING_SECONDS = 60.0


def _read_cutoff(conn, lag_seconds: float, with_time_zone: bool
                 ) -> tuple[str, datetime, bool, Optional[HeldBackBy]]:
    """(the cutoff as the watermark column's type prints it, the cutoff in UTC, whether the
    role sees every session, the old open transaction that holds it back)."""
    (sees_all, instant, local, pid, role, application, state, age), = conn.run(
        _CUTOFF_SQL, lag=lag_seconds)
    held_back = None
    if pid is not None and age is not None and age > HELD_BACK_WARNING_SECONDS:
        held_back = HeldBackBy(pid=pid, role=role, application_name=application or "",
                               state=state or "", transaction_age_seconds=round(age, 1))
    moment = datetime.fromisoformat(instant).astimezone(timezone.utc).replace(tzinfo=None)
    return (instant if with_time_zone else local), moment, bool(sees_all), held_back


def inspect_table(conn, plan: TablePlan) -> Inspected:
    """Check the table, the backfill bounds, and read its columns and the cutoff (before the
    snapshot is taken).

    Raises:
        SourceSchemaError: the table or its key/watermark column is missing.
        ConfigError: a backfill bound is not a value of the watermark's type, or ``from`` is
            not before ``to``.
    """
    table = plan.table
    columns = check_table(conn, table, plan.primary_key, plan.watermark_column)
    types = dict(columns)
    wm_type = types[plan.watermark_column] if plan.watermark_column else None
    cast = None if wm_type is None else "bigint" if is_integer(wm_type) else \
        "timestamptz" if "with time zone" in wm_type else "timestamp"
    if plan.mode == "backfill" and cast is not None:  # a backfill has a watermark
        _check_range(conn, plan, cast)
    nullable = column_nullability(conn, table)
    read = tuple(SourceColumn(name, arrow_type(pg_type, table, name), pg_type, nullable.get(name),
                              unbounded=pg_type == "numeric") for name, pg_type in columns)
    schema = with_unreadable(pa.schema([
        pa.field(c.name, c.arrow_type, metadata={UNBOUNDED_MARK: b"1"} if c.unbounded else None)
        for c in read]))
    if plan.distributed is not None:  # a part of a distributed batch: plan's cutoff for all
        return Inspected(schema, cast, plan.distributed.cutoff,
                         datetime.fromisoformat(plan.distributed.moment), None, read)
    cutoff, instant, sees_all, held_back = _read_cutoff(
        conn, plan.in_flight_safety_lag_seconds, cast == "timestamptz")
    if not sees_all and cast in ("timestamp", "timestamptz"):
        log.info("%s: the source role cannot see other sessions; stopping %ss short of the "
                 "database clock (grant pg_read_all_stats to remove the lag)",
                 table, plan.in_flight_safety_lag_seconds)
    if held_back is not None:
        log.warning("%s: rows changed after %s wait for a transaction open for %.0f s "
                    "(pid %s, role %s, %s); they are extracted once it ends", table, cutoff,
                    held_back.transaction_age_seconds, held_back.pid, held_back.role,
                    held_back.state)
    return Inspected(schema, cast, cutoff, instant, held_back, read)


def _check_range(conn, plan: TablePlan, cast: str) -> None:
    column = f"{plan.table}.{plan.watermark_column}"
    bounds = {}
    for flag, value in (("--from", plan.backfill_from), ("--to", plan.backfill_to)):
        try:
            (bounds[flag],), = conn.run(f"SELECT CAST(CAST(:v AS text) AS {cast})", v=value)
        except DatabaseError:  # outside any transaction: nothing to roll back
            raise ConfigError(f"backfill {flag} {value!r} is not a {cast}, the type of "
                              f"{column}") from None
    if not bounds["--from"] < bounds["--to"]:
        raise ConfigError(f"backfill of {plan.table}: --from {plan.backfill_from!r} must be "
                          f"before --to {plan.backfill_to!r} (the range is [from, to))")


def _set(conn, **values) -> None:
    """Bind ``values`` into the transaction's settings ``totes.<name>`` (read back once per
    statement in scalar subqueries, so the predicate costs nothing per row)."""
    for name, value in values.items():
        conn.run("SELECT set_config(:name, :value, true)", name=f"totes.{name}",
                 value=str(value))


def _setting(name: str, cast: str) -> str:
    return f"(SELECT current_setting('totes.{name}')::{cast})"


def key_condition(conn, column: str, keys: Sequence[int]) -> str:
    """The condition ``column = ANY(keys)``, the keys bound in the session's setting
    ``totes.keys`` (read once per statement, so an index on ``column`` serves it): for a
    ``COPY (SELECT ...)``, which takes no bound parameters. Session-wide, so that it holds
    for the next statement with or without a transaction."""
    conn.run("SELECT set_config('totes.keys', :keys, false)",
             keys="{" + ",".join(str(int(k)) for k in keys) + "}")
    # CAST makes the scalar subquery an array (ANY of a bare subquery compares each row).
    return f"{quote_ident(column)} = ANY(CAST({_setting('keys', 'bigint[]')} AS bigint[]))"


def extract_sql(conn, plan: TablePlan, source: Inspected, low: Optional[Watermark],
                part: Optional[Partition] = None, keys: Optional[Sequence[int]] = None) -> str:
    """The ``COPY (SELECT ...) TO STDOUT`` of this run's rows (:func:`extract_query`; with
    ``keys``, of those primary keys only, an index lookup each), its values bound in
    ``conn``'s transaction with ``set_config``; the statement holds identifiers only, each
    through ``quote_ident``."""
    extra = [key_condition(conn, plan.primary_key, keys)] if keys is not None else []
    select, values = extract_query(plan, source, low, part, extra)
    if values:
        _set(conn, **values)
    return f"COPY ({select}) TO STDOUT WITH (FORMAT csv)"


def extract_query(plan: TablePlan, source: Inspected, low: Optional[Watermark],
                  part: Optional[Partition] = None, extra: Sequence[str] = ()
                  ) -> tuple[str, dict[str, str]]:
    """The ``SELECT`` of this run's rows (of partition ``part``, when given; ``extra``
    conditions too), and the values it reads from the settings ``totes.<name>`` (to be set
    in the reading transaction: values are never in the statement), by mode:

    * incremental: after ``low``, before the cutoff, in ``(watermark, key)`` order;
    * reingest: before the cutoff, from the beginning;
    * backfill: watermark in ``[from, to)`` and before the cutoff;
    * full: every row, in key order.

    Before the cutoff means: a timestamp watermark older than the oldest open transaction
    (or the safety lag); for an integer watermark, a row whose writing transaction's id is
    older than the oldest open one's (``xmin`` older than the snapshot's ``xmin``). That is
    exact when a transaction takes its id (its first write) with the insert that takes the
    row's id, as an ``INSERT`` with a sequence default does; docs/extract.md says when it is not.
    """
    q_pk = quote_ident(plan.primary_key)
    conditions, values = list(extra), dict[str, object]()
    if plan.mode != "full":
        # inspect sets the cast whenever the table has a watermark column.
        q_wm, cast = quote_ident(plan.watermark()), source.watermark_cast or "timestamp"
        if cast == "bigint":
            conditions.append("age(xmin) > age((pg_snapshot_xmin(pg_current_snapshot())"
                              "::text::bigint % 4294967296)::text::xid)")
        else:
            values["cutoff"] = source.cutoff
            conditions.append(f"{q_wm} < {_setting('cutoff', cast)}")
        if plan.mode == "incremental" and low is not None:
            values.update(low_value=low.value, low_pk=low.primary_key)
            conditions.append(f"({q_wm}, {q_pk}) > ({_setting('low_value', cast)}, "
                              f"{_setting('low_pk', 'bigint')})")
        backfill = plan.backfill_range()
        if backfill is not None:
            values.update(range_from=backfill["from"], range_to=backfill["to"])
            conditions.append(f"{q_wm} >= {_setting('range_from', cast)}")
            conditions.append(f"{q_wm} < {_setting('range_to', cast)}")
        order = f"{q_wm}, {q_pk}"
    else:
        order = q_pk
    if part is not None and (part.lower is not None or part.upper is not None):
        condition, bounds = partition_predicate(part, plan.partitioning(),
                                                column_cast(source.schema, plan))
        values.update(bounds)
        conditions.append(condition)
    select_list = ", ".join(_select_list(source.schema))
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    return (f"SELECT {select_list} FROM {quote_ident(plan.table)} "  # nosec B608
            f"{where}ORDER BY {order}"), {name: str(value) for name, value in values.items()}


#: The values the lake's Arrow types cannot hold, by kind: a numeric NaN or infinity; a
#: timestamp or date at infinity, before year 1 or after 9999 (Arrow's CSV reader reads
#: four-digit years, AD).
_DECIMAL_OUTSIDE = "{column} = ANY(CAST('{{NaN,Infinity,-Infinity}}' AS numeric[]))"
#: A value of a numeric without precision that its lake type, decimal(38, 9), cannot hold:
#: NaN or infinity (greater than every number in PostgreSQL's order), too many digits
#: before the point, or more after it.
_UNBOUNDED_OUTSIDE = ("({column} = ANY(CAST('{{NaN,Infinity,-Infinity}}' AS numeric[])) "
                      "OR abs({column}) >= CAST('1e{digits}' AS numeric) "
                      "OR {column} <> round({column}, {scale}))")
_MOMENT_OUTSIDE = ("NOT ({column} BETWEEN CAST('0001-01-01' AS {cast}) "
                   "AND CAST('9999-12-31 23:59:59.999999' AS {cast}))")


def _outside(field: pa.Field) -> Optional[str]:
    """The condition under which ``field``'s source value cannot be held by its Arrow type
    (None: any value can)."""
    column = quote_ident(field.name)
    if pa.types.is_decimal(field.type):
        if field.metadata and UNBOUNDED_MARK in field.metadata:  # numeric without precision
            return _UNBOUNDED_OUTSIDE.format(column=column, scale=field.type.scale,
                                             digits=field.type.precision - field.type.scale)
        return _DECIMAL_OUTSIDE.format(column=column)
    if pa.types.is_timestamp(field.type):
        cast = "timestamptz" if field.type.tz else "timestamp"
        return _MOMENT_OUTSIDE.format(column=column, cast=cast)
    if pa.types.is_date(field.type):
        return _MOMENT_OUTSIDE.format(column=column, cast="date")
    return None


def _select_list(schema: pa.Schema) -> list[str]:
    """The ``COPY (SELECT ...)`` list of a lake file's columns: a value the lake's type
    cannot hold is NULL, and :data:`~totes.contracts.quarantine.UNREADABLE` keeps it as
    text (a JSON object, NULL when the row has none), so that it stops nothing and is not
    lost. The conditions cost one comparison per value; the JSON is built only for a row
    that needs it."""
    listed, outside = [], []
    for field in schema:
        if field.name == UNREADABLE:
            continue
        column, condition = quote_ident(field.name), _outside(field)
        if condition is None:
            listed.append(column)
        else:
            listed.append(f"CASE WHEN {condition} THEN NULL ELSE {column} END AS {column}")
            outside.append((field.name, column, condition))
    if UNREADABLE in schema.names:
        if outside:
            pairs = ", ".join(f"CAST('{name}' AS text), CASE WHEN {condition} THEN "
                              f"CAST({column} AS text) END"
                              for name, column, condition in outside)
            listed.append(f"CASE WHEN {' OR '.join(c for _, _, c in outside)} THEN "
                          f"CAST(jsonb_strip_nulls(jsonb_build_object({pairs})) AS text) END "
                          f"AS {quote_ident(UNREADABLE)}")
        else:
            listed.append(f"CAST(NULL AS text) AS {quote_ident(UNREADABLE)}")
    return listed


def partition_predicate(part: Partition, column: str, cast: str) -> tuple[str, dict[str, str]]:
    """The SQL condition of ``part`` on ``column`` (its bounds read from the settings
    ``totes.part_lower`` and ``totes.part_upper``, cast to ``cast``) and the settings' values;
    the first partition also takes NULLs (:mod:`totes.contracts.partitions`)."""
    q_column = quote_ident(column)
    conditions, values = [], {}
    if part.lower is not None:
        conditions.append(f"{q_column} >= {_setting('part_lower', cast)}")
        values["part_lower"] = part.lower
    if part.upper is not None:
        below = f"{q_column} < {_setting('part_upper', cast)}"
        conditions.append(f"({below} OR {q_column} IS NULL)" if part.lower is None else below)
        values["part_upper"] = part.upper
    return " AND ".join(conditions) or "TRUE", values


_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+-[0-9]+$")


class PostgresReader(SourceReader):
    """How ingest reads a PostgreSQL source (the interface of
    :mod:`totes.utils.source_reader`): ``COPY`` parsed as CSV, snapshots shared between the
    parts of a partitioned batch with ``pg_export_snapshot()``."""

    engine = "postgresql"
    #: Whether the parts of a partitioned batch can read one exported snapshot.
    shares_snapshots = True

    def __init__(self, database=None):
        """``database`` (a :class:`totes.utils.postgres.Database`): where a bulk extract
        opens its Arrow-native connection (:mod:`totes.utils.postgres_arrow`); without it,
        every read goes through the caller's pg8000 connection."""
        self.database = database

    def check_table(self, conn, table: str, primary_key: str,
                    watermark_column: Optional[str]) -> list[tuple[str, str]]:
        """As :func:`totes.utils.postgres_catalog.check_table`."""
        return check_table(conn, table, primary_key, watermark_column)

    def index_advice(self, conn, table: str, watermark_column: str,
                     primary_key: str) -> Optional[str]:
        """As :func:`totes.utils.postgres_catalog.watermark_index_advice`."""
        return watermark_index_advice(conn, table, watermark_column, primary_key)

    def inspect(self, conn, plan: TablePlan) -> Inspected:
        """As :func:`inspect_table`."""
        return inspect_table(conn, plan)

    def begin(self, conn, snapshot: Optional[str] = None) -> None:
        """Start the read-only repeatable-read transaction of an extract, in the exported
        ``snapshot`` when one is given."""
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if snapshot is not None:
            conn.run(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # checked by export_snapshot

    def export_snapshot(self, conn, table: str) -> str:
        """Export the snapshot of the transaction :meth:`begin` started, for the parts.

        Raises:
            DataError: the server answered with something that is not a snapshot id.
        """
        (snapshot,), = conn.run("SELECT pg_export_snapshot()")
        if not _SNAPSHOT_ID.match(snapshot):
            raise DataError(table, f"the source exported an unexpected snapshot id "
                            f"{snapshot!r}")
        return snapshot

    def partitions(self, conn, plan: TablePlan, schema: pa.Schema) -> list[Partition]:
        """As :func:`totes.contracts.partitions.partitions_of`, the bounds read in ``conn``'s
        snapshot when the configuration gives none."""
        def bounds() -> tuple[Optional[str], Optional[str]]:
            q_column = quote_ident(plan.partitioning())
            (low, high), = conn.run(  # identifiers only, each through quote_ident
                f"SELECT min({q_column})::text, max({q_column})::text "  # nosec B608
                f"FROM {quote_ident(plan.table)}")
            return low, high

        return partitions_of(plan, schema, bounds)

    @contextlib.contextmanager
    def primary_keys(self, conn, table: str, primary_key: str, doing: str
                     ) -> Iterator[Iterator[pa.Array]]:
        """Every value of ``table``'s ``primary_key``, in key order, streamed by one ``COPY``
        (an index-only scan of the key where the visibility map allows).

        Raises:
            DatabaseUnavailable / TerminalError: the database failed (``doing`` says what).
        """
        key = quote_ident(primary_key)
        sql = (f"COPY (SELECT {key} FROM {quote_ident(table)} ORDER BY {key}) "  # nosec B608
               "TO STDOUT WITH (FORMAT csv)")
        schema = pa.schema([pa.field(primary_key, pa.int64(), nullable=False)])
        with copy_stream(conn, sql, doing) as reader:
            yield (batch.column(0) for batch in csv_record_batches(reader, schema, table))

    def key_after(self, conn, table: str, primary_key: str, start: Optional[int],
                  rows: int) -> Optional[int]:
        """As :meth:`SourceReader.key_after`, its values bound."""
        key = quote_ident(primary_key)
        after = f"WHERE {key} >= :start " if start is not None else ""
        values = {"start": int(start)} if start is not None else {}
        found = conn.run(f"SELECT {key} FROM {quote_ident(table)} {after}"  # nosec B608
                         f"ORDER BY {key} OFFSET :rows LIMIT 1", rows=int(rows), **values)
        return int(found[0][0]) if found else None

    @contextlib.contextmanager
    def batches(self, conn, plan: TablePlan, inspected: Inspected, job: Job, doing: str,
                part: Optional[Partition] = None, keys: Optional[Sequence[int]] = None
                ) -> Iterator[Iterator[pa.RecordBatch]]:
        """This run's rows (of ``part``; of ``keys`` only) as record batches of ``job.schema``
        (``job.block_bytes`` of CSV each), in the transaction :meth:`begin` started; the
        caller reads them to the end.

        Raises:
            RowLargerThanBlock, DataError: as :func:`csv_record_batches`.
            DatabaseUnavailable / TerminalError: the database failed (``doing`` says what).
        """
        if keys is None and self._reads_in_bulk(conn, plan, job):
            select, values = extract_query(plan, inspected, job.low, part)
            snapshot = self.export_snapshot(conn, plan.table)
            with postgres_arrow.snapshot_read(
                    self.database.params, f"totes-ingest-{plan.table}", snapshot, values,
                    select, job.schema, plan.table, doing, job.block_bytes) as batches:
                yield batches
            return
        sql = extract_sql(conn, plan, inspected, job.low, part, keys)
        with copy_stream(conn, sql, doing) as reader:
            yield csv_record_batches(reader, job.schema, plan.table, job.block_bytes, job.pool)

    def _reads_in_bulk(self, conn, plan: TablePlan, job: Job) -> bool:
        """Whether this extract reads through the Arrow-native driver: a bulk read (a
        first incremental, a full, reingest or backfill read), of a UTF-8 source, with the
        driver installed and ``TOTES_BULK_READER`` at ``adbc``. An incremental run after
        the first reads few rows: one pg8000 ``COPY`` costs less than a second
        connection."""
        bulk = plan.mode in ("full", "reingest", "backfill") or \
            (plan.mode == "incremental" and job.low is None)
        return (bulk and self.database is not None
                and settings.current().bulk_reader == "adbc" and postgres_arrow.available()
                and postgres_arrow.server_encoding(conn) == "UTF8")
