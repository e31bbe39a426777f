"""Lambda entry points of the pending, load and reconcile states.

Environment: ``TOTES_PROCESSED``, ``TOTES_WAREHOUSE_SECRET`` (or ``TOTES_WAREHOUSE_URL``);
pending also ``TOTES_LAKE``; reconcile ``TOTES_SOURCE_SECRET`` (or ``TOTES_SOURCE_URL``) and
``TOTES_WAREHOUSE_SECRET`` only (it reads both databases, no storage).
Load loads every committed transform batch the warehouse has not loaded yet.
"""
from totes.load.warehouse import load
from totes.utils.settings import database_from_env, lake_from_env, ledger_from_env


def pending_handler(event, context):
    """After the Map. Event: ``{"items": [<ItemStatus JSON>, ...]}``. Returns
    :class:`~totes.load.pending.PendingResult` as JSON: what transform and load have left to
    do, and which tables failed or were skipped."""
    from totes.load.pending import PendingResult, pending_work

    items = (event or {}).get("items") or []
    work = pending_work(lake_from_env("TOTES_LAKE"), lake_from_env("TOTES_PROCESSED"),
                        database_from_env("warehouse"))
    return PendingResult(
        **work.model_dump(),
        failed_tables=[{k: i.get(k) for k in ("table", "error_type", "error_message")}
                       for i in items if i.get("status") == "failed"],
        skipped_tables=[{"table": i.get("table"), "reason": i.get("reason")}
                        for i in items if i.get("status") == "skipped"]).model_dump(mode="json")


def handler(event, context):
    """Returns :class:`~totes.utils.stage_results.LoadResult` as JSON:
    ``{"batches": [...], "tables": [...], "seconds": s}``."""
    return load(lake_from_env("TOTES_PROCESSED"), database_from_env("warehouse"),
                ledger=ledger_from_env(),
                run_id=(event or {}).get("run_id")).model_dump(mode="json")


#: Differences listed per table in the state machine's state (Step Functions passes at most
#: 256 KB between states; ``totes reconcile`` lists them all).
STATE_LIMIT = 5


def reconcile_handler(event, context):
    """After a load that loaded a batch. Event: ``{}`` or ``{"limit": n}`` (differences
    listed per table, default :data:`STATE_LIMIT`). Returns
    :class:`~totes.utils.stage_results.ReconcileResult` as JSON (``{"equal": true|false,
    "differences": n, "tables": [...], "sums": [...], "seconds": s}``): differences are a
    result, not an error; the state machine alerts on ``equal: false``.

    Raises:
        ConfigError: a database is not configured.
        DatabaseUnavailable / DatabaseRejected: a database could not be reached.
        SourceSchemaError: a source table lacks a column transform reads.
    """
    from totes.load.reconcile import reconcile

    limit = int((event or {}).get("limit", STATE_LIMIT))
    return reconcile(database_from_env("source"), database_from_env("warehouse"),
                     limit=limit).model_dump(mode="json")
