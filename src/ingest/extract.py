"""Extract one source table's new row versions into one Parquet file in the lake.

Rules:

* **Watermarks in data time** (:mod:`totes.utils.watermark`). A batch holds the rows whose
  ``(watermark_column, primary_key)`` is greater than the previous batch's high watermark, in
  that order. The high watermark of a batch is its last row's pair, kept in the file's footer;
  its timestamp names the key. With no batch yet, everything is extracted. Rows sharing the
  previous high timestamp are told apart by primary key: none read twice, none skipped.
* **In-flight transactions.** Before taking its snapshot a run reads the start of the oldest
  transaction still open in the source database (``pg_stat_activity``; the role needs
  ``pg_read_all_stats`` to see other roles' sessions) and extracts only rows whose watermark is
  older than that and than the database's clock. A role that cannot see other sessions stops
  ``in_flight_safety_lag_seconds`` short of the database's clock instead.
* **Streaming.** ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` is written by pg8000 into a pipe,
  parsed by pyarrow's streaming CSV reader into record batches of ``record_batch_bytes`` and
  written one Parquet row group per batch: memory stays bounded whatever the table's size.
* **No rows, no file**; a file is published in one atomic step, so the watermark moves only
  when the data has landed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pg8000.exceptions import DatabaseError

from totes.ingest.source_catalog import arrow_type, check_table, is_integer
from totes.utils.config import TablePlan
from totes.utils.db import Database, quote_ident, translate_error
from totes.utils.lake import Lake
from totes.utils.errors import ConfigError, DataError, StorageUnavailable, TotesError
from totes.utils.ledger import Ledger, new_run_id, record_json
from totes.utils.run_tracking import check_lease, skip_reason, tracked
from totes.utils.stage_results import HeldBackBy, IngestResult
from totes.utils.watermark import (Watermark, footer_metadata, greatest, read_footer,
                                   read_high_watermark)

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
#: The largest CSV block a row may need (pyarrow's block size is a 32-bit int).
MAX_RECORD_BATCH_BYTES = (1 << 31) - 1


#: Every memory pool an extract measured its peak with. Arrow's buffers point at their pool
#: without owning it, and the garbage collector may free a buffer (held in a reference cycle,
#: say a traceback's frames) after the pool's Python object: a pool that died first would be
#: used after being freed, corrupting the heap (seen as crashes in unrelated code). So pools
#: are kept for the life of the process: a few hundred bytes per extract.
_POOLS: list[pa.MemoryPool] = []
_POOLS_LOCK = threading.Lock()


def _measuring_pool() -> pa.MemoryPool:
    """A new proxy of the default memory pool, to measure one extract's peak; never freed."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    with _POOLS_LOCK:
        _POOLS.append(pool)
    return pool


class _RowLargerThanBlock(Exception):
    """A row did not fit in one CSV block of ``record_batch_bytes``; the extract is redone
    with larger blocks."""


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


