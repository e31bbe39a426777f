"""Load on Spark (for the tables whose ``job_type`` is ``glue``, and ``totes load --engine
spark``): the same warehouse as the Lambda path, the rows of each of their fact files copied
into the warehouse by Spark tasks in parallel.

A load is one warehouse transaction over every pending batch (keys declared and validated,
a reload a no-op): the driver does what the Lambda does (:func:`totes.load.warehouse.load`:
the load lock and lease, the pending batches, the dimensions, the merge, the held rows, the
ledger record), except that a file of such a fact is staged first (:func:`stager`):

1. the driver creates an unlogged staging table for the file,
   ``<bookkeeping>_stage.spark_stage_<fact>_<id>`` (``totes_stage`` by default: a schema of
   its own, since the load's transaction may be creating the bookkeeping schema; one table per
   file, since the load's transaction holds the ones it read until it commits; the fact's
   columns, widened for the file, plus :data:`~totes.load.warehouse.ORDINAL`, each row's
   position in the file), committed at once so that the tasks see it;
2. the file is split into contiguous row ranges (:func:`totes.utils.spark.row_ranges`), one
   per Spark task, at least two when there are two rows; each task copies its range with a
   binary ``COPY`` over its own connection, in one transaction that first deletes the
   range's positions (so that an attempt Spark retries after one that committed stages each
   row once);
3. the load's transaction takes the rows from there in the file's order (so the fact's
   serial keys are the Lambda path's) and drops the table
   (:func:`totes.load.warehouse.merge_file`).

The staging tables are written only while the driver holds the load lock (in its
transaction), so two loads never share one; a load that fails leaves them, and the next Spark
load drops them before it stages its first file. The driver checks that the tasks staged as
many rows as the file holds. Executors find the warehouse by reference
(:class:`~totes.utils.spark.DatabaseRef`: in AWS a secret id, so that no password travels in
a task's closure).
"""
from __future__ import annotations

import logging
import uuid
from typing import Optional

import pyarrow as pa

from totes.contracts.config import TablePlan
from totes.contracts.errors import LakeError
from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.stage_results import LoadResult
from totes.contracts.star_schema import WarehouseTable
from totes.rules.facts import FACT_SOURCES
from totes.load.warehouse import (COPY_BATCH_ROWS, ORDINAL, Stager, StagedRows,
                                  complete_batch, create_schema, load)
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger
from totes.utils.postgres_copy import copy_binary_into
from totes.utils import settings
from totes.utils.spark import DatabaseRef, RowRange, read_range, row_ranges, run_tasks

log = logging.getLogger(__name__)


def staged_schema(table: WarehouseTable) -> pa.Schema:
    """The staging table's columns: the fact's, then :data:`ORDINAL` (int64)."""
    return table.arrow_schema().append(pa.field(ORDINAL, pa.int64(), nullable=False))


def _stage_part(ranges: list[RowRange], table: WarehouseTable, relation: tuple[str, str],
                processed_uri: str, warehouse: DatabaseRef) -> tuple:
    """One Spark task: copy the rows of ``ranges`` of a processed fact file into the staging
    table ``relation`` (``(schema, name)``), each with its position. Returns ``("ok", rows)``
    or ``("error", exception)`` (raised by the driver as itself)."""
    try:
        processed = Lake(processed_uri)
        present = processed.metadata(ranges[0].file).schema.to_arrow_schema().names
        missing = [c for c in table.columns if c.name not in present]
        wanted = [c for c in table.column_names if c in present]

        def batches():
            for piece in ranges:
                position = piece.offset
                for batch in read_range(processed, piece, wanted).to_batches(COPY_BATCH_ROWS):
                    batch = complete_batch(batch, table, missing)
                    ordinal = pa.array(range(position, position + batch.num_rows), pa.int64())
                    position += batch.num_rows
                    yield batch.append_column(ORDINAL, ordinal)

        first = ranges[0].offset
        end = ranges[-1].offset + ranges[-1].stop - ranges[-1].start
        database = warehouse.database()
        with database.session("totes-spark-load", f"staging {table.name} rows in the "
                              f"{database.describe()}") as session:
            # One transaction: an attempt Spark retries replaces the rows of one that
            # committed, so that each row is staged once.
            session.conn.run("START TRANSACTION")
            # Two attempts of one task at once (a lost executor still running): the second
            # waits for the first's commit, then replaces its rows.
            session.conn.run("SELECT pg_advisory_xact_lock(hashtext(:t), :first)",
                             t=qualified(*relation), first=first)
            session.conn.run(f"DELETE FROM {qualified(*relation)} WHERE {ORDINAL} >= :first "
                             f"AND {ORDINAL} < :end", first=first, end=end)  # nosec B608
            rows = copy_binary_into(session.conn, relation[1], staged_schema(table),
                                    batches(), in_schema=relation[0])
            session.conn.run("COMMIT")
        return "ok", rows
    except Exception as exc:  # handed to the driver, which raises it
        return "error", exc


