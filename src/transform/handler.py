"""Lambda entry point of the transform state.

Environment: ``TOTES_LAKE``, ``TOTES_PROCESSED``. The event (the ingest results) is not
needed: transform takes every lake file no committed batch has transformed yet.
"""
from totes.contracts.metrics import MetricValue, of_transform
from totes.transform.run import transform
from totes.utils import observability, resources
from totes.utils.job_results import read_job_result


def _measured(event, result) -> list[MetricValue]:
    """RowsTransformed per warehouse table, RowsQuarantined per source table."""
    rows: dict[str, int] = {}
    for output in result.get("tables") or []:
        rows[output["table"]] = rows.get(output["table"], 0) + output["rows"]
    return of_transform(rows, result.get("quarantined") or {})


@observability.observed("transform", _measured)
def handler(event, context):
    """Returns :class:`~totes.contracts.stage_results.TransformResult` as JSON:
    ``{"manifest": key | null, "source_files": n, "tables": [...], "seconds": s}``.

    Event ``{"spark_result": key}`` (after the Glue job that transforms and loads on Spark):
    transforms nothing and returns the transform result that job wrote to ``key`` of the
    processed area (:mod:`totes.jobs.glue_stages`), so that its metrics are reported as this
    function's are."""
    if (event or {}).get("spark_result"):
        return read_job_result(resources.storage("processed"), event["spark_result"],
                               "transform")
    return transform(resources.storage("lake"), resources.storage("processed"),
                     ledger=resources.ledger(),
                     run_id=(event or {}).get("run_id")).model_dump(mode="json")
