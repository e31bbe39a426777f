"""Extract one source table's row versions for this run into the lake: one batch.

Rules:

* **Watermarks in data time** (:mod:`totes.contracts.watermark`). A batch holds the rows whose
  ``(watermark_column, primary_key)`` is greater than the previous batch's high watermark, in
  that order. The high watermark of a batch is its last row's pair, kept in the file's footer;
  its timestamp names the key. With no batch yet, everything is extracted. Rows sharing the
  previous high timestamp are told apart by primary key: none read twice, none skipped.
* **Modes**: incremental, full, reingest, backfill (:func:`totes.utils.postgres_reader.
  extract_sql`, :func:`totes.utils.mysql_reader.select_sql`).
* **Engines.** The source's reader (:mod:`totes.utils.source_reader`) holds what differs
  between PostgreSQL and MySQL; everything here is the same for both.
* **Partitions.** A table with ``num_partitions`` > 1 is read as that many ranges of its
  ``partition_column`` in parallel, each through its own connection. On PostgreSQL all read
  one snapshot of the source exported by a coordinating transaction (``pg_export_snapshot()``,
  as ``pg_dump --jobs`` does): together the parts are exactly what one read returns. MySQL
  cannot share a snapshot between connections: each part takes its own, all bounded by the
  one cutoff read first, as the parts of a batch read by separate workers are. Each part is a file
  under ``<table>/_parts/<batch>/``, which no reader lists; the batch becomes visible when its
  commit file, ``<table>/YYYY/MM/DD/HHMMSSffffff.parquet`` (no rows, the watermarks and the
  list of parts in its footer), is created, last (:func:`totes.utils.footers.batch_files`).
* **No rows, no file**; a file is published in one atomic step, so the watermark moves only
  when the data has landed.
"""
from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Optional

import pyarrow as pa

from pydantic import BaseModel

from totes.contracts.config import DistributedBatch, TablePlan
from totes.contracts.errors import ConfigError, DataError, LakeError, StorageUnavailable
from totes.contracts.partitions import Partition
from totes.contracts.source_schema import SchemaDecision, SchemaRecord, decide, schema_footer
from totes.contracts.source_tables import SOURCE_TABLES
from totes.contracts.stage_results import IngestResult
from totes.contracts.watermark import Watermark, footer_metadata, highest
from totes.ingest import deletes
from totes.ingest.batch_writer import (Written, cutoff_bound, read_into, vanished,
                                       write_batches)
from totes.utils.footers import (batch_files, read_footer, read_high_watermark,
                                 read_schema_record)
from totes.utils.lake import Lake, parquet_writer, storage_call
from totes.utils.ledger import Ledger, new_run_id, record_json
from totes.utils.databases import SourceDatabase
from totes.utils.postgres_copy import MAX_RECORD_BATCH_BYTES, RowLargerThanBlock
from totes.utils.run_tracking import check_lease, skip_reason, tracked
from totes.utils.source_reader import Inspected, Job, measuring_pool, reader_for

log = logging.getLogger(__name__)
#: Parts of one table read at once (each through its own connection).
PARTITION_WORKERS = 4


def _previous_snapshot_ids(lake: Lake, plan: TablePlan) -> Optional[pa.Array]:
    """For a full snapshot: the keys of the previous full snapshot of the table (to count
    the rows that vanished since), or None when there is none."""
    key = lake.newest_key(plan.table)
    if key is None or read_footer(lake, key).mode != "full":
        return None
    arrays = []
    for file in batch_files(lake, key):
        if plan.primary_key not in lake.metadata(file).schema.to_arrow_schema().names:
            return None
        arrays.append(lake.read_table(file, columns=[plan.primary_key])[plan.primary_key]
                      .combine_chunks())
    return pa.concat_arrays(arrays) if arrays else None


