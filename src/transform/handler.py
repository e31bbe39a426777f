"""Lambda entry point of the transform state.

Environment: ``TOTES_LAKE``, ``TOTES_PROCESSED``. The event (the ingest results) is not
needed: transform takes every lake file no committed batch has transformed yet.
"""
from totes.transform.run import transform
from totes.utils.settings import lake_from_env, ledger_from_env


def handler(event, context):
    """Returns :class:`~totes.utils.stage_results.TransformResult` as JSON:
    ``{"manifest": key | null, "source_files": n, "tables": [...], "seconds": s}``."""
    return transform(lake_from_env("TOTES_LAKE"), lake_from_env("TOTES_PROCESSED"),
                     ledger=ledger_from_env(),
                     run_id=(event or {}).get("run_id")).model_dump(mode="json")
