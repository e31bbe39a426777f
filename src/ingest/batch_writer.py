"""Writing one extract's rows into a lake file, whatever the source engine: Arrow record
batches in, one Parquet row group per batch out, the watermarks in the footer
(:mod:`totes.utils.watermark`). Also what an extract learns before it reads
(:class:`Inspected`) and what it carries while it reads (:class:`Job`).

A source reader (:mod:`totes.ingest.postgres_reader`, :mod:`totes.ingest.mysql_reader`) turns
its rows into record batches of the file's schema; this module writes them, computes the
high watermark by mode, and keeps a full snapshot's keys to count the rows that vanished.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from totes.utils.config import TablePlan
from totes.utils.lake import parquet_writer
from totes.utils.stage_results import HeldBackBy
from totes.utils.watermark import Watermark, footer_metadata, greatest

log = logging.getLogger(__name__)

#: Every memory pool an extract measured its peak with. Arrow's buffers point at their pool
#: without owning it, and the garbage collector may free a buffer (held in a reference cycle,
#: say a traceback's frames) after the pool's Python object: a pool that died first would be
#: used after being freed, corrupting the heap (seen as crashes in unrelated code). So pools
#: are kept for the life of the process: a few hundred bytes per extract.
_POOLS: list[pa.MemoryPool] = []
_POOLS_LOCK = threading.Lock()


def measuring_pool() -> pa.MemoryPool:
    """A new proxy of the default memory pool, to measure one extract's peak; never freed."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    with _POOLS_LOCK:
        _POOLS.append(pool)
    return pool


@dataclass(frozen=True)
class Inspected:
    """What ingest learns of a table before it reads rows: the Arrow schema of its columns,
    the SQL type of its watermark, the cutoff that stops short of in-flight writes (and the
    extract's moment, UTC), and the backfill bounds checked against the column's type."""

    schema: pa.Schema
    watermark_cast: Optional[str]  # "timestamp", "timestamptz", "bigint" or None
    cutoff: str
    moment: datetime
    held_back_by: Optional[HeldBackBy]


@dataclass(frozen=True)
class Written:
    """What a file of the batch holds: rows, row groups, its high watermark (as the footer
    keeps it) and, for a full snapshot, its keys (to count the rows that vanished)."""

    rows: int
    row_groups: int
    high: Optional[Watermark]
    ids: Optional[pa.Array] = None


@dataclass(frozen=True)
class Job:
    """One extract attempt's settings: the plan, the lake file's schema, where it starts,
    the memory pool it allocates from, the record batch size in bytes, and the cutoff below
    which a full snapshot's greatest watermark is taken."""

    plan: TablePlan
    schema: pa.Schema
    low: Optional[Watermark]
    pool: pa.MemoryPool
    block_bytes: int
    cutoff: Optional[datetime]


def write_batches(batches: Iterable[pa.RecordBatch], staged: str, job: Job) -> Optional[Written]:
    """Write each non-empty record batch (of ``job.schema``) as one row group of the Parquet
    file ``staged``, the footer's watermarks by ``job.plan.mode``. Returns None, and writes
    no file, when there is no row. Errors of ``batches`` propagate unchanged (the reader maps
    its own)."""
    plan, schema, low = job.plan, job.schema, job.low
    rows = row_groups = 0
    last, top, ids = None, None, []
    parquet: Optional[pq.ParquetWriter] = None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if parquet is None:
                parquet = parquet_writer(staged, schema, memory_pool=job.pool)
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
        if parquet is None:
            return None
        high = _high(plan, last, low, top)
        parquet.add_key_value_metadata(footer_metadata(high, low, plan.mode, backfill_range(plan)))
    finally:
        if parquet is not None:
            parquet.close()
    kept = pa.chunked_array(ids, schema.field(plan.primary_key).type).combine_chunks() \
        if plan.mode == "full" else None
    return Written(rows, row_groups, high, kept)


def vanished(previous_ids: Optional[pa.Array], current: list[pa.Array]) -> Optional[int]:
    """How many keys of the previous full snapshot are not among ``current``'s (None when
    there was no previous snapshot)."""
    if previous_ids is None:
        return None
    if not len(previous_ids):
        return 0
    now = pa.concat_arrays([c.cast(previous_ids.type) for c in current]) if current else \
        pa.array([], previous_ids.type)
    return len(previous_ids) - pc.sum(pc.is_in(previous_ids, value_set=now)).as_py()


def cutoff_bound(inspected: Inspected) -> Optional[datetime]:
    """The cutoff as a datetime, for a timestamp watermark (None otherwise)."""
    if inspected.watermark_cast in ("timestamp", "timestamptz"):
        return datetime.fromisoformat(inspected.cutoff)
    return None


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


def backfill_range(plan: TablePlan) -> Optional[dict[str, str]]:
    """A backfill's ``{"from": ..., "to": ...}`` (None for other modes)."""
    if plan.mode != "backfill":
        return None
    return {"from": plan.backfill_from, "to": plan.backfill_to}