def ingest_table(plan: TablePlan, source: SourceDatabase, lake: Lake,
                 ledger: Optional[Ledger] = None) -> IngestResult:
    """Extract this run's row versions of ``plan.table`` (by ``plan.mode``: see
    :func:`extract_sql`) into one lake file; with a ``ledger``, under the table's lease and
    recorded there (:func:`totes.utils.run_tracking.tracked`). A table whose lease another
    live run holds is skipped (``skipped`` says by whom).

    Returns the stage result (:class:`~totes.contracts.stage_results.IngestResult`, the Map
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
        return skipped_result(plan, run_id, skip_reason(holder))

    def work() -> IngestResult:
        result = _ingest(plan, source, lake)
        if ledger is not None:
            result.ledger_note = _compare_with_ledger(ledger, plan.table, result.low_watermark)
        return with_detected_deletes(plan, source, lake, ledger, result)

    return tracked(ledger, "ingest", plan.table, run_id, plan.mode, work, skipped,
                   ingest_ledger_summary)


def with_detected_deletes(plan: TablePlan, source: Optional[SourceDatabase], lake: Lake,
                          ledger: Optional[Ledger], result: IngestResult) -> IngestResult:
    """``result`` after the table's hard deletes were looked for, when this run is due to
    (``delete_detection: keys``, :mod:`totes.ingest.deletes`): the delete versions are a
    batch of their own, counted in ``deleted``. Runs under the caller's lease."""
    if source is None or result.skipped or not deletes.due(plan, ledger):
        return result
    found = deletes.detect_deletes(plan, source, lake)
    return result.model_copy(update={"delete_detection": found.details(),
                                     "seconds": round(result.seconds + found.seconds, 3)})


def ingest_ledger_summary(result: IngestResult) -> dict:
    """The succeeded record's fields of an ingest."""
    return {"rows": result.rows, "bytes": result.bytes, "key": result.key,
            "low_watermark": record_json(result.low_watermark),
            "high_watermark": record_json(result.high_watermark),
            "details": {k: v for k, v in (
                ("range", result.range), ("vanished_rows", result.vanished_rows),
                ("parts", result.parts), ("held_back_by", record_json(result.held_back_by)),
                ("ledger_note", result.ledger_note),
                (deletes.DETAILS_KEY, result.delete_detection),
                ("schema_version", result.schema_version),
                ("schema_changes", result.schema_changes)) if v is not None}}


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


def _ingest(plan: TablePlan, source: SourceDatabase, lake: Lake) -> IngestResult:
    started = time.monotonic()
    table = plan.table
    if plan.extract_type == "cdc":
        raise ConfigError(f"table {table} is a cdc table: the change log's reader "
                          "(totes.ingest.capture) reads it, not a table extract")
    low = read_high_watermark(lake, table) if plan.mode in ("incremental", "backfill") \
        else None
    previous_ids = _previous_snapshot_ids(lake, plan) if plan.mode == "full" else None
    pool = measuring_pool()
    block = plan.record_batch_bytes
    landed: list[_Landed] = []  # the batches published so far, across attempts
    while True:
        try:
            if plan.num_partitions > 1:
                batch = _extract_partitioned(plan, source, lake, low, pool, block)
            else:
                start = landed[-1].written.high if landed else low
                batch = _extract(plan, source, lake, start, pool, block, landed)
            break
        except RowLargerThanBlock:
            if block >= MAX_RECORD_BATCH_BYTES:
                raise DataError(table, f"has a row larger than {MAX_RECORD_BATCH_BYTES:,} "
                                "bytes of CSV, more than one record batch can hold") from None
            block = min(block * 4, MAX_RECORD_BATCH_BYTES)
            log.info("%s: a row is larger than the CSV block; extracting again with blocks "
                     "of %d bytes", table, block)
    gone = vanished(previous_ids, [w.ids for w in batch.written if w.ids is not None])
    if gone:
        log.warning("%s: %d rows of the previous full snapshot are no longer in the source "
                    "(deleted there; the warehouse keeps them)", table, gone)
    rows = sum(w.rows for w in batch.written)
    log.info("ingested %s (%s): %d rows into %s", table, plan.mode, rows,
             batch.key or "(no file)")
    version, changes = _schema_outcome(table, batch.key, batch.decision)
    return IngestResult(
        table=table, mode=plan.mode, key=batch.key, rows=rows,
        row_groups=sum(w.row_groups for w in batch.written), bytes=batch.bytes,
        low_watermark=low if plan.mode == "incremental" else None,
        high_watermark=batch.high if batch.key else (
            low if plan.mode in ("incremental", "backfill") else None),
        keys=batch.keys if len(batch.keys) > 1 else None,
        range=plan.backfill_range(), vanished_rows=gone, parts=batch.parts,
        cutoff=batch.inspected.cutoff, held_back_by=batch.inspected.held_back_by,
        run_id=plan.run_id, seconds=round(time.monotonic() - started, 3),
        peak_arrow_bytes=pool.max_memory(), schema_version=version, schema_changes=changes)


