"""Lambda entry points of the pending and load states.

Environment: ``TOTES_PROCESSED``, ``TOTES_WAREHOUSE_SECRET`` (or ``TOTES_WAREHOUSE_URL``),
``TOTES_LEDGER``; pending also ``TOTES_LAKE``. Load loads every committed transform batch the
warehouse has not loaded yet.
"""
from totes.contracts.metrics import MetricValue, of_load
from totes.load.warehouse import load
from totes.utils import observability, resources
from totes.utils.job_results import read_job_result


def _loaded(event, result) -> list[MetricValue]:
    """RowsInserted, VersionsSkipped and RowsHeld per warehouse table
    (:func:`totes.contracts.metrics.of_load`)."""
    return of_load({t["table"]: t for t in result.get("tables") or []},
                   result.get("held") or {})


@observability.observed("pending")
def pending_handler(event, context):
    """After the Map. Event: ``{"items": [<ItemStatus JSON>, ...]}``. Returns
    :class:`~totes.load.pending.PendingResult` as JSON: what transform and load have left to
    do, and which tables failed or were skipped."""
    from totes.load.pending import PendingResult, pending_work, spark_work

    items = (event or {}).get("items") or []
    lake, processed = resources.storage("lake"), resources.storage("processed")
    work = pending_work(lake, processed, resources.database("warehouse"), _raw_tables())
    return PendingResult(
        **work.model_dump(),
        spark=spark_work(lake, processed, _plans()) if work.transform else None,
        failed_tables=[{k: i.get(k) for k in ("table", "error_type", "error_message")}
                       for i in items if i.get("status") == "failed"],
        skipped_tables=[{"table": i.get("table"), "reason": i.get("reason")}
                        for i in items if i.get("status") == "skipped"],
        warnings=[i["warning"] for i in items if i.get("warning")]).model_dump(mode="json")


def _plans():
    """Every table's plan from the pipeline file (``TOTES_CONFIG``)."""
    from totes.contracts.config import resolve_tables
    from totes.utils.config_file import load_config

    return resolve_tables(load_config(resources.config_path()))


def _raw_tables():
    """The raw layer's tables of the pipeline file (``TOTES_CONFIG``), or None when the
    function has no lake (``TOTES_LAKE``: a deployment before the raw layer)."""
    from totes.contracts.config import raw_tables
    from totes.utils import settings
    from totes.utils.config_file import load_config

    if not settings.current().lake:
        return None
    return raw_tables(load_config(resources.config_path()))


@observability.observed("load", _loaded)
def handler(event, context):
    """Returns :class:`~totes.contracts.stage_results.LoadResult` as JSON:
    ``{"batches": [...], "tables": [...], "raw": [...], "seconds": s}``. With ``TOTES_LAKE``
    set, the raw layer's tables (of ``TOTES_CONFIG``) take their new lake batches too.

    Event ``{"spark_result": key}`` (after the Glue job that transforms and loads on Spark):
    loads nothing and returns the load result that job wrote to ``key`` of the processed
    area (:mod:`totes.jobs.glue_stages`), so that its metrics are reported as this
    function's are."""
    if (event or {}).get("spark_result"):
        return read_job_result(resources.storage("processed"), event["spark_result"], "load")
    tables = _raw_tables()
    return load(resources.storage("processed"), resources.database("warehouse"),
                ledger=resources.ledger(), run_id=(event or {}).get("run_id"),
                lake=resources.storage("lake") if tables else None,
                raw_tables=tables).model_dump(mode="json")
