"""Pending work: what transform and load have left to do, whatever this execution ingested.

* **Transform** has work when the lake holds files after the ones the newest committed batch
  took (of any table), or when no batch was ever committed and the lake holds a file.
* **Load** has work when a committed batch is not in the warehouse's ``totes.loaded_batch``
  (only the manifests after ``totes.load_state.loaded_through`` are listed), or when the lake
  holds a batch of a raw-layer table after its ``totes.raw_table.loaded_through``
  (:mod:`totes.load.raw`; a table no rule reads gives transform nothing to do).

So a transform or a load that failed on Friday night is completed by the next execution,
even when the source has nothing new; an execution with nothing new and nothing pending
starts neither.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

from totes.contracts.config import TablePlan
from totes.contracts.source_tables import SOURCE_TABLES
from totes.rules.facts import FACT_SOURCES
from totes.utils.lake import Lake
from totes.utils.manifests import latest_manifest, manifests_after
from totes.utils.postgres import Database
from totes.utils.settings import bookkeeping


class SparkWork(BaseModel):
    """The Glue job run that transforms and loads on Spark, when a fact source table whose
    ``job_type`` is ``glue`` has lake files no batch has taken::

        {"tables": ["sales_order"], "worker_type": "G.2X", "worker_no": 4}

    ``tables``: those tables (their facts are built and staged by Spark tasks; the other
    tables' rows go through the job's driver as through the Lambdas); ``worker_type`` and
    ``worker_no``: the largest of their settings."""

    tables: list[str]
    worker_type: str
    worker_no: int


#: Glue's worker types, smallest first.
_WORKER_SIZES = ("G.1X", "G.2X", "G.4X", "G.8X")


def spark_work(lake: Lake, processed: Lake, plans: list[TablePlan]) -> Optional[SparkWork]:
    """The Spark job's work (:class:`SparkWork`), or None when no ``glue`` fact source table
    has a lake file to transform (transform and load then run on the Lambdas).

    Raises:
        LakeError / StorageUnavailable: the lake or processed area could not be read.
    """
    glue = [p for p in plans if p.job_type == "glue" and p.table in FACT_SOURCES]
    waiting = [p for p in glue if untransformed_files(lake, processed, [p.table])]
    if not waiting:
        return None
    return SparkWork(tables=[p.table for p in waiting],
                     worker_type=max((p.worker_type for p in waiting), key=_WORKER_SIZES.index),
                     worker_no=max(p.worker_no for p in waiting))


class PendingWork(BaseModel):
    """``{"lake_files": 3, "batches": 1, "raw_batches": 0, "transform": true, "load":
    true}``: lake files no batch has taken, committed batches not loaded, lake batches the
    raw layer has not loaded, and whether each stage must run (load must also run after a
    transform that commits a batch)."""

    lake_files: int
    batches: int
    raw_batches: int = 0
    transform: bool
    load: bool


class PendingResult(PendingWork):
    """The pending step's output: :class:`PendingWork`, and how the Map's tables fared::

        {"transform": true, "load": true, "lake_files": 3, "batches": 0,
         "failed_tables": [{"table": "design", "error_type": "...", "error_message": "..."}],
         "skipped_tables": [{"table": "staff", "reason": "leased by run-…"}],
         "warnings": ["replication slot totes retains 1.2 GB of WAL, ..."]}

    ``warnings``: what an item reported without failing (the replication slot's retained
    WAL past its limit): the state machine sends one alert for them and goes on.
    ``spark``: the Glue job run that transforms and loads this time (:class:`SparkWork`), or
    None for the Lambdas.
    """

    spark: Optional[SparkWork] = None
    failed_tables: list[dict] = []
    skipped_tables: list[dict] = []
    warnings: list[str] = []


def untransformed_files(lake: Lake, processed: Lake, tables=None) -> int:
    """How many lake files (of ``tables``, default the registry's) no batch has taken."""
    _, manifest = latest_manifest(processed)
    taken = manifest.lake if manifest else {}
    return sum(len(lake.keys_after(t, taken.get(t))) for t in (tables or SOURCE_TABLES))


def unloaded_batches(processed: Lake, warehouse: Database) -> int:
    """How many committed batches the warehouse has not loaded."""
    with warehouse.session("totes-pending", f"reading the {warehouse.describe()}") as session:
        conn = session.conn
        (exists,), = conn.run(f"SELECT to_regclass('{bookkeeping()}.load_state') IS NOT NULL")
        if not exists:
            return len(manifests_after(processed, None))
        (through,), = conn.run(
            f"SELECT loaded_through FROM {bookkeeping()}.load_state")  # nosec B608
        listed = manifests_after(processed, through)
        if not listed:
            return 0
        (loaded,), = conn.run(
            f"SELECT count(*) FROM {bookkeeping()}.loaded_batch "  # nosec B608
            "WHERE manifest_key = ANY(CAST(:keys AS text[]))", keys=listed)
        return len(listed) - loaded


def unloaded_raw(lake: Lake, warehouse: Database, raw_tables: list[TablePlan]) -> int:
    """How many lake batches of ``raw_tables`` the raw layer has not loaded."""
    from totes.load.raw import unloaded_raw_batches

    with warehouse.session("totes-pending", f"reading the {warehouse.describe()}") as session:
        return unloaded_raw_batches(session.conn, lake, raw_tables)


def pending_work(lake: Lake, processed: Lake, warehouse: Database,
                 raw_tables: Optional[list[TablePlan]] = None) -> PendingWork:
    """What transform and load have left to do (see the module docstring); ``raw_tables``:
    the raw layer's (:func:`totes.contracts.config.raw_tables`).

    Raises:
        LakeError / StorageUnavailable: the lake or processed area could not be read.
        DatabaseUnavailable: the warehouse could not be reached (retry).
    """
    files = untransformed_files(lake, processed)
    batches = unloaded_batches(processed, warehouse)
    raw_batches = unloaded_raw(lake, warehouse, raw_tables) if raw_tables else 0
    return PendingWork(lake_files=files, batches=batches, raw_batches=raw_batches,
                       transform=files > 0, load=files > 0 or batches > 0 or raw_batches > 0)