def _copy_through_pipe(conn, sql: str, consume, doing: str):
    """Run ``COPY ... TO STDOUT`` in a thread writing into a pipe while ``consume(reader)``
    parses the other end; returns what ``consume`` returns. A failure of either side raises,
    the database's first."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=1 << 20)
    writer = os.fdopen(write_fd, "wb", buffering=1 << 20)
    failures: list[BaseException] = []

    def produce():
        try:
            conn.run(sql, stream=writer)
        except BaseException as exc:  # handed to the consuming thread below, which raises it
            failures.append(exc)
        finally:
            try:
                writer.close()
            except OSError:
                pass  # the consumer closed its end first; its own error is raised

    thread = threading.Thread(target=produce, name="copy-out", daemon=True)
    thread.start()
    try:
        result = consume(reader)
    except BaseException as consumer_error:
        reader.close()
        thread.join()
        # The consumer's own error comes first when it is one of ours (bad data, a row larger
        # than a block, a full disk): the database then only saw its end of the pipe close.
        if failures and not isinstance(consumer_error, (_RowLargerThanBlock, TotesError)):
            raise translate_error(failures[0], doing) from consumer_error
        raise
    reader.close()
    thread.join()
    if failures:
        raise translate_error(failures[0], doing) from failures[0]
    return result


@dataclass(frozen=True)
class _Source:
    """What ingest learns of a table before it reads rows: the Arrow schema of its columns,
    the SQL type of its watermark, the cutoff that stops short of in-flight writes (and the
    extract's moment, UTC), and the backfill bounds checked against the column's type."""

    schema: pa.Schema
    watermark_cast: Optional[str]  # "timestamp", "timestamptz", "bigint" or None
    cutoff: str
    moment: datetime
    held_back_by: Optional[HeldBackBy]


def _inspect(conn, plan: TablePlan) -> _Source:
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
    if plan.mode == "backfill":
        _check_range(conn, plan, cast)
    schema = pa.schema([(name, arrow_type(pg_type, table, name)) for name, pg_type in columns])
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
    return _Source(schema, cast, cutoff, instant, held_back)


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


def _extract_sql(conn, plan: TablePlan, source: _Source, low: Optional[Watermark]) -> str:
    """The ``COPY (SELECT ...) TO STDOUT`` of this run's rows, by mode:

    * incremental: after ``low``, before the cutoff, in ``(watermark, key)`` order;
    * reingest: before the cutoff, from the beginning;
    * backfill: watermark in ``[from, to)`` and before the cutoff;
    * full: every row, in key order.

    Before the cutoff means: a timestamp watermark older than the oldest open transaction
    (or the safety lag); for an integer watermark, a row whose writing transaction's id is
    older than the oldest open one's (``xmin`` older than the snapshot's ``xmin``). That is
    exact when a transaction takes its id (its first write) with the insert that takes the
    row's id, as an ``INSERT`` with a sequence default does; the README says when it is not.
    Values are bound with ``set_config``; the statement holds identifiers only, each through
    ``quote_ident``.
    """
    q_pk = quote_ident(plan.primary_key)
    conditions = []
    if plan.mode != "full":
        q_wm, cast = quote_ident(plan.watermark_column), source.watermark_cast
        if cast == "bigint":
            conditions.append("age(xmin) > age((pg_snapshot_xmin(pg_current_snapshot())"
                              "::text::bigint % 4294967296)::text::xid)")
        else:
            _set(conn, cutoff=source.cutoff)
            conditions.append(f"{q_wm} < {_setting('cutoff', cast)}")
        if plan.mode == "incremental" and low is not None:
            _set(conn, low_value=low.value, low_pk=low.primary_key)
            conditions.append(f"({q_wm}, {q_pk}) > ({_setting('low_value', cast)}, "
                              f"{_setting('low_pk', 'bigint')})")
        if plan.mode == "backfill":
            _set(conn, range_from=plan.backfill_from, range_to=plan.backfill_to)
            conditions.append(f"{q_wm} >= {_setting('range_from', cast)}")
            conditions.append(f"{q_wm} < {_setting('range_to', cast)}")
        order = f"{q_wm}, {q_pk}"
    else:
        order = q_pk
    select_list = ", ".join(quote_ident(name) for name in source.schema.names)
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    return (f"COPY (SELECT {select_list} FROM {quote_ident(plan.table)} "  # nosec B608
            f"{where}ORDER BY {order}) TO STDOUT WITH (FORMAT csv)")


@dataclass(frozen=True)
class _Written:
    rows: int
    row_groups: int
    high: Optional[Watermark]
    vanished: Optional[int] = None


@dataclass(frozen=True)
class _Job:
    """One extract attempt's settings: the plan, the lake file's schema, where it starts,
    the memory pool it allocates from, the CSV block size, the previous full snapshot's keys,
    and the cutoff below which a full snapshot's greatest watermark is taken."""

    plan: TablePlan
    schema: pa.Schema
    low: Optional[Watermark]
    pool: pa.MemoryPool
    block_bytes: int
    previous_ids: Optional[pa.Array]
    cutoff: Optional[datetime]


def _csv_to_parquet(reader, staged: str, job: _Job) -> Optional[_Written]:
    """Parse the CSV stream of ``reader`` into record batches of ``job.block_bytes`` and write
    each as one row group of the Parquet file ``staged``, the watermarks in its footer.
    Returns None (and writes nothing) when the stream is empty.

    Raises:
        _RowLargerThanBlock: a row does not fit in one block.
        DataError: a value could not be read as its column's type.
        StorageUnavailable: the staging file could not be written (a full disk).
    """
    try:
        return _write_parquet(reader, staged, job)
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # "straddling object straddles two block boundaries"
            raise _RowLargerThanBlock(str(exc)) from exc
        raise DataError(job.plan.table, f"has a value that cannot be read as its column's "
                        f"type: {exc}") from None
    except OSError as exc:  # the local disk (a full /tmp), not the database
        raise StorageUnavailable(f"writing the staging file of {job.plan.table}: {exc}") \
            from exc