#: The staging tables' name prefix (``spark_stage_<fact>_<file>``).
STAGE_PREFIX = "spark_stage_"


def staging_schema() -> str:
    """The schema of the staging tables: ``<bookkeeping>_stage`` (``totes_stage``)."""
    return f"{settings.current().bookkeeping_schema}_stage"


def create_staging_table(warehouse: DatabaseRef, table: WarehouseTable,
                         sweep: bool = False) -> tuple[str, str]:
    """Create the unlogged staging table of one file of ``table`` (the fact as widened for the
    file), named after the fact and a new id, in its own committed transaction; returns its
    (schema, name). With ``sweep``, first drop the staging tables a failed load left (called
    while the load holds the load lock: no other load has one in use).

    Raises:
        PermissionDenied: the role may not create the staging schema (the grant that helps).
        DatabaseUnavailable / TerminalError: the warehouse could not be reached, or refused.
    """
    schema = staging_schema()
    name = f"{STAGE_PREFIX}{table.name}_{uuid.uuid4().hex[:12]}"
    relation = qualified(schema, name)
    columns = ", ".join(f"{quote_ident(c.name)} {c.sql_type}" for c in table.columns)
    database = warehouse.database()
    with database.session("totes-spark-load", f"creating the staging table {relation} in "
                          f"the {database.describe()}") as session:
        create_schema(session.conn, schema)
        if sweep:
            for left, in session.conn.run(
                    "SELECT tablename FROM pg_tables WHERE schemaname = :s "
                    "AND starts_with(tablename, :p)", s=schema, p=STAGE_PREFIX):
                session.conn.run(f"DROP TABLE IF EXISTS {qualified(schema, left)}")
        session.conn.run(f"CREATE UNLOGGED TABLE {relation} ({columns}, "
                         f"{ORDINAL} bigint NOT NULL)")
    return schema, name


def stager(spark, processed_uri: str, warehouse: DatabaseRef,
           tasks: Optional[int] = None, tables: Optional[set[str]] = None) -> Stager:
    """The Spark engine's :data:`~totes.load.warehouse.Stager`: stages a file of the fact of
    one of the source ``tables`` (default: every fact) as the module docstring says
    (``tasks`` per file; default the session's parallelism, at least 2) and returns the
    staged rows; None for another fact (the load's transaction copies it, as the Lambda's).

    Raises (from the stager):
        DatabaseUnavailable / DatabaseRejected: the warehouse could not be reached.
        SparkJobFailed: Spark itself failed; a task's own error as itself.
    """
    count = max(2, tasks or spark.sparkContext.defaultParallelism)
    processed = Lake(processed_uri)

    on_spark = None if tables is None else \
        {fact for source, (fact, _) in FACT_SOURCES.items() if source in tables}

    swept: list[str] = []

    def stage(table: WarehouseTable, key: str) -> Optional[StagedRows]:
        if on_spark is not None and table.name not in on_spark:
            return None
        schema, name = create_staging_table(warehouse, table, sweep=not swept)
        swept.append(name)
        relation = qualified(schema, name)
        ranges = row_ranges(processed, [key], count)
        log.info("%s: %d Spark tasks staging %s", table.name, len(ranges), key)
        staged = sum(run_tasks(spark, lambda chunk: _stage_part(chunk, table, (schema, name),
                                                                processed_uri, warehouse),
                               ranges, f"staging {key} into {relation}"))
        expected = processed.metadata(key).num_rows
        if staged != expected:
            raise LakeError(f"staging {processed.describe(key)} into {relation} copied "
                            f"{staged:,} rows where the file holds {expected:,}")
        return StagedRows(relation=relation, rows=staged)

    return stage


def load_on_spark(spark, processed_uri: str, warehouse: DatabaseRef,
                  ledger: Optional[Ledger] = None, run_id: Optional[str] = None,
                  lake_uri: Optional[str] = None,
                  raw_tables: Optional[list[TablePlan]] = None,
                  tasks: Optional[int] = None,
                  tables: Optional[set[str]] = None) -> LoadResult:
    """Load every pending batch as :func:`totes.load.warehouse.load` does, the files of the
    facts of the source ``tables`` (default: every fact) staged by Spark tasks (the module
    docstring); returns the result the Lambda path returns.

    Raises:
        as :func:`totes.load.warehouse.load`; SparkJobFailed when Spark itself failed.
    """
    return load(Lake(processed_uri), warehouse.database(), ledger=ledger, run_id=run_id,
                lake=Lake(lake_uri) if lake_uri and raw_tables else None,
                raw_tables=raw_tables,
                stage=stager(spark, processed_uri, warehouse, tasks, tables))
