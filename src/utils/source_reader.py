"""The source reader of a database: what ingest (and reconciliation) ask of a source engine,
whatever it is.

A reader (:class:`totes.utils.postgres_reader.PostgresReader`,
:class:`totes.utils.mysql_reader.MySQLReader`) has:

* ``check_table(conn, table, primary_key, watermark_column)``: the table's columns, or
  ``SourceSchemaError`` / ``PermissionDenied`` naming what is wrong;
* ``index_advice(conn, table, watermark_column, primary_key)``: a warning when a large table
  has no index serving its watermark, else None;
* ``inspect(conn, plan)``: the Arrow schema and the in-flight cutoff (:class:`Inspected`),
  before the snapshot is taken;
* ``begin(conn, snapshot=None)``: start the extract's read-only, repeatable-read snapshot;
* ``shares_snapshots`` and ``export_snapshot(conn, table)``: whether the parts of a
  partitioned batch can join one snapshot (PostgreSQL) or each take their own, all bounded by
  the same cutoff (MySQL);
* ``partitions(conn, plan, schema)``: the table's partitions
  (:mod:`totes.contracts.partitions`);
* ``batches(conn, plan, inspected, job, doing, part=None, keys=None)``: a context manager
  giving this run's rows (of one part; of some keys) as Arrow record batches, to be read to
  the end;
* ``key_after(conn, table, primary_key, start, rows)``: where a bounded reconciliation's
  range of ids ends on the source's side.

The SQL of each engine stays in its reader; the modes, the watermarks, the lake and the
ledger (:mod:`totes.ingest.extract`) are the same for every engine.
"""
from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Optional, Sequence

import pyarrow as pa

from totes.contracts.config import TablePlan
from totes.contracts.partitions import Partition
from totes.contracts.source_schema import SchemaDecision, SourceColumn
from totes.contracts.stage_results import HeldBackBy
from totes.contracts.watermark import Watermark

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
    extract's moment, UTC), and the backfill bounds checked against the column's type;
    ``columns``, the source's columns with their source types and nullability (what the
    batch's schema record keeps, :mod:`totes.contracts.source_schema`)."""

    schema: pa.Schema
    watermark_cast: Optional[str]  # "timestamp", "timestamptz", "bigint" or None
    cutoff: str
    moment: datetime
    held_back_by: Optional[HeldBackBy]
    columns: tuple[SourceColumn, ...] = ()


@dataclass(frozen=True)
class Job:
    """One extract attempt's settings: the plan, the lake file's schema, where it starts,
    the memory pool it allocates from, the record batch size in bytes, and the cutoff below
    which a full snapshot's greatest watermark is taken; ``contract``, what the table's schema
    contract decided for the batch (the lake's schema, the casts, the footer's record; None:
    the batch is written in ``schema`` as read, without a record)."""

    plan: TablePlan
    schema: pa.Schema
    low: Optional[Watermark]
    pool: pa.MemoryPool
    block_bytes: int
    cutoff: Optional[datetime]
    contract: Optional[SchemaDecision] = None


class SourceReader(ABC):
    """What ingest asks of a source engine (the module docstring lists it)."""

    engine: str
    shares_snapshots: bool

    @abstractmethod
    def check_table(self, conn, table: str, primary_key: str,
                    watermark_column: Optional[str]) -> list: ...

    @abstractmethod
    def index_advice(self, conn, table: str, watermark_column: str,
                     primary_key: str) -> Optional[str]: ...

    @abstractmethod
    def inspect(self, conn, plan: TablePlan) -> Inspected: ...

    @abstractmethod
    def begin(self, conn, snapshot: Optional[str] = None) -> None: ...

    @abstractmethod
    def export_snapshot(self, conn, table: str) -> Optional[str]: ...

    @abstractmethod
    def partitions(self, conn, plan: TablePlan, schema: pa.Schema) -> list[Partition]: ...

    @abstractmethod
    def batches(self, conn, plan: TablePlan, inspected: Inspected, job: Job, doing: str,
                part: Optional[Partition] = None, keys: Optional[Sequence[int]] = None
                ) -> contextlib.AbstractContextManager[Iterator[pa.RecordBatch]]:
        """This run's rows (of ``part``; with ``keys``, only the rows whose primary key is
        one of them) as record batches of ``job.schema``, in the transaction :meth:`begin`
        started; the caller reads them to the end."""

    @abstractmethod
    def primary_keys(self, conn, table: str, primary_key: str, doing: str
                     ) -> contextlib.AbstractContextManager[Iterator[pa.Array]]:
        """Every value of ``table``'s integer ``primary_key`` (int64 arrays, in key order: one
        scan of the key's index), in the transaction :meth:`begin` started; the caller reads
        them to the end. What delete detection compares with the lake's key index."""

    @abstractmethod
    def key_after(self, conn, table: str, primary_key: str, start: Optional[int],
                  rows: int) -> Optional[int]:
        """The value of ``table``'s integer ``primary_key`` ``rows`` keys after ``start``
        (the first key at or after ``start`` is the 0th; None: from the first key), or None
        when fewer follow: one scan of the key's index, ``rows`` entries long."""


def reader_for(database) -> SourceReader:
    """The reader of ``database`` (a :class:`totes.utils.postgres.Database` or a
    :class:`totes.utils.mysql.MySQLDatabase`), by its ``engine``."""
    if getattr(database, "engine", "postgresql") == "mysql":
        from totes.utils.mysql_reader import MySQLReader

        return MySQLReader()
    from totes.utils.postgres_reader import PostgresReader

    return PostgresReader(database)
