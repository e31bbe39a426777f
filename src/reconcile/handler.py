"""Lambda entry point of the reconcile state.

Environment: ``TOTES_SOURCE_SECRET`` (or ``TOTES_SOURCE_URL``) and
``TOTES_WAREHOUSE_SECRET`` (or ``TOTES_WAREHOUSE_URL``) only: it reads both databases, no
storage.
"""
from totes.contracts.metrics import MetricValue, of_reconcile
from totes.reconcile.reconcile import reconcile
from totes.utils import observability, resources


#: Differences listed per table in the state machine's state (Step Functions passes at most
#: 256 KB between states; ``totes reconcile`` lists them all).
STATE_LIMIT = 5


def _differences(event, result) -> list[MetricValue]:
    """ReconcileDifferences per warehouse table (0 included: the alarm sees every table)."""
    return of_reconcile({t["table"]: t["differences"] for t in result.get("tables") or []})


@observability.observed("reconcile", _differences)
def handler(event, context):
    """After a load that loaded a batch. Event: ``{}`` or ``{"limit": n}`` (differences
    listed per table, default :data:`STATE_LIMIT`). Returns
    :class:`~totes.contracts.stage_results.ReconcileResult` as JSON (``{"equal": true|false,
    "differences": n, "tables": [...], "sums": [...], "seconds": s}``): differences are a
    result, not an error; the state machine alerts on ``equal: false``.

    Raises:
        ConfigError: a database is not configured.
        DatabaseUnavailable / DatabaseRejected: a database could not be reached.
        SourceSchemaError: a source table lacks a column transform reads.
    """
    limit = int((event or {}).get("limit", STATE_LIMIT))
    return reconcile(resources.database("source"), resources.database("warehouse"),
                     limit=limit).model_dump(mode="json")