def decide_schema(plan: TablePlan, inspected: Inspected, lake: Lake) -> Optional[SchemaDecision]:
    """What the table's schema contract decides for the next batch, from the source's
    columns (``inspected``) and the newest batch's schema record
    (:func:`totes.contracts.source_schema.decide`); None when the reader gave no columns.

    Raises:
        SourceSchemaError: the contract freezes what changed (naming the column, and the old
            and the new type).
        LakeError / StorageUnavailable: the newest batch's footer could not be read.
    """
    if not inspected.columns:
        return None
    read = SOURCE_TABLES[plan.table].columns if plan.table in SOURCE_TABLES else ()
    return decide(plan.table, read_schema_record(lake, plan.table), list(inspected.columns),
                  plan.schema_contract, frozenset(read),
                  inspected.moment.isoformat(sep=" ", timespec="microseconds"))


def _schema_outcome(table: str, key: Optional[str], decision: Optional[SchemaDecision]
                    ) -> tuple[Optional[int], Optional[list[dict]]]:
    """The result's ``schema_version`` and ``schema_changes`` of a batch (None, None: no
    batch, or none decided); a change is logged."""
    if key is None or decision is None:
        return None, None
    record = decision.record
    if record.changes:
        log.warning("%s: source schema version %d: %s", table, record.version,
                    "; ".join(c.describe() for c in record.changes))
    return record.version, [c.model_dump() for c in record.changes] or None


@dataclass
class _Batch:
    """What one extract published: its key (None: no rows, no file), its size in bytes, its
    high watermark, the files' summaries and, when partitioned, its parts."""

    inspected: Inspected
    key: Optional[str] = None
    bytes: int = 0
    high: Optional[Watermark] = None
    written: list[Written] = field(default_factory=list)
    parts: Optional[list[dict]] = None
    decision: Optional[SchemaDecision] = None
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Landed:
    """One published batch of an extract: its key, size in bytes and what it holds."""

    key: str
    bytes: int
    written: Written


def _key_moment(high: Optional[Watermark], moment: datetime) -> datetime:
    """What a batch's key is named after: its high watermark's moment (a backfill carries
    the watermark it found, so its key lands one microsecond past the newest), or, without
    a timestamp watermark, the extract's ``moment``."""
    return (high.moment() if high is not None else None) or moment


def _extract(plan: TablePlan, source: SourceDatabase, lake: Lake, low: Optional[Watermark],
             pool: pa.MemoryPool, block: int, landed: list[_Landed]) -> _Batch:
    """One attempt: this run's rows into published lake files (none if no row). An
    incremental extract lands as batches of at most ``plan.max_batch_rows`` rows (rounded up
    to a record batch), each published with its high watermark before the next is written;
    each is appended to ``landed`` as it is published, so that an attempt retried after a
    failure starts after the last one (the caller's ``low``)."""
    doing = f"extracting table {plan.table} from the {source.describe()}"
    reader = reader_for(source)
    limit = plan.max_batch_rows if plan.mode == "incremental" else None
    with source.session(f"totes-ingest-{plan.table}", doing) as session:
        conn = session.conn
        inspected = reader.inspect(conn, plan)
        decision = decide_schema(plan, inspected, lake)
        reader.begin(conn)
        job = Job(plan, inspected.schema, low, pool, block, cutoff_bound(inspected), decision)
        with reader.batches(conn, plan, inspected, job, doing) as read:
            stream = iter(read)
            while True:
                with lake.staging_file() as staged:
                    try:
                        written = write_batches(stream, staged, job, max_rows=limit)
                    except OSError as exc:  # the local disk (a full /tmp), not the database
                        raise StorageUnavailable(
                            f"writing the staging file of {plan.table}: {exc}") from exc
                    if written is None:
                        break
                    key = lake.next_key(plan.table, _key_moment(written.high, inspected.moment))
                    check_lease()  # no other run may have taken the table meanwhile
                    size = lake.publish(staged, key)
                landed.append(_Landed(key, size, written))
                if len(landed) > 1:
                    log.info("%s: batch %d published (%d rows, through %s)", plan.table,
                             len(landed), written.rows, written.high)
                if limit is None or written.rows < limit:
                    break  # the stream is read to its end
                job = replace(job, low=written.high)
        conn.run("COMMIT")
    if not landed:
        return _Batch(inspected, decision=decision)
    return _Batch(inspected, landed[-1].key, sum(b.bytes for b in landed), landed[-1].written.high,
                  [b.written for b in landed], decision=decision, keys=[b.key for b in landed])


