"""Pending work: what transform and load have left to do, whatever this execution ingested.

* **Transform** has work when the lake holds files after the ones the newest committed batch
  took (of any table), or when no batch was ever committed and the lake holds a file.
* **Load** has work when a committed batch is not in the warehouse's ``totes.loaded_batch``
  (only the manifests after ``totes.load_state.loaded_through`` are listed).

So a transform or a load that failed on Friday night is completed by the next execution,
even when the source has nothing new; an execution with nothing new and nothing pending
starts neither.
"""
from __future__ import annotations

from pydantic import BaseModel

from totes.contracts.source_tables import SOURCE_TABLES
from totes.utils.lake import Lake
from totes.utils.manifests import latest_manifest, manifests_after
from totes.utils.postgres import Database


class PendingWork(BaseModel):
    """``{"lake_files": 3, "batches": 1, "transform": true, "load": true}``: lake files no
    batch has taken, committed batches not loaded, and whether each stage must run (load
    must also run after a transform that commits a batch)."""

    lake_files: int
    batches: int
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
    """

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
        (exists,), = conn.run("SELECT to_regclass('totes.load_state') IS NOT NULL")
        if not exists:
            return len(manifests_after(processed, None))
        (through,), = conn.run("SELECT loaded_through FROM totes.load_state")
        listed = manifests_after(processed, through)
        if not listed:
            return 0
        (loaded,), = conn.run("SELECT count(*) FROM totes.loaded_batch WHERE manifest_key = "
                              "ANY(CAST(:keys AS text[]))", keys=listed)
        return len(listed) - loaded


def pending_work(lake: Lake, processed: Lake, warehouse: Database) -> PendingWork:
    """What transform and load have left to do (see the module docstring).

    Raises:
        LakeError / StorageUnavailable: the lake or processed area could not be read.
        DatabaseUnavailable: the warehouse could not be reached (retry).
    """
    files = untransformed_files(lake, processed)
    batches = unloaded_batches(processed, warehouse)
    return PendingWork(lake_files=files, batches=batches, transform=files > 0,
                       load=files > 0 or batches > 0)
