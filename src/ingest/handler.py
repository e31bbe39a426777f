"""Lambda entry points of the plan and ingest states.

Environment: ``TOTES_SOURCE_SECRET`` (or ``TOTES_SOURCE_URL``), ``TOTES_LAKE``,
``TOTES_CONFIG``, ``TOTES_LEDGER`` (see :mod:`totes.utils.settings`). Any failure raises; its type
(``TransientError`` or ``TerminalError``) decides whether Step Functions retries.
"""
from totes.ingest.extract import ingest_table
from totes.ingest.plan import plan
from totes.utils.config import TablePlan, load_config
from totes.utils.ledger import new_run_id
from totes.utils.settings import (config_path_from_env, database_from_env, lake_from_env,
                                  ledger_from_env)


def plan_handler(event, context):
    """Event: ``{"run_id": "<execution name>"}`` (optional). Returns
    :class:`~totes.utils.stage_results.PlanResult` as JSON: ``{"tables": [<TablePlan JSON>,
    ...]}``, each naming the run."""
    path = config_path_from_env()
    return plan(load_config(path), database_from_env("source"),
                run_id=(event or {}).get("run_id") or new_run_id()).model_dump(mode="json")


def ingest_handler(event, context):
    """Event: one ``TablePlan`` JSON (a Map item). Returns that table's
    :class:`~totes.utils.stage_results.IngestResult` as JSON."""
    return ingest_table(TablePlan.model_validate(event), database_from_env("source"),
                        lake_from_env("TOTES_LAKE"), ledger_from_env()).model_dump(mode="json")
