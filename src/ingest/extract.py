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
from typing import Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from totes.ingest.source_catalog import arrow_type, check_table
from totes.utils.config import TablePlan
from totes.utils.db import Database, quote_ident, translate_error
from totes.utils.lake import Lake
from totes.utils.errors import DataError
from totes.utils.stage_results import HeldBackBy, IngestResult
from totes.utils.watermark import Watermark, footer_metadata, read_high_watermark

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


class _RowLargerThanBlock(Exception):
    """A row did not fit in one CSV block of ``record_batch_bytes``; the extract is redone
    with larger blocks."""


def _read_cutoff(conn, lag_seconds: float,
                 with_time_zone: bool) -> tuple[str, bool, Optional[HeldBackBy]]:
    (sees_all, instant, local, pid, role, application, state, age), = conn.run(
        _CUTOFF_SQL, lag=lag_seconds)
    held_back = None
    if pid is not None and age is not None and age > HELD_BACK_WARNING_SECONDS:
        held_back = HeldBackBy(pid=pid, role=role, application_name=application or "",
                               state=state or "", transaction_age_seconds=round(age, 1))
    return (instant if with_time_zone else local), bool(sees_all), held_back


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
        if failures and not isinstance(consumer_error, _RowLargerThanBlock):
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
    the SQL type of its watermark, and the cutoff that stops short of in-flight writes."""

    schema: pa.Schema
    watermark_cast: str  # "timestamp" or "timestamptz"
    cutoff: str
    held_back_by: Optional[HeldBackBy]


def _inspect(conn, plan: TablePlan) -> _Source:
    """Check the table and read its columns and the cutoff (before the snapshot is taken).

    Raises:
        SourceSchemaError: the table or its key/watermark column is missing.
    """
    table = plan.table
    columns = check_table(conn, table, plan.primary_key, plan.watermark_column)
    with_time_zone = "with time zone" in dict(columns)[plan.watermark_column]
    schema = pa.schema([(name, arrow_type(pg_type, table, name)) for name, pg_type in columns])
    cutoff, sees_all, held_back = _read_cutoff(conn, plan.in_flight_safety_lag_seconds,
                                               with_time_zone)
    if not sees_all:
        log.info("%s: the source role cannot see other sessions; stopping %ss short of the "
                 "database clock (grant pg_read_all_stats to remove the lag)",
                 table, plan.in_flight_safety_lag_seconds)
    if held_back is not None:
        log.warning("%s: rows changed after %s wait for a transaction open for %.0f s "
                    "(pid %s, role %s, %s); they are extracted once it ends", table, cutoff,
                    held_back.transaction_age_seconds, held_back.pid, held_back.role,
                    held_back.state)
    return _Source(schema, "timestamptz" if with_time_zone else "timestamp", cutoff,
                   held_back)


def _extract_sql(conn, plan: TablePlan, source: _Source, low: Optional[Watermark]) -> str:
    """The ``COPY (SELECT ...) TO STDOUT`` of the rows after ``low`` and before the cutoff,
    in watermark order. Values are bound into the transaction's settings with ``set_config``
    (the statement holds identifiers only, each through ``quote_ident``)."""
    q_wm, q_pk = quote_ident(plan.watermark_column), quote_ident(plan.primary_key)
    cast = source.watermark_cast
    conn.run("SELECT set_config('totes.cutoff', :cutoff, true)", cutoff=source.cutoff)
    conditions = [f"{q_wm} < current_setting('totes.cutoff')::{cast}"]
    if low is not None:
        conn.run("SELECT set_config('totes.low_ts', :ts, true), "
                 "set_config('totes.low_pk', :pk, true)",
                 ts=low.timestamp, pk=str(low.primary_key))
        conditions.append(f"({q_wm}, {q_pk}) > (current_setting('totes.low_ts')::{cast}, "
                          "current_setting('totes.low_pk')::bigint)")
    select_list = ", ".join(quote_ident(name) for name in source.schema.names)
    return (f"COPY (SELECT {select_list} FROM {quote_ident(plan.table)} "  # nosec B608
            f"WHERE {' AND '.join(conditions)} ORDER BY {q_wm}, {q_pk}) "
            "TO STDOUT WITH (FORMAT csv)")


@dataclass(frozen=True)
class _Written:
    rows: int
    row_groups: int
    high: Watermark


def _csv_to_parquet(reader, staged: str, plan: TablePlan, schema: pa.Schema,
                    low: Optional[Watermark], pool: pa.MemoryPool,
                    block_bytes: int) -> Optional[_Written]:
    """Parse the CSV stream of ``reader`` into record batches of ``block_bytes`` and write
    each as one row group of the Parquet file ``staged``, the watermarks in its footer.
    Returns None (and writes nothing) when the stream is empty.

    Raises:
        _RowLargerThanBlock: a row does not fit in one block.
    """
    try:
        return _write_parquet(reader, staged, plan, schema, low, pool, block_bytes)
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # "straddling object straddles two block boundaries"
            raise _RowLargerThanBlock(str(exc)) from exc
        raise


def _write_parquet(reader, staged, plan, schema, low, pool, block_bytes) -> Optional[_Written]:
    if not reader.peek(1):
        return None
    batches = pacsv.open_csv(
        reader,
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=block_bytes),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=schema, true_values=["t"], false_values=["f"], null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False),
        memory_pool=pool)
    rows = row_groups = 0
    last = None
    with pq.ParquetWriter(staged, schema, compression="zstd", memory_pool=pool) as parquet:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            parquet.write_batch(batch)
            rows += batch.num_rows
            row_groups += 1
            last = batch
            log.debug("%s: %d rows so far", plan.table, rows)
        high = Watermark.of_last_row(last, plan.watermark_column, plan.primary_key)
        parquet.add_key_value_metadata(footer_metadata(high, low))
    return _Written(rows, row_groups, high)


def ingest_table(plan: TablePlan, source: Database, lake: Lake) -> IngestResult:
    """Extract the new row versions of ``plan.table`` into one lake file.

    Returns the stage result (:class:`~totes.utils.stage_results.IngestResult`, the Map
    state's output for this table): its ``key`` is None and ``high_watermark`` equals
    ``low_watermark`` when nothing is new.

    Raises:
        SourceSchemaError: the table or its key/watermark column is missing.
        DatabaseUnavailable: the source could not be reached or the connection broke (retry).
        StorageUnavailable: the lake could not be listed or written (retry).
        LakeError: the lake breaks the contract (newest file without watermark metadata), or
            another ingest of the table published the same batch first.
    """
    started = time.monotonic()
    table = plan.table
    low = read_high_watermark(lake, table)
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    block = plan.record_batch_bytes
    while True:
        try:
            inspected, written, key, size = _extract(plan, source, lake, low, pool, block)
            break
        except _RowLargerThanBlock:
            if block >= MAX_RECORD_BATCH_BYTES:
                raise DataError(table, f"has a row larger than {MAX_RECORD_BATCH_BYTES:,} "
                                "bytes of CSV, more than one record batch can hold") from None
            block = min(block * 4, MAX_RECORD_BATCH_BYTES)
            log.info("%s: a row is larger than the CSV block; extracting again with blocks "
                     "of %d bytes", table, block)
    log.info("ingested %s: %d rows into %s", table, written.rows if written else 0,
             key or "(no file)")
    return IngestResult(
        table=table, key=key, rows=written.rows if written else 0,
        row_groups=written.row_groups if written else 0, bytes=size, low_watermark=low,
        high_watermark=written.high if written else low, cutoff=inspected.cutoff,
        held_back_by=inspected.held_back_by, seconds=round(time.monotonic() - started, 3),
        peak_arrow_bytes=pool.max_memory())


def _extract(plan: TablePlan, source: Database, lake: Lake, low: Optional[Watermark],
             pool: pa.MemoryPool, block: int):
    """One attempt: the rows after ``low`` into a published lake file (none if no row)."""
    doing = f"extracting table {plan.table} from the {source.describe()}"
    with source.session(f"totes-ingest-{plan.table}", doing) as session:
        conn = session.conn
        inspected = _inspect(conn, plan)
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        sql = _extract_sql(conn, plan, inspected, low)
        with lake.staging_file() as staged:
            written = _copy_through_pipe(
                conn, sql, lambda reader: _csv_to_parquet(reader, staged, plan,
                                                          inspected.schema, low, pool, block),
                doing)
            conn.run("COMMIT")
            key, size = None, 0
            if written is not None:
                key = lake.next_key(plan.table, written.high.moment())
                size = lake.publish(staged, key)
    return inspected, written, key, size