def _write_parquet(reader, staged, job: _Job) -> Optional[_Written]:
    plan, schema, low, pool = job.plan, job.schema, job.low, job.pool
    if not reader.peek(1):
        return None
    batches = pacsv.open_csv(
        reader,
        # One thread: Arrow's readahead threads would read the pipe (a Python file) and
        # allocate from this extract's memory pool after it ends; a crash seen in testing.
        read_options=pacsv.ReadOptions(column_names=schema.names,
                                       block_size=job.block_bytes, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=schema, true_values=["t"], false_values=["f"], null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False),
        memory_pool=pool)
    rows = row_groups = 0
    last, top, ids = None, None, []
    with pq.ParquetWriter(staged, schema, compression="zstd", memory_pool=pool) as parquet:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            parquet.write_batch(batch)
            rows += batch.num_rows
            row_groups += 1
            last = batch
            if plan.mode == "full":
                ids.append(batch.column(plan.primary_key))
                if plan.watermark_column:
                    top = greatest(_before(batch, plan.watermark_column, job.cutoff),
                                   plan.watermark_column, plan.primary_key, top)
            log.debug("%s: %d rows so far", plan.table, rows)
        high = _high(plan, last, low, top)
        parquet.add_key_value_metadata(footer_metadata(high, low, plan.mode, _range(plan)))
    vanished, previous_ids = None, job.previous_ids
    if previous_ids is not None:
        current = pa.chunked_array(ids, previous_ids.type).combine_chunks()
        vanished = len(previous_ids) - pc.sum(pc.is_in(previous_ids, value_set=current)
                                              ).as_py() if len(previous_ids) else 0
    return _Written(rows, row_groups, high, vanished)


def _before(batch: pa.RecordBatch, column: str, cutoff: Optional[datetime]) -> pa.RecordBatch:
    """The rows of ``batch`` whose ``column`` is before the in-flight ``cutoff``: a full
    snapshot's high watermark must not pass rows that open transactions may still commit
    (the next incremental run re-reads those; a version is loaded once all the same)."""
    if cutoff is None:
        return batch
    values = batch.column(column)
    bound = pa.scalar(cutoff if values.type.tz else cutoff.replace(tzinfo=None),
                      type=values.type)
    return batch.filter(pc.fill_null(pc.less(values, bound), False))


def _high(plan: TablePlan, last, low: Optional[Watermark],
          top: Optional[Watermark]) -> Optional[Watermark]:
    """The footer's high watermark: the table's incremental watermark after this batch."""
    if plan.mode in ("incremental", "reingest"):
        return Watermark.of_last_row(last, plan.watermark_column, plan.primary_key)
    if plan.mode == "backfill":
        return low  # a backfill never moves the incremental watermark
    return top


def _range(plan: TablePlan) -> Optional[dict[str, str]]:
    if plan.mode != "backfill":
        return None
    return {"from": plan.backfill_from, "to": plan.backfill_to}


def _previous_snapshot_ids(lake: Lake, plan: TablePlan) -> Optional[pa.Array]:
    """For a full snapshot: the keys of the previous full snapshot of the table (to count
    the rows that vanished since), or None when there is none."""
    key = lake.newest_key(plan.table)
    if key is None or read_footer(lake, key).mode != "full":
        return None
    if plan.primary_key not in lake.metadata(key).schema.to_arrow_schema().names:
        return None
    return lake.read_table(key, columns=[plan.primary_key])[plan.primary_key].combine_chunks()


def ingest_table(plan: TablePlan, source: Database, lake: Lake,
                 ledger: Optional[Ledger] = None) -> IngestResult:
    """Extract this run's row versions of ``plan.table`` (by ``plan.mode``: see
    :func:`_extract_sql`) into one lake file; with a ``ledger``, under the table's lease and
    recorded there (:func:`totes.utils.run_tracking.tracked`). A table whose lease another
    live run holds is skipped (``skipped`` says by whom).

    Returns the stage result (:class:`~totes.utils.stage_results.IngestResult`, the Map
    state's output for this table): its ``key`` is None when no row was extracted, and
    ``high_watermark`` is the table's incremental watermark after the run.

    Raises:
        SourceSchemaError: the table or its key/watermark column is missing.
        ConfigError: a backfill's bounds are not values of the watermark's type, or not in
            order.
        DatabaseUnavailable: the source could not be reached or the connection broke (retry).
        StorageUnavailable: the lake could not be listed or written (retry).
        LakeError: the lake breaks the contract (newest file without watermark metadata), or
            another ingest of the table published the same batch first.
    """
    run_id = plan.run_id or new_run_id()
    plan = plan.model_copy(update={"run_id": run_id})

    def skipped(holder) -> IngestResult:
        log.warning("%s: skipped, %s", plan.table, skip_reason(holder))
        return IngestResult(table=plan.table, mode=plan.mode, key=None, rows=0, row_groups=0,
                            bytes=0, low_watermark=None, high_watermark=None, cutoff="",
                            skipped=skip_reason(holder), run_id=run_id, seconds=0.0,
                            peak_arrow_bytes=0)

    def summary(result: IngestResult) -> dict:
        return {"rows": result.rows, "bytes": result.bytes, "key": result.key,
                "low_watermark": record_json(result.low_watermark),
                "high_watermark": record_json(result.high_watermark),
                "details": {k: v for k, v in (
                    ("range", result.range), ("vanished_rows", result.vanished_rows),
                    ("held_back_by", record_json(result.held_back_by)),
                    ("ledger_note", result.ledger_note)) if v is not None}}

    def work() -> IngestResult:
        result = _ingest(plan, source, lake)
        if ledger is not None:
            result.ledger_note = _compare_with_ledger(ledger, plan.table, result.low_watermark)
        return result

    return tracked(ledger, "ingest", plan.table, run_id, plan.mode, work, skipped, summary)


