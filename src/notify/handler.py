"""Lambda entry point of the alert step: the failed execution's state → one readable alert.

Event (built by the state machine)::

    {"environment": "prod", "region": "eu-west-2", "execution": "<execution ARN>",
     "state": "Transform", "input": <the execution's state when it failed>}

``input`` may hold ``error`` (what the Catch caught), ``pending`` (the pending step's
output, with the tables that failed or were skipped) and ``reconcile`` (the reconcile step's
result: with ``state`` ``"Reconcile"`` and no error, the alert lists its differences).
Returns ``{"subject", "message"}``.
"""
from totes.notify.alerts import render
from totes.utils import observability


@observability.observed("alert")
def handler(event, context):
    """See the module docstring."""
    state = (event or {}).get("input") or {}
    pending = state.get("pending") or {}
    return render({**event, "error": state.get("error") or None,
                   "failed_tables": pending.get("failed_tables") or [],
                   "skipped_tables": pending.get("skipped_tables") or [],
                   "reconcile": state.get("reconcile") or None}).model_dump()
