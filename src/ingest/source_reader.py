"""The source reader of a database: what ingest asks of a source engine, whatever it is.

A reader (:class:`totes.ingest.postgres_reader.PostgresReader`,
:class:`totes.ingest.mysql_reader.MySQLReader`) has:

* ``check_table(conn, table, primary_key, watermark_column)``: the table's columns, or
  ``SourceSchemaError`` / ``PermissionDenied`` naming what is wrong;
* ``index_advice(conn, table, watermark_column, primary_key)``: a warning when a large table
  has no index serving its watermark, else None;
* ``inspect(conn, plan)``: the Arrow schema and the in-flight cutoff
  (:class:`totes.ingest.batch_writer.Inspected`), before the snapshot is taken;
* ``begin(conn, snapshot=None)``: start the extract's read-only, repeatable-read snapshot;
* ``shares_snapshots`` and ``export_snapshot(conn, table)``: whether the parts of a
  partitioned batch can join one snapshot (PostgreSQL) or each take their own, all bounded by
  the same cutoff (MySQL);
* ``partitions(conn, plan, schema)``: the table's partitions
  (:mod:`totes.ingest.partitions`);
* ``batches(conn, plan, inspected, job, doing, part=None)``: a context manager giving this
  run's rows (of one part) as Arrow record batches, to be read to the end (reconciliation
  reads a table this way);
* ``read(conn, plan, inspected, job, staged, doing, part=None)``: the same rows into a
  Parquet file (:func:`totes.ingest.batch_writer.write_batches`).

The SQL of each engine stays in its reader; the modes, the watermarks, the lake and the
ledger (:mod:`totes.ingest.extract`) are the same for every engine.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Iterator, Optional, Sequence

import pyarrow as pa

from totes.ingest.batch_writer import Inspected, Job, Written, write_batches
from totes.ingest.partitions import Partition
from totes.utils.config import TablePlan
from totes.utils.errors import StorageUnavailable


class SourceReader(ABC):
    """What ingest asks of a source engine (the module docstring lists it); ``read`` is the
    same for every engine, on top of ``batches``."""

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

    def read(self, conn, plan: TablePlan, inspected: Inspected, job: Job, staged: str,
             doing: str, part: Optional[Partition] = None) -> Optional[Written]:
        """This run's rows (of ``part``) into the Parquet file ``staged``, the watermarks in
        its footer (:func:`totes.ingest.batch_writer.write_batches`); None, and no file, when
        there is none.

        Raises:
            DataError: a value could not be read as its column's type.
            StorageUnavailable: the staging file could not be written (a full disk).
            the engine's errors, as its ``batches`` raises them.
        """
        with self.batches(conn, plan, inspected, job, doing, part) as batches:
            try:
                return write_batches(batches, staged, job)
            except OSError as exc:  # the local disk (a full /tmp), not the database
                raise StorageUnavailable(f"writing the staging file of {plan.table}: {exc}") \
                    from exc


def reader_for(database) -> SourceReader:
    """The reader of ``database`` (a :class:`totes.utils.db.Database` or a
    :class:`totes.utils.mysql.MySQLDatabase`), by its ``engine``."""
    if getattr(database, "engine", "postgresql") == "mysql":
        from totes.ingest.mysql_reader import MySQLReader

        return MySQLReader()
    from totes.ingest.postgres_reader import PostgresReader

    return PostgresReader()
