"""The plan step ("extract config manager"): configuration → one ingest payload per table.

Its output is the input of the state machine's Map over tables and of the local runner::

    {"tables": [{"table": "address", "primary_key": "address_id", "mode": "incremental",
                 "watermark_column": "last_updated", ...}, ...],
     "left_out": []}

Its event names the run and may name the tables of this run (``{"run_id": "...",
"request": {"tables": ["sales_order", {"table": "payment", "mode": "reingest"}]}}``).
"""
from __future__ import annotations

import json
import logging
from typing import Optional

from totes.contracts.config import (CapturePlan, PipelineConfig, TablePlan, capture_plan,
                                    resolve_tables)
from totes.contracts.errors import (CdcNotReady, ConfigError, PermissionDenied,
                                    SourceSchemaError, unknown_names)
from totes.contracts.source_tables import SOURCE_TABLES
from totes.contracts.stage_results import PlanResult
from totes.utils import settings
from totes.utils.lake import Lake
from totes.utils.databases import SourceDatabase
from totes.utils import mysql_binlog, postgres_cdc
from totes.utils.source_reader import reader_for

log = logging.getLogger(__name__)


def select(plans: list[TablePlan],
           request: Optional[list]) -> tuple[list[TablePlan], list[str]]:
    """The plans a run asks for, and the configured tables it leaves out. ``request`` lists
    table names, or objects naming a mode: ``["sales_order", {"table": "payment", "mode":
    "backfill", "from": "2024-11-01", "to": "2024-11-03"}, {"table": "staff", "mode":
    "reingest"}]``; None or empty: every configured table, in its own mode.

    Raises:
        ConfigError: a name that is not in the configuration, or a mode that cannot be.
    """
    if not request:
        return plans, []
    by_name = {p.table: p for p in plans}
    chosen: dict[str, TablePlan] = {}
    for item in request:
        spec = {"table": item} if isinstance(item, str) else item
        name = spec.get("table") if isinstance(spec, dict) else None
        if not isinstance(name, str) or name not in by_name:
            raise unknown_names("table", [str(name)], by_name, "in the configuration")
        chosen[name] = by_name[name] if "mode" not in spec else by_name[name].with_mode(
            spec["mode"], spec.get("from"), spec.get("to"))
    return list(chosen.values()), [p.table for p in plans if p.table not in chosen]


def plan(config: PipelineConfig, source: Optional[SourceDatabase] = None,
         run_id: Optional[str] = None, tables: Optional[list] = None,
         per_table_errors: bool = False, lake: Optional[Lake] = None) -> PlanResult:
    """Resolve ``config`` into payloads (each naming ``run_id``), for the ``tables`` of this
    run (see :func:`select`); with ``source``, also check every table against the source
    catalog before any work starts.

    By default a table that fails its check fails the plan (a local run: nothing starts).
    With ``per_table_errors`` (the state machine), the table keeps its payload with the error
    in ``check_error``, so that its Map item records the failure and the others go on.
    With ``lake`` (the state machine), a partitioned table's payload also holds what its
    parts share (``distributed``: one cutoff, the lake's watermark, the partitions), so that
    one worker per part can read it; not a ``glue`` table's, whose job plans its own parts
    (its ``distributed`` stays None, and the state machine sends it to the Glue job).

    Raises:
        ConfigError: a requested table is not configured, or its mode is impossible.
        SourceSchemaError: a table or column is missing from the source (names it).
        PermissionDenied: the source role may not read a table.
        DatabaseUnavailable / DatabaseRejected: the source could not be reached.
    """
    plans, left_out = select(
        [p.model_copy(update={"run_id": run_id}) for p in resolve_tables(config)], tables)
    warnings = [f"table {p.table} is configured, but no rule of the star schema reads it: "
                + (f"it lands in the lake and the raw layer ({settings.current().raw_schema}."
                   f"{p.table}), in no star-schema table" if p.raw else
                   "it lands in the lake only, never in the warehouse (raw: false)")
                for p in plans if p.table not in SOURCE_TABLES]
    for warning in warnings:
        log.warning(warning)
    if source is not None:
        reader = reader_for(source)
        with source.session("totes-plan", f"checking the tables in the {source.describe()}") \
                as session:
            for i, item in enumerate(plans):
                try:
                    reader.check_table(session.conn, item.table, item.primary_key,
                                       item.watermark_column)
                    if item.mode not in ("full", "cdc") and item.watermark_column:
                        advice = reader.index_advice(session.conn, item.table,
                                                     item.watermark_column, item.primary_key)
                        if advice:
                            log.warning(advice)
                            warnings.append(advice)
                    if lake is not None and item.num_partitions > 1 \
                            and item.job_type != "glue":
                        from totes.ingest.extract import plan_distributed

                        plans[i] = plan_distributed(reader, session.conn, lake, item)
                except (SourceSchemaError, PermissionDenied) as exc:
                    if not per_table_errors:
                        raise
                    plans[i] = item.model_copy(update={"check_error": {
                        "Error": type(exc).__name__,
                        "Cause": json.dumps({"errorType": type(exc).__name__,
                                             "errorMessage": str(exc)})}})
            capture = capture_plan(config, plans)
            if capture is not None:
                _check_capture(session.conn, source, capture, per_table_errors)
    else:
        capture = capture_plan(config, plans)
    if left_out:
        log.info("this run leaves out: %s", ", ".join(left_out))
    polled = [p for p in plans if p.extract_type != "cdc"]
    if capture is not None:  # the checks above may have marked a cdc table
        capture.tables = [p for p in plans if p.extract_type == "cdc"]
    items = [p.model_dump(mode="json") for p in polled] + \
        ([capture_item(capture)] if capture is not None else [])
    return PlanResult(tables=polled, capture=capture, items=items, left_out=left_out,
                      warnings=warnings)


def capture_item(capture: CapturePlan) -> dict:
    """The Map item of the change log's reader: the state machine's JobType choice sends it
    to the Capture step (``job_type`` ``capture``)."""
    return {"table": f"capture:{capture.slot}", "job_type": "capture",
            "run_id": capture.run_id, "mode": "cdc", "check_error": capture.check_error,
            "capture": capture.model_dump(mode="json")}


def _check_capture(conn, source, capture: CapturePlan, per_table_errors: bool) -> None:
    """Check that the source is ready for change data capture of ``capture``'s tables.

    Raises:
        CdcNotReady: it is not (the message lists what is missing, each with its fix); with
            ``per_table_errors`` the plan's ``check_error`` says so instead.
        ConfigError: the source is neither PostgreSQL nor MySQL.
    """
    names = [t.table for t in capture.tables]
    engine = getattr(source, "engine", "postgresql")
    if engine == "mysql":
        problems = mysql_binlog.readiness(conn, {t.table: t.primary_key
                                                 for t in capture.tables})
    elif engine == "postgresql":
        problems = postgres_cdc.readiness(conn, capture.slot, capture.publication, names)
    else:
        raise ConfigError(f"the cdc tables ({', '.join(names)}) need a PostgreSQL or MySQL "
                          f"source; the {source.describe()} is read by a cursor")
    if not problems:
        return
    error = CdcNotReady(f"change data capture of {', '.join(names)} is not ready in the "
                        f"{source.describe()}: " + "; ".join(problems))
    if not per_table_errors:
        raise error
    capture.check_error = {"Error": type(error).__name__, "Cause": json.dumps(
        {"errorType": type(error).__name__, "errorMessage": str(error)})}
