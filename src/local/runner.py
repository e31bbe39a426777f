"""The main job on one machine: plan → ingest (all tables in parallel) → transform → load,
with the same stage functions and JSON payloads as the Step Functions state machine.

Transform and load always run: each finds its own pending work (lake files no batch has
transformed, batches the warehouse has not loaded) and is a quick no-op when there is none,
so a run also completes the work of an earlier run that failed midway.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from totes.ingest.extract import ingest_table
from totes.ingest.plan import plan
from totes.load.warehouse import load
from totes.transform.run import transform
from totes.utils.config import TablePlan, load_config
from totes.utils.db import Database
from totes.utils.lake import Lake

INGEST_WORKERS = 4


@dataclass(frozen=True)
class Resources:
    """Where one run reads and writes."""

    source: Database
    warehouse: Database
    lake: Lake
    processed: Lake
    config_path: str


def ingest_all(source: Database, lake: Lake, plan_output: dict,
               on_table: Callable[[dict], None] = lambda result: None) -> list[dict]:
    """Ingest every table of ``plan_output`` from ``source`` into ``lake`` in parallel (as the
    state machine's Map does); returns the results in plan order. The first failure raises
    once all tables are done."""
    plans = [TablePlan.model_validate(item) for item in plan_output["tables"]]

    def one(item: TablePlan) -> dict:
        result = ingest_table(item, source, lake)
        on_table(result)
        return result

    with ThreadPoolExecutor(max_workers=min(INGEST_WORKERS, len(plans) or 1)) as pool:
        futures = [pool.submit(one, item) for item in plans]
    return [future.result() for future in futures]


def run_pipeline(resources: Resources,
                 on_stage: Callable[[str, dict], None] = lambda stage, output: None,
                 on_table: Callable[[dict], None] = lambda result: None) -> dict:
    """Run the main job once. Returns every stage's output::

        {"plan": {...}, "ingest": [...], "transform": {...}, "load": {...}, "seconds": s}

    ``on_stage(stage, output)`` is called as each stage ends, ``on_table(result)`` as each
    table's ingest ends (for progress). Errors raise as the stages raise them.
    """
    started = time.monotonic()
    outputs: dict = {}
    outputs["plan"] = plan(load_config(resources.config_path), resources.source)
    on_stage("plan", outputs["plan"])
    outputs["ingest"] = ingest_all(resources.source, resources.lake, outputs["plan"], on_table)
    on_stage("ingest", {"tables": outputs["ingest"]})
    outputs["transform"] = transform(resources.lake, resources.processed)
    on_stage("transform", outputs["transform"])
    outputs["load"] = load(resources.processed, resources.warehouse)
    on_stage("load", outputs["load"])
    outputs["seconds"] = round(time.monotonic() - started, 3)
    return outputs