def _extract_partitioned(plan: TablePlan, source: SourceDatabase, lake: Lake,
                         low: Optional[Watermark], pool: pa.MemoryPool, block: int) -> _Batch:
    """One attempt of a partitioned extract: the parts in parallel (in one exported snapshot
    where the engine shares them), each published under ``<table>/_parts/<batch>/``, then the
    commit file, last."""
    doing = f"extracting table {plan.table} from the {source.describe()}"
    reader = reader_for(source)
    with source.session(f"totes-ingest-{plan.table}", doing) as session:
        conn = session.conn
        inspected = reader.inspect(conn, plan)
        decision = decide_schema(plan, inspected, lake)
        reader.begin(conn)
        snapshot = reader.export_snapshot(conn, plan.table) if reader.shares_snapshots \
            else None
        parts = reader.partitions(conn, plan, inspected.schema)
        if snapshot is None:
            conn.run("COMMIT")  # the bounds are read; each part takes its own snapshot
        batch_id = uuid.uuid4().hex[:12]
        workers_count = min(len(parts), PARTITION_WORKERS)
        # The parts read at once share one extract's memory: each gets a share of the block.
        job = Job(plan, inspected.schema, low, pool, max(block // workers_count, 1 << 20),
                  cutoff_bound(inspected), decision)
        with ThreadPoolExecutor(max_workers=workers_count) as workers:
            futures = [workers.submit(_extract_part, plan, source, lake, job, inspected,
                                      snapshot, part, batch_id) for part in parts]
        done = [future.result() for future in futures]  # the first failure raises
        if snapshot is not None:
            conn.run("COMMIT")  # the snapshot was needed until every part had read it
    landed = [(part, written, key) for part, written, key in done if written is not None]
    if not landed:
        return _Batch(inspected, decision=decision)
    high = _combined_high(plan, low, [written.high for _, written, _ in landed])
    listed = [{"key": key, "rows": written.rows, "lower": part.lower, "upper": part.upper}
              for part, written, key in landed]
    key = _publish_commit(lake, plan, decision.lake_schema if decision else inspected.schema,
                          high, low, listed, inspected.moment,
                          decision.record if decision else None)
    return _Batch(inspected, key, sum(lake.metadata(k).serialized_size for _, _, k in landed),
                  high, [w for _, w, _ in landed], listed, decision)


def _combined_high(plan: TablePlan, low: Optional[Watermark],
                   highs: list[Optional[Watermark]]) -> Optional[Watermark]:
    """The batch's high watermark from its parts': the greatest (each part is read in
    watermark order; a full snapshot's parts keep their greatest), or, for a backfill, the
    watermark it found."""
    if plan.mode == "backfill":
        return low
    return highest(highs)


def _publish_commit(lake: Lake, plan: TablePlan, schema: pa.Schema, high: Optional[Watermark],
                    low: Optional[Watermark], listed: list[dict], moment: datetime,
                    record: Optional[SchemaRecord] = None) -> str:
    """Create a partitioned batch's commit file (no rows; the watermarks, the ``listed``
    parts and the schema ``record`` in its footer), which makes the batch visible; returns
    its key (named after ``high``'s moment, else ``moment``)."""
    with lake.staging_file() as staged:
        with storage_call(f"writing the staged commit file of {plan.table}"), \
                parquet_writer(staged, schema) as commit:
            commit.add_key_value_metadata(footer_metadata(
                high, low, plan.mode, plan.backfill_range(), parts=listed)
                | (schema_footer(record) if record is not None else {}))
        key = lake.next_key(plan.table, _key_moment(high, moment))
        check_lease()  # the commit makes the batch visible: only while the lease is ours
        lake.publish(staged, key)
    return key


def _extract_part(plan: TablePlan, source: SourceDatabase, lake: Lake, job: Job,
                  inspected: Inspected, snapshot: Optional[str], part: Partition,
                  batch_id: str):
    """One part, in the exported ``snapshot`` (None: a snapshot of its own, bounded by the
    batch's cutoff): ``(part, written, key)``, written and key None when the part holds no
    row."""
    doing = f"extracting {part.name} of table {plan.table} from the {source.describe()}"
    key = _part_key(plan, batch_id, part)
    with source.session(f"totes-ingest-{plan.table}-{part.index + 1}", doing) as session:
        written = _land_part(reader_for(source), session.conn, lake, plan, inspected, job,
                             part, key, doing, snapshot)
    return part, written, key if written is not None else None


def _part_key(plan: TablePlan, batch_id: str, part: Partition) -> str:
    """``<table>/_parts/<batch>/part-00001-of-00004.parquet``."""
    return f"{plan.table}/_parts/{batch_id}/{part.name}.parquet"


def _land_part(reader, conn, lake: Lake, plan: TablePlan, inspected: Inspected, job: Job,
               part: Partition, key: str, doing: str,
               snapshot: Optional[str] = None) -> Optional[Written]:
    """Read ``part`` in a snapshot (the exported ``snapshot``, or one of its own) into the
    part file ``key``; None, and no file, when it holds no row. A part another attempt
    published first under the same key is that attempt's file."""
    reader.begin(conn, snapshot)
    with lake.staging_file() as staged:
        written = read_into(reader, conn, plan, inspected, job, staged, doing, part)
        conn.run("COMMIT")
        if written is None:
            return None
        try:
            lake.publish(staged, key)
        except LakeError:
            if not lake.exists(key):
                raise
    return written


# ---- a partitioned batch read by separate workers (the state machine) -----------------------
class PartResult(BaseModel):
    """One part of a distributed batch, as its worker returns it: ``{"key": "<table>/_parts/
    <batch>/part-00001-of-00004.parquet" | null, "rows": 500000, "row_groups": 8,
    "high_watermark": {...} | null, "lower": null, "upper": "500001"}``."""

    key: Optional[str]
    rows: int
    row_groups: int = 0
    high_watermark: Optional[Watermark] = None
    lower: Optional[str] = None
    upper: Optional[str] = None


def plan_distributed(reader, conn, lake: Lake, plan: TablePlan) -> TablePlan:
    """``plan`` with the settings every part of its batch shares: one cutoff, the lake's
    watermark, the partitions, a batch id (:class:`~totes.contracts.config.DistributedBatch`).

    Raises:
        SourceSchemaError / ConfigError: as the reader's ``inspect`` and
            :func:`~totes.contracts.partitions.partitions_of`.
    """
    inspected = reader.inspect(conn, plan)
    low = read_high_watermark(lake, plan.table) if plan.mode in ("incremental", "backfill") \
        else None
    parts = reader.partitions(conn, plan, inspected.schema)
    return plan.model_copy(update={"distributed": DistributedBatch(
        batch_id=uuid.uuid4().hex[:12], cutoff=inspected.cutoff,
        moment=inspected.moment.isoformat(), low_watermark=low.model_dump() if low else None,
        parts=[{"index": p.index, "count": p.count, "lower": p.lower, "upper": p.upper}
               for p in parts])})


def extract_part(plan: TablePlan, spec: dict, source: SourceDatabase, lake: Lake) -> PartResult:
    """Extract one part of a distributed batch into ``<table>/_parts/<batch>/``. A part
    that a previous attempt already published is not read again: its file is the part.

    Raises:
        as :func:`ingest_table`.
    """
    shared = plan.shared()
    part = Partition(spec["index"], spec["count"], spec["lower"], spec["upper"])
    key = _part_key(plan, shared.batch_id, part)
    if lake.exists(key):
        return _part_result(lake, key, part)
    low = Watermark.model_validate(shared.low_watermark) if shared.low_watermark else None
    doing = f"extracting {part.name} of table {plan.table} from the {source.describe()}"
    reader = reader_for(source)
    with source.session(f"totes-ingest-{plan.table}-{part.index + 1}", doing) as session:
        conn = session.conn
        inspected = reader.inspect(conn, plan)
        job = Job(plan, inspected.schema, low, measuring_pool(), plan.record_batch_bytes,
                  cutoff_bound(inspected), decide_schema(plan, inspected, lake))
        written = _land_part(reader, conn, lake, plan, inspected, job, part, key, doing)
    if written is None:
        return PartResult(key=None, rows=0, lower=part.lower, upper=part.upper)
    return _part_result(lake, key, part)


def _part_result(lake: Lake, key: str, part: Partition) -> PartResult:
    meta = lake.metadata(key)
    return PartResult(key=key, rows=meta.num_rows, row_groups=meta.num_row_groups,
                      high_watermark=read_footer(lake, key).high, lower=part.lower,
                      upper=part.upper)


def commit_parts(plan: TablePlan, parts: list[PartResult], lake: Lake,
                 ledger: Optional[Ledger] = None,
                 source: Optional[SourceDatabase] = None) -> IngestResult:
    """Commit a distributed batch once its parts have landed: the commit file, created last,
    makes it visible. Under the table's lease, and only if the lake's watermark is still the
    one the parts started from: when another run committed a batch of the table meanwhile,
    this one is skipped (its parts stay invisible), so no version lands twice. With the
    ``source``, a table due to look for its hard deletes does so after the commit.

    Raises:
        LakeError / StorageUnavailable: the lake could not be written.
    """
    run_id = plan.run_id or new_run_id()

    def skipped(holder) -> IngestResult:
        return skipped_result(plan, run_id, skip_reason(holder))

    return tracked(ledger, "ingest", plan.table, run_id, plan.mode,
                   lambda: with_detected_deletes(
                       plan, source, lake, ledger,
                       commit_landed_parts(plan, parts, lake, run_id)), skipped,
                   ingest_ledger_summary)


def commit_landed_parts(plan: TablePlan, parts: list[PartResult], lake: Lake,
                        run_id: str) -> IngestResult:
    """:func:`commit_parts`' work, for a caller that already holds the table's lease (a Spark
    job: :mod:`totes.ingest.spark_extract`)."""
    shared = plan.shared()
    low = Watermark.model_validate(shared.low_watermark) if shared.low_watermark else None
    started = time.monotonic()
    if plan.mode in ("incremental", "backfill") and \
            read_high_watermark(lake, plan.table) != low:
        return skipped_result(plan, run_id, "another run committed a batch of the table "
                              "since its parts were read")
    landed = [(p.key, p) for p in parts if p.key]
    key, high = None, None
    listed = [{"key": k, "rows": p.rows, "lower": p.lower, "upper": p.upper}
              for k, p in landed]
    record = None
    if landed:
        high = _combined_high(plan, low, [p.high_watermark for _, p in landed])
        schema = lake.metadata(landed[0][0]).schema.to_arrow_schema()
        record = read_footer(lake, landed[0][0]).source_schema  # every part decided alike
        key = _publish_commit(lake, plan, schema, high, low, listed,
                              datetime.fromisoformat(shared.moment), record)
    return IngestResult(
        table=plan.table, mode=plan.mode, key=key, rows=sum(p.rows for _, p in landed),
        row_groups=sum(p.row_groups for _, p in landed),
        bytes=sum(lake.metadata(k).serialized_size for k, _ in landed),
        low_watermark=low if plan.mode == "incremental" else None,
        high_watermark=high if key else (low if plan.mode in ("incremental", "backfill")
                                         else None),
        range=plan.backfill_range(), parts=listed or None, cutoff=shared.cutoff,
        run_id=run_id, seconds=round(time.monotonic() - started, 3), peak_arrow_bytes=0,
        schema_version=record.version if key and record else None,
        schema_changes=[c.model_dump() for c in record.changes] or None
        if key and record else None)


def skipped_result(plan: TablePlan, run_id: str, reason: str) -> IngestResult:
    """The result of an ingest of ``plan.table`` that did not run (``reason`` says why)."""
    log.warning("%s: skipped, %s", plan.table, reason)
    return IngestResult(table=plan.table, mode=plan.mode, key=None, rows=0, row_groups=0,
                        bytes=0, low_watermark=None, high_watermark=None, cutoff="",
                        skipped=reason, run_id=run_id, seconds=0.0, peak_arrow_bytes=0)
