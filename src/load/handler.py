"""Lambda entry points of the pending and load states.

Environment: ``TOTES_PROCESSED``, ``TOTES_WAREHOUSE_SECRET`` (or ``TOTES_WAREHOUSE_URL``),
``TOTES_LEDGER``; pending also ``TOTES_LAKE``. Load loads every committed transform batch the
warehouse has not loaded yet.
"""
from totes.load.warehouse import load
from totes.utils import resources


def pending_handler(event, context):
    """After the Map. Event: ``{"items": [<ItemStatus JSON>, ...]}``. Returns
    :class:`~totes.load.pending.PendingResult` as JSON: what transform and load have left to
    do, and which tables failed or were skipped."""
    from totes.load.pending import PendingResult, pending_work

    items = (event or {}).get("items") or []
    work = pending_work(resources.storage("lake"), resources.storage("processed"),
                        resources.database("warehouse"))
    return PendingResult(
        **work.model_dump(),
        failed_tables=[{k: i.get(k) for k in ("table", "error_type", "error_message")}
                       for i in items if i.get("status") == "failed"],
        skipped_tables=[{"table": i.get("table"), "reason": i.get("reason")}
                        for i in items if i.get("status") == "skipped"],
        warnings=[i["warning"] for i in items if i.get("warning")]).model_dump(mode="json")


def handler(event, context):
    """Returns :class:`~totes.contracts.stage_results.LoadResult` as JSON:
    ``{"batches": [...], "tables": [...], "seconds": s}``."""
    return load(resources.storage("processed"), resources.database("warehouse"),
                ledger=resources.ledger(),
                run_id=(event or {}).get("run_id")).model_dump(mode="json")
