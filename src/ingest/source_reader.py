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


def reader_for(database):
    """The reader of ``database`` (a :class:`totes.utils.db.Database` or a
    :class:`totes.utils.mysql.MySQLDatabase`), by its ``engine``."""
    if getattr(database, "engine", "postgresql") == "mysql":
        from totes.ingest.mysql_reader import MySQLReader

        return MySQLReader()
    from totes.ingest.postgres_reader import PostgresReader

    return PostgresReader()
