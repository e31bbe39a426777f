"""Lambda entry point of the load state.

Environment: ``TOTES_PROCESSED``, ``TOTES_WAREHOUSE_SECRET`` (or ``TOTES_WAREHOUSE_URL``).
Loads every committed transform batch the warehouse has not loaded yet.
"""
from totes.load.warehouse import load
from totes.utils.settings import database_from_env, lake_from_env, ledger_from_env


def handler(event, context):
    """Returns :class:`~totes.utils.stage_results.LoadResult` as JSON:
    ``{"batches": [...], "tables": [...], "seconds": s}``."""
    return load(lake_from_env("TOTES_PROCESSED"), database_from_env("warehouse"),
                ledger=ledger_from_env(),
                run_id=(event or {}).get("run_id")).model_dump(mode="json")