def _compare_with_ledger(ledger: Ledger, table: str,
                         lake_watermark: Optional[Watermark]) -> Optional[str]:
    """When the ledger's last successful ingest of ``table`` ended at another watermark than
    the lake's newest batch: a note saying the lake won."""
    if lake_watermark is None:
        return None
    last = ledger.last("ingest", table, "succeeded")
    if last is None or last.high_watermark is None or last.mode == "backfill":
        return None
    if Watermark.model_validate(last.high_watermark) != lake_watermark:
        note = (f"the ledger's last ingest of {table} ended at {last.high_watermark}, the "
                f"lake's newest batch at {lake_watermark.model_dump()}: the lake wins")
        log.warning(note)
        return note
    return None


def _ingest(plan: TablePlan, source: Database, lake: Lake) -> IngestResult:
    started = time.monotonic()
    table = plan.table
    low = read_high_watermark(lake, table) if plan.mode in ("incremental", "backfill") \
        else None
    previous_ids = _previous_snapshot_ids(lake, plan) if plan.mode == "full" else None
    pool = _measuring_pool()
    block = plan.record_batch_bytes
    while True:
        try:
            inspected, written, key, size = _extract(plan, source, lake, low, pool, block,
                                                     previous_ids)
            break
        except _RowLargerThanBlock:
            if block >= MAX_RECORD_BATCH_BYTES:
                raise DataError(table, f"has a row larger than {MAX_RECORD_BATCH_BYTES:,} "
                                "bytes of CSV, more than one record batch can hold") from None
            block = min(block * 4, MAX_RECORD_BATCH_BYTES)
            log.info("%s: a row is larger than the CSV block; extracting again with blocks "
                     "of %d bytes", table, block)
    vanished = written.vanished if written else (
        len(previous_ids) if previous_ids is not None else None)
    if vanished:
        log.warning("%s: %d rows of the previous full snapshot are no longer in the source "
                    "(deleted there; the warehouse keeps them)", table, vanished)
    log.info("ingested %s (%s): %d rows into %s", table, plan.mode,
             written.rows if written else 0, key or "(no file)")
    return IngestResult(
        table=table, mode=plan.mode, key=key, rows=written.rows if written else 0,
        row_groups=written.row_groups if written else 0, bytes=size,
        low_watermark=low if plan.mode == "incremental" else None,
        high_watermark=written.high if written else (
            low if plan.mode in ("incremental", "backfill") else None),
        range=_range(plan), vanished_rows=vanished, cutoff=inspected.cutoff,
        held_back_by=inspected.held_back_by, run_id=plan.run_id,
        seconds=round(time.monotonic() - started, 3), peak_arrow_bytes=pool.max_memory())


def _extract(plan: TablePlan, source: Database, lake: Lake, low: Optional[Watermark],
             pool: pa.MemoryPool, block: int, previous_ids: Optional[pa.Array]):
    """One attempt: this run's rows into a published lake file (none if no row)."""
    doing = f"extracting table {plan.table} from the {source.describe()}"
    with source.session(f"totes-ingest-{plan.table}", doing) as session:
        conn = session.conn
        inspected = _inspect(conn, plan)
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        sql = _extract_sql(conn, plan, inspected, low)
        cutoff = datetime.fromisoformat(inspected.cutoff) \
            if inspected.watermark_cast in ("timestamp", "timestamptz") else None
        job = _Job(plan, inspected.schema, low, pool, block, previous_ids, cutoff)
        with lake.staging_file() as staged:
            written = _copy_through_pipe(
                conn, sql, lambda reader: _csv_to_parquet(reader, staged, job), doing)
            conn.run("COMMIT")
            key, size = None, 0
            if written is not None:
                # A backfill carries the watermark it found (its key lands one microsecond
                # past the newest); a batch without a timestamp watermark takes the
                # extract's moment.
                moment = (written.high.moment() if written.high is not None else None) \
                    or inspected.moment
                key = lake.next_key(plan.table, moment)
                check_lease()  # no other run may have taken the table meanwhile
                size = lake.publish(staged, key)
    return inspected, written, key, size
