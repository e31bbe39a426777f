"""The main job on one machine: plan → ingest (all tables in parallel) → transform → load,
with the same stage functions and results as the Step Functions state machine.

Transform and load always run: each finds its own pending work (lake files no batch has
transformed, batches the warehouse has not loaded) and is a quick no-op when there is none,
so a run also completes the work of an earlier run that failed midway.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa

from totes.contracts.config import raw_tables
from totes.contracts.stage_results import (CaptureResult, IngestResult, LoadResult,
                                           PlanResult, RunResult, TransformResult,
                                           combined_loads, combined_transforms)
from totes.ingest.capture import capture
from totes.ingest.extract import ingest_table
from totes.ingest.plan import plan
from totes.load.quarantine import held_source_rows
from totes.load.raw import raw_schema
from totes.load.warehouse import check_separate, check_warehouse, load
from totes.local.check import storage_check
from totes.transform.run import transform
from totes.utils.config_file import load_config
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, new_run_id
from totes.utils.databases import SourceDatabase
from totes.utils.postgres import Database

#: Tables ingested at once (each through its own connection), as the Map's MaxConcurrency.
INGEST_WORKERS = 4


@dataclass(frozen=True)
class Resources:
    """Where one run reads and writes, and the ledger it records in (None: no records, no
    leases)."""

    source: SourceDatabase
    warehouse: Database
    lake: Lake
    processed: Lake
    config_path: str
    ledger: Optional[Ledger] = None


def ingest_all(source: SourceDatabase, lake: Lake, planned: PlanResult,
               on_table: Callable[[IngestResult], None] = lambda result: None,
               ledger: Optional[Ledger] = None,
               on_capture: Callable[[CaptureResult], None] = lambda result: None
               ) -> list[IngestResult]:
    """Ingest every table of ``planned`` from ``source`` into ``lake`` in parallel (as the
    state machine's Map does), the ``cdc`` tables by one read of the change log
    (:func:`totes.ingest.capture.capture`, whose result goes to ``on_capture``); returns the
    tables' results in plan order, the ``cdc`` tables' last. The first failure raises once
    all tables are done."""
    def one(item) -> IngestResult:
        result = ingest_table(item, source, lake, ledger)
        on_table(result)
        return result

    def read_log(plan) -> list[IngestResult]:
        captured = capture(plan, source, lake, ledger)
        on_capture(captured)
        for result in captured.tables:
            on_table(result)
        return captured.tables

    jobs = len(planned.tables) + (planned.capture is not None)
    with ThreadPoolExecutor(max_workers=min(INGEST_WORKERS, jobs or 1)) as pool:
        futures = [pool.submit(one, item) for item in planned.tables]
        log_read = pool.submit(read_log, planned.capture) if planned.capture else None
    results = [future.result() for future in futures]
    return results + (log_read.result() if log_read is not None else [])


def run_pipeline(resources: Resources,
                 on_stage: Callable[[str, object], None] = lambda stage, output: None,
                 on_table: Callable[[IngestResult], None] = lambda result: None,
                 tables: Optional[list] = None, reconcile: bool = True) -> RunResult:
    """Run the main job once and return every stage's result
    (:class:`~totes.contracts.stage_results.RunResult`). With ``reconcile``, a load that loaded
    a batch is followed by a reconciliation of source and warehouse scoped to that load
    (:func:`totes.reconcile.reconcile.reconcile` with :func:`~totes.reconcile.reconcile.load_scope`:
    the dimensions whole, each fact on the source ids the load brought; a run that loads
    nothing skips it), so that a small run stays cheap whatever the source's size; ``totes
    reconcile`` compares everything. The raw layer's tables the load brought versions of are
    compared whole.

    ``on_stage(stage, result)`` is called as each stage ends, ``on_table(result)`` as each
    table's ingest ends (for progress). ``tables`` limits the ingest to those tables (names,
    or objects naming a mode: see :func:`totes.ingest.plan.select`); transform and load take
    all pending work, in bounded steps (``TOTES_TRANSFORM_MAX_ROWS`` lake rows per source
    table, ``TOTES_LOAD_MAX_BATCHES`` batches), repeated until nothing is pending: the run's
    result combines them (:func:`combined_transforms`, :func:`combined_loads`). Errors raise
    as the stages raise them.
    """
    started = time.monotonic()

    def ended(stage: str, result) -> None:
        # The stages share one process: Arrow's allocator keeps the pages a stage freed, and
        # the next stage's peak would stack on them (on 2,000,000 rows: 277 MB, 233 MB without).
        pa.default_memory_pool().release_unused()
        on_stage(stage, result)

    run_id = new_run_id()
    config = load_config(resources.config_path)
    raw = raw_tables(config)
    check_separate(resources.source, resources.warehouse)
    check_warehouse(resources.warehouse, raw_schema=raw_schema() if raw else None)
    storage_check(resources.lake, "lake")  # a store this run cannot use stops it here,
    storage_check(resources.processed, "processed area")  # before anything is written
    planned = plan(config, resources.source, run_id=run_id, tables=tables)
    ended("plan", planned)
    captured: list[CaptureResult] = []
    ingested = ingest_all(resources.source, resources.lake, planned, on_table, resources.ledger,
                          captured.append)
    ended("ingest", ingested)
    transforms, loads = [], []
    while True:  # bounded steps (TOTES_TRANSFORM_MAX_ROWS, TOTES_LOAD_MAX_BATCHES) until done
        transforms.append(transform(resources.lake, resources.processed,
                                    ledger=resources.ledger, run_id=run_id))
        ended("transform", transforms[-1])
        loads.append(load(resources.processed, resources.warehouse, ledger=resources.ledger,
                          run_id=run_id, lake=resources.lake, raw_tables=raw))
        ended("load", loads[-1])
        if not ((transforms[-1].more and transforms[-1].manifest)
                or (loads[-1].more and (loads[-1].batches or loads[-1].raw))):
            break
    transformed, loaded = combined_transforms(transforms), combined_loads(loads)
    checked = None
    if reconcile and (loaded.batches or loaded.raw):
        from totes.reconcile.reconcile import load_scope, reconcile as reconcile_warehouse

        checked = reconcile_warehouse(resources.source, resources.warehouse,
                                      scope=load_scope(resources.processed, loaded.batches),
                                      raw=[t.table for t in loaded.raw])
        ended("reconcile", checked)
    return RunResult(run_id=run_id, plan=planned, ingest=ingested,
                     capture=captured[0] if captured else None, transform=transformed,
                     load=loaded, reconcile=checked,
                     seconds=round(time.monotonic() - started, 3))


def retry_quarantine(lake: Lake, processed: Lake, warehouse: Database,
                     ledger: Optional[Ledger] = None) -> tuple[TransformResult, LoadResult]:
    """Put every row version the quarantine still holds through the rules again (in a new
    transform batch, with whatever new lake files there are), then load: the versions that
    pass now reach the warehouse, the others stay held. A load also releases the held fact
    rows whose dimension rows have arrived."""
    run_id = new_run_id()
    retried = transform(lake, processed, retry=held_source_rows(processed, warehouse),
                        ledger=ledger, run_id=run_id)
    return retried, load(processed, warehouse, ledger=ledger, run_id=run_id)
