"""Writing one extract's rows into a lake file, whatever the source engine: Arrow record
batches in, one Parquet row group per batch out, the watermarks in the footer
(:mod:`totes.contracts.watermark`).

A source reader (:mod:`totes.utils.source_reader`) turns its rows into record batches of the
file's schema; this module writes them (:func:`read_into`), computes the high watermark by
mode, and keeps a full snapshot's keys to count the rows that vanished.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from totes.contracts.config import TablePlan
from totes.contracts.errors import StorageUnavailable
from totes.contracts.partitions import Partition
from totes.contracts.watermark import Watermark, footer_metadata, greatest
from totes.utils.lake import parquet_writer
from totes.utils.source_reader import Inspected, Job, SourceReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """What a file of the batch holds: rows, row groups, its high watermark (as the footer
    keeps it) and, for a full snapshot, its keys (to count the rows that vanished)."""

    rows: int
    row_groups: int
    high: Optional[Watermark]
    ids: Optional[pa.Array] = None


def write_batches(batches: Iterable[pa.RecordBatch], staged: str, job: Job,
                  footer: Optional[dict[bytes, str]] = None,
                  max_rows: Optional[int] = None) -> Optional[Written]:
    """Write each non-empty record batch (of ``job.schema``) as one row group of the Parquet
    file ``staged``, the footer's watermarks by ``job.plan.mode`` (and ``footer``'s entries:
    an initial copy's ``totes.cdc`` and ``totes.mode``). With ``job.contract``, each batch is
    first put in the lake's schema (:meth:`~totes.contracts.source_schema.SchemaDecision.
    apply`) and the footer keeps the schema record. Returns None, and writes no file, when
    there is no row. Errors of ``batches`` propagate unchanged (the reader maps its own).

    With ``max_rows``, the file is finished once it holds that many rows or more (a whole
    record batch more at most) and the rest of ``batches`` (an iterator) is left for the
    next call, which starts after this file's high watermark (``job.low`` = its ``high``).

    Raises:
        SourceSchemaError: the schema contract stops the table on a value (``apply``).
    """
    plan, low, contract = job.plan, job.low, job.contract
    schema = contract.lake_schema if contract is not None else job.schema
    rows = row_groups = 0
    last, top, ids = None, None, []
    parquet: Optional[pq.ParquetWriter] = None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if contract is not None:  # the source's types → the lake's (the schema contract)
                batch = contract.apply(batch)
            if parquet is None:
                parquet = parquet_writer(staged, schema, memory_pool=job.pool)
            parquet.write_batch(batch)
            rows += batch.num_rows
            row_groups += 1
            if plan.mode in ("incremental", "reingest"):
                last = Watermark.of_last_readable_row(batch, plan.watermark(),
                                                      plan.primary_key) or last
            if plan.mode == "full":
                ids.append(batch.column(plan.primary_key))
                if plan.watermark_column:
                    top = greatest(_before(batch, plan.watermark_column, job.cutoff),
                                   plan.watermark_column, plan.primary_key, top)
            log.debug("%s: %d rows so far", plan.table, rows)
            if max_rows is not None and rows >= max_rows:
                break  # the rest goes to the next file
        if parquet is None:
            return None
        high = _high(plan, last, low, top)
        parquet.add_key_value_metadata(
            footer_metadata(high, low, plan.mode, plan.backfill_range()) | (footer or {})
            | (contract.footer() if contract is not None else {}))
    finally:
        if parquet is not None:
            parquet.close()
    kept = pa.chunked_array(ids, schema.field(plan.primary_key).type).combine_chunks() \
        if plan.mode == "full" else None
    return Written(rows, row_groups, high, kept)


def read_into(reader: SourceReader, conn, plan: TablePlan, inspected: Inspected, job: Job,
              staged: str, doing: str, part: Optional[Partition] = None,
              footer: Optional[dict[bytes, str]] = None) -> Optional[Written]:
    """This run's rows (of ``part``), read by ``reader``, into the Parquet file ``staged``,
    the watermarks (and ``footer``'s entries) in its footer (:func:`write_batches`); None,
    and no file, when there is none.

    Raises:
        DataError: a value could not be read as its column's type.
        StorageUnavailable: the staging file could not be written (a full disk).
        the engine's errors, as its ``batches`` raises them.
    """
    with reader.batches(conn, plan, inspected, job, doing, part) as batches:
        try:
            return write_batches(batches, staged, job, footer)
        except OSError as exc:  # the local disk (a full /tmp), not the database
            raise StorageUnavailable(f"writing the staging file of {plan.table}: {exc}") \
                from exc


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


def _high(plan: TablePlan, last: Optional[Watermark], low: Optional[Watermark],
          top: Optional[Watermark]) -> Optional[Watermark]:
    """The footer's high watermark: the table's incremental watermark after this batch (its
    last row whose watermark was read; the low one when none was)."""
    if plan.mode in ("incremental", "reingest"):
        return last or low
    if plan.mode == "backfill":
        return low  # a backfill never moves the incremental watermark
    return top
