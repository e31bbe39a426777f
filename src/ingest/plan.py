"""The plan step ("extract config manager"): configuration → one ingest payload per table.

Its output is the input of the state machine's Map over tables and of the local runner::

    {"tables": [{"table": "address", "primary_key": "address_id",
                 "watermark_column": "last_updated", "record_batch_bytes": 8388608,
                 "in_flight_safety_lag_seconds": 300.0}, ...]}
"""
from __future__ import annotations

from typing import Optional

from totes.ingest.source_catalog import check_table
from totes.utils.config import PipelineConfig, resolve_tables
from totes.utils.db import Database
from totes.utils.stage_results import PlanResult


def plan(config: PipelineConfig, source: Optional[Database] = None,
         run_id: Optional[str] = None) -> PlanResult:
    """Resolve ``config`` into payloads (each naming ``run_id``); with ``source``, also check
    every table against the source catalog before any work starts.

    Raises:
        SourceSchemaError: a configured table or column is missing from the source (names it).
        PermissionDenied: the source role may not read a configured table.
        DatabaseUnavailable / DatabaseRejected: the source could not be reached.
    """
    plans = [p.model_copy(update={"run_id": run_id}) for p in resolve_tables(config)]
    if source is not None:
        with source.session("totes-plan", f"checking the tables in the {source.describe()}") \
                as session:
            for item in plans:
                check_table(session.conn, item.table, item.primary_key, item.watermark_column)
    return PlanResult(tables=plans)
