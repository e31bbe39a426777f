"""Lambda entry points of the plan and ingest states.

Environment: ``TOTES_SOURCE_SECRET`` (or ``TOTES_SOURCE_URL``), ``TOTES_LAKE``,
``TOTES_CONFIG``, ``TOTES_LEDGER`` (see :class:`totes.utils.settings.Settings`). Any failure
raises; its type (``TransientError`` or ``TerminalError``) decides whether Step Functions
retries.
"""
import logging

from totes.contracts.config import CapturePlan, TablePlan
from totes.contracts.errors import TotesError
from totes.contracts.metrics import MetricValue, metric, of_ingest
from totes.ingest.extract import ingest_table
from totes.ingest.plan import plan
from totes.utils import observability, resources
from totes.utils.config_file import load_config
from totes.utils.freshness import table_lag
from totes.utils.ledger import new_run_id

log = logging.getLogger(__name__)


def _extracted(tables) -> list[MetricValue]:
    """RowsExtracted and LakeBytesWritten of ingest results (JSON), per table."""
    return [value for t in tables if t.get("table")
            for value in of_ingest(t["table"], t.get("rows") or 0, t.get("bytes"))]


def _ingest_metrics(event, result) -> list[MetricValue]:
    """What one ingest invocation measured: a part counts nothing (its commit counts the
    batch); the change log's reader counts each ``cdc`` table and the slot's retained WAL."""
    if not isinstance(result, dict) or "part" in (event or {}):
        return []
    if "slot" in result and "tables" in result:  # CaptureResult
        values = _extracted(result.get("tables") or [])
        if result.get("retained_wal_bytes") is not None:
            values.append(metric("RetainedWalBytes", result["retained_wal_bytes"],
                                 stage="capture"))
        return values
    return _extracted([result])


@observability.observed("plan")
def plan_handler(event, context):
    """Event: ``{"run_id": "<execution name>", "request": <the execution's input>}``; the
    input may name the tables of this run (``{"tables": ["sales_order", {"table": "payment",
    "mode": "reingest"}]}``). Returns :class:`~totes.contracts.stage_results.PlanResult` as JSON,
    with ``items``, the Map's items: ``{"tables": [<TablePlan JSON>, ...], "capture":
    <CapturePlan JSON> | null, "left_out": [...], "items": [...]}``. ``items`` are the
    tables' payloads and, when there are ``cdc`` tables, one item for the reader of the
    change log (``{"table": "capture:<slot>", "job_type": "capture", "capture":
    <CapturePlan JSON>, ...}``); a table the source check rejects keeps its payload, with
    ``check_error``, so that only its Map item fails."""
    event = event or {}
    request = event.get("request") or {}
    return plan(load_config(resources.config_path()), resources.database("source"),
                run_id=event.get("run_id") or new_run_id(), tables=request.get("tables"),
                per_table_errors=True, lake=resources.storage("lake")).model_dump(mode="json")


def _plans_of(event: dict) -> list[TablePlan]:
    """The tables a status step's item is about (its TablePlan, or the change log reader's
    ``cdc`` tables)."""
    capture = event.get("capture") or (event.get("item") or {}).get("capture")
    if capture:
        return CapturePlan.model_validate(capture).tables
    item = event.get("item") or {}
    fields = {k: v for k, v in item.items() if k in TablePlan.model_fields}
    return [TablePlan.model_validate(fields)] if fields.get("table") and \
        fields.get("primary_key") else []


def _measure_lag(event: dict) -> None:
    """LagSeconds of the item's tables (:mod:`totes.utils.freshness`), after the outcome is
    recorded. When the source or lake cannot be read, the lag is not published and a warning
    names the table and the error: the lag alarm treats the missing value as breaching."""
    for table in _plans_of(event):
        if not table.watermark_column:
            continue
        try:
            lag = table_lag(resources.database("source"), resources.storage("lake"), table)
        except TotesError as exc:
            log.warning(f"lag of {table.table} not measured: {type(exc).__name__}: {exc}")
            continue
        if lag.seconds is not None:
            observability.add(metric("LagSeconds", lag.seconds, table=table.table))


@observability.observed("status")
def status_handler(event, context):
    """The status step of a Map item. Event: ``{"action": "ingested", "result": <IngestResult
    JSON>}`` after the ingest succeeded; ``{"action": "captured", "result": <CaptureResult
    JSON>}`` after the change log's reader succeeded (it recorded each table itself);
    ``{"action": "job_ran", "item": <TablePlan JSON>}`` after a ``glue`` table's job run
    succeeded (the job recorded its ingest: read back, not
    written again); or ``{"action": "failed", "item": <TablePlan JSON>, "error": {"Error",
    "Cause"}}`` from its Catch. Records the table's outcome in the ledger and returns
    :class:`~totes.ingest.status.ItemStatus` as JSON (errors: see
    :func:`~totes.ingest.status.job_ran`)."""
    from totes.contracts.stage_results import CaptureResult, IngestResult
    from totes.ingest.status import captured, job_ran, record_failed, record_ingested

    ledger = resources.ledger()
    if event.get("action") == "ingested":
        status = record_ingested(ledger, IngestResult.model_validate(event["result"]))
    elif event.get("action") == "captured":
        status = captured(CaptureResult.model_validate(event["result"]))
    elif event.get("action") == "job_ran":
        status = job_ran(ledger, event.get("item") or {})
    else:
        item = event.get("item") or {}
        status = record_failed(ledger, item, event.get("error") or item.get("check_error"))
    if status.status == "failed":  # one line per failed item, whatever failed (Logs Insights)
        log.error(f"{status.table} failed: {status.error_type}: {status.error_message}",
                  extra={"error_type": status.error_type})
    _measure_lag(event)
    return status.model_dump(mode="json")


#: Fields the state machine adds to a Map item beside its TablePlan.
_ITEM_EXTRAS = ("part_results", "ingested", "error")


@observability.observed("ingest", _ingest_metrics)
def ingest_handler(event, context):
    """Event: one ``TablePlan`` JSON (a Map item): returns that table's
    :class:`~totes.contracts.stage_results.IngestResult` as JSON. For a partitioned table in the
    state machine: ``{"plan": <TablePlan>, "part": {...}}`` extracts one part and returns
    its :class:`~totes.ingest.extract.PartResult`; ``{"commit": <TablePlan and its
    "part_results">}`` commits the batch and returns its IngestResult; ``{"capture":
    <CapturePlan JSON>, ...}`` (the change log reader's item) reads the log for every
    ``cdc`` table and returns :class:`~totes.contracts.stage_results.CaptureResult`."""
    from totes.ingest.extract import PartResult, commit_parts, extract_part

    lake = resources.storage("lake")
    if "capture" in event:
        from totes.ingest.capture import capture

        return capture(CapturePlan.model_validate(event["capture"]),
                       resources.database("source"), lake,
                       resources.ledger()).model_dump(mode="json")
    if "part" in event:
        return extract_part(TablePlan.model_validate(event["plan"]), event["part"],
                            resources.database("source"), lake).model_dump(mode="json")
    if "commit" in event:
        item = event["commit"]
        plan = TablePlan.model_validate({k: v for k, v in item.items()
                                         if k not in _ITEM_EXTRAS})
        parts = [PartResult.model_validate(p) for p in item.get("part_results") or []]
        return commit_parts(plan, parts, lake, resources.ledger(),
                            resources.database("source")).model_dump(mode="json")
    return ingest_table(TablePlan.model_validate(event), resources.database("source"), lake,
                        resources.ledger()).model_dump(mode="json")
