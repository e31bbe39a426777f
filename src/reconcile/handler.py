"""Lambda entry point of the reconcile state.

Environment: ``TOTES_SOURCE_SECRET`` (or ``TOTES_SOURCE_URL``) and
``TOTES_WAREHOUSE_SECRET`` (or ``TOTES_WAREHOUSE_URL``) only: it reads both databases, no
storage.
"""
from totes.contracts.metrics import MetricValue, of_reconcile
from totes.contracts.stage_results import ReconcileCursor, ReconcileResult
from totes.reconcile.reconcile import carry_differences, reconcile_step
from totes.utils import observability, resources


#: Differences listed per table in the state machine's state (Step Functions passes at most
#: 256 KB between states; ``totes reconcile`` lists them all).
STATE_LIMIT = 5


def _differences(event, result) -> list[MetricValue]:
    """ReconcileDifferences per warehouse table (0 included: the alarm sees every table),
    summed over its ranges and the differences carried from earlier steps."""
    found: dict[str, int] = {}
    for table in result.get("tables") or []:
        found[table["table"]] = found.get(table["table"], 0) + table["differences"]
    return of_reconcile(found)


@observability.observed("reconcile", _differences)
def handler(event, context):
    """After a load that loaded a batch, one bounded step of a whole reconciliation
    (:func:`~totes.reconcile.reconcile.reconcile_step`: at most ``TOTES_RECONCILE_MAX_ROWS``
    fact and raw-layer rows). Event: ``{}`` (the first step), ``{"resume": {"fact":
    "fact_sales_order", "raw_table": null, "start": 1048577}}`` (the step after one that
    returned that ``resume``; ``{"fact": null, "raw_table": "widget", ...}`` once the facts
    are done), optionally
    ``"limit": n`` (differences listed per table, default :data:`STATE_LIMIT`) and
    ``"earlier": <the last step's result>``, whose differences the result carries
    (:func:`~totes.reconcile.reconcile.carry_differences`). Returns
    :class:`~totes.contracts.stage_results.ReconcileResult` as JSON (``{"equal":
    true|false, "differences": n, "tables": [...], "sums": [...], "seconds": s, "resume":
    {...} | null}``): differences are a result, not an error; the state machine alerts on
    ``equal: false`` and invokes the next step while ``resume`` is not null.

    Raises:
        ConfigError: a database is not configured, or ``resume`` names no fact or raw table.
        DatabaseUnavailable / DatabaseRejected: a database could not be reached.
        SourceSchemaError: a source table lacks a column transform reads.
    """
    event = event or {}
    limit = int(event.get("limit", STATE_LIMIT))
    resume = event.get("resume")
    result = reconcile_step(resources.database("source"), resources.database("warehouse"),
                            resume=None if resume is None else ReconcileCursor(**resume),
                            limit=limit)
    if event.get("earlier"):
        result = carry_differences(ReconcileResult.model_validate(event["earlier"]), result)
    return result.model_dump(mode="json")
