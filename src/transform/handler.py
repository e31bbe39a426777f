"""Lambda entry point of the transform state.

Environment: ``TOTES_LAKE``, ``TOTES_PROCESSED``. The event (the ingest results) is not
needed: transform takes every lake file no committed batch has transformed yet.
"""
from totes.transform.run import transform
from totes.utils import resources


def handler(event, context):
    """Returns :class:`~totes.contracts.stage_results.TransformResult` as JSON:
    ``{"manifest": key | null, "source_files": n, "tables": [...], "seconds": s}``."""
    return transform(resources.storage("lake"), resources.storage("processed"),
                     ledger=resources.ledger(),
                     run_id=(event or {}).get("run_id")).model_dump(mode="json")
