"""Extract one source table's new row versions into one Parquet file in the lake.

Rules (ARCHITECTURE.md, "Contracts between stages"):

* **Watermarks in data time.** A batch holds the rows whose ``(watermark_column, primary_key)``
  is greater than the previous batch's high watermark, in that order. The high watermark of a
  batch is its last row's pair; it is kept in the file's Parquet metadata
  (``totes.high_watermark``) and its timestamp names the key. The low watermark is read back
  from the newest key of the table; with no key, everything is extracted. Rows sharing the
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

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from totes.ingest.source_catalog import arrow_type, check_table, table_columns
from totes.utils.config import TablePlan
from totes.utils.db import Database, quote_ident, translate_error
from totes.utils.errors import LakeError
from totes.utils.lake import Lake

log = logging.getLogger(__name__)

HIGH_WATERMARK_KEY = b"totes.high_watermark"
LOW_WATERMARK_KEY = b"totes.low_watermark"

_CUTOFF_SQL = """
WITH role AS (
    SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all
    FROM pg_roles WHERE rolname = current_user
), activity AS (
    SELECT min(xact_start) AS oldest FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend' AND xact_start IS NOT NULL
), cutoff AS (
    SELECT role.sees_all,
           CASE WHEN role.sees_all THEN least(activity.oldest, clock_timestamp())
                ELSE least(activity.oldest,
                           clock_timestamp() - make_interval(secs => CAST(:lag AS float8)))
           END AS instant
    FROM role, activity
)
SELECT sees_all, instant::text,
       (instant AT TIME ZONE (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'))::text
FROM cutoff
"""


def read_watermark(lake: Lake, table: str) -> Optional[dict]:
    """The high watermark of the newest batch of ``table`` in the lake, as
    ``{"timestamp": "2024-11-15 14:40:10.123000", "primary_key": 11187}``, or None when the
    table has no batch yet (first run: everything).

    Raises:
        LakeError: the newest file has no ``totes.high_watermark`` metadata.
    """
    key = lake.newest_key(table)
    if key is None:
        return None
    metadata = lake.parquet_file(key).metadata.metadata or {}  # the footer's key-value pairs
    if HIGH_WATERMARK_KEY not in metadata:
        raise LakeError(f"{lake.uri}/{key} has no totes.high_watermark metadata; "
                        "it was not written by ingest")
    return json.loads(metadata[HIGH_WATERMARK_KEY])


def _read_cutoff(conn, lag_seconds: float, with_time_zone: bool) -> tuple[str, bool]:
    (sees_all, instant, local), = conn.run(_CUTOFF_SQL, lag=lag_seconds)
    return (instant if with_time_zone else local), bool(sees_all)


def _watermark(row: pa.RecordBatch, watermark_column: str, primary_key: str) -> dict:
    moment = row.column(watermark_column)[0].as_py()
    return {"timestamp": moment.isoformat(sep=" ", timespec="microseconds"),
            "primary_key": row.column(primary_key)[0].as_py()}


def _key_moment(watermark: dict) -> datetime:
    moment = datetime.fromisoformat(watermark["timestamp"])
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


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
        if failures:
            raise translate_error(failures[0], doing) from consumer_error
        raise
    reader.close()
    thread.join()
    if failures:
        raise translate_error(failures[0], doing) from failures[0]
    return result


def ingest_table(plan: TablePlan, source: Database, lake: Lake) -> dict:
    """Extract the new row versions of ``plan.table`` into one lake file.

    Returns the JSON result (the Map state's output for this table)::

        {"table": "payment", "key": "payment/2024/11/15/144010123000.parquet" | null,
         "rows": 15836, "row_groups": 2, "bytes": 702115,
         "low_watermark": null | {"timestamp": "...", "primary_key": 1},
         "high_watermark": {"timestamp": "2024-11-15 14:40:10.123000", "primary_key": 15836},
         "cutoff": "2026-11-22 15:00:00.123456", "seconds": 1.23, "peak_arrow_bytes": 4194304}

    ``high_watermark`` equals ``low_watermark`` and ``key`` is null when nothing is new.

    Raises:
        SourceSchemaError: the table or its key/watermark column is missing.
        DatabaseUnavailable: the source could not be reached or the connection broke (retry).
        StorageUnavailable: the lake could not be listed or written (retry).
        LakeError: the lake breaks the contract (newest file without watermark metadata).
    """
    started = time.monotonic()
    table, primary_key, watermark_column = plan.table, plan.primary_key, plan.watermark_column
    low = read_watermark(lake, table)
    doing = f"extracting table {table} from the {source.describe()}"
    with source.session(f"totes-ingest-{table}", doing) as session:
        conn = session.conn
        columns = table_columns(conn, table)
        check_table(columns, table, primary_key, watermark_column)
        types = dict(columns)
        with_time_zone = "with time zone" in types[watermark_column]
        cast = "timestamptz" if with_time_zone else "timestamp"
        schema = pa.schema([(name, arrow_type(pg_type, table, name)) for name, pg_type in columns])
        cutoff, sees_all = _read_cutoff(conn, plan.in_flight_safety_lag_seconds, with_time_zone)
        if not sees_all:
            log.info("%s: the source role cannot see other sessions; stopping %ss short of the "
                     "database clock (grant pg_read_all_stats to remove the lag)",
                     table, plan.in_flight_safety_lag_seconds)

        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        q_wm, q_pk = quote_ident(watermark_column), quote_ident(primary_key)
        conditions = [f"{q_wm} < current_setting('totes.cutoff')::{cast}"]
        conn.run("SELECT set_config('totes.cutoff', :cutoff, true)", cutoff=cutoff)
        if low is not None:
            conn.run("SELECT set_config('totes.low_ts', :ts, true), "
                     "set_config('totes.low_pk', :pk, true)",
                     ts=low["timestamp"], pk=str(low["primary_key"]))
            conditions.append(f"({q_wm}, {q_pk}) > (current_setting('totes.low_ts')::{cast}, "
                              "current_setting('totes.low_pk')::bigint)")
        select_list = ", ".join(quote_ident(name) for name in schema.names)
        # Identifiers only, each through quote_ident; values are bound with set_config.
        sql = (f"COPY (SELECT {select_list} FROM {quote_ident(table)} "  # nosec B608
               f"WHERE {' AND '.join(conditions)} ORDER BY {q_wm}, {q_pk}) "
               "TO STDOUT WITH (FORMAT csv)")

        pool = pa.proxy_memory_pool(pa.default_memory_pool())
        with lake.staging_file() as staged:
            def consume(reader):
                if not reader.peek(1):
                    return None
                batches = pacsv.open_csv(
                    reader,
                    read_options=pacsv.ReadOptions(column_names=schema.names,
                                                   block_size=plan.record_batch_bytes),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types=schema, true_values=["t"], false_values=["f"],
                        null_values=[""], strings_can_be_null=True,
                        quoted_strings_can_be_null=False),
                    memory_pool=pool)
                rows = row_groups = 0
                last = None
                with pq.ParquetWriter(staged, schema, compression="zstd",
                                      memory_pool=pool) as parquet:
                    for batch in batches:
                        if batch.num_rows == 0:
                            continue
                        parquet.write_batch(batch)
                        rows += batch.num_rows
                        row_groups += 1
                        last = batch.slice(batch.num_rows - 1)
                        log.debug("%s: %d rows so far", table, rows)
                    high = _watermark(last, watermark_column, primary_key)
                    parquet.add_key_value_metadata({
                        HIGH_WATERMARK_KEY: json.dumps(high),
                        LOW_WATERMARK_KEY: json.dumps(low),
                    })
                return rows, row_groups, high

            extracted = _copy_through_pipe(conn, sql, consume, doing)
            conn.run("COMMIT")
            key, size = None, 0
            rows, row_groups, high = extracted or (0, 0, low)
            if extracted is not None:
                key = lake.next_key(table, _key_moment(high))
                size = lake.publish(staged, key)
    result = {
        "table": table, "key": key, "rows": rows, "row_groups": row_groups, "bytes": size,
        "low_watermark": low, "high_watermark": high, "cutoff": cutoff,
        "seconds": round(time.monotonic() - started, 3), "peak_arrow_bytes": pool.max_memory(),
    }
    log.info("ingested %s: %d rows into %s", table, rows, key or "(no file)")
    return result
