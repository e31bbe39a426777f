"""Extract one table on Spark (the ``glue`` job type, and ``totes ingest --engine spark``).

The driver does what the state machine's Plan does for a partitioned table
(:func:`totes.ingest.extract.plan_distributed`: one in-flight cutoff, the lake's watermark,
the partitions); the executors read the partitions in parallel, one Spark task per part, each
through the project's own streaming extract (:func:`totes.ingest.extract.extract_part`:
``COPY`` or MySQL's streaming cursor into ``<table>/_parts/<batch>/``); the driver then
commits the batch (:func:`totes.ingest.extract.commit_landed_parts`: the commit file,
last). All of it runs under the table's lease and is recorded in the ledger as one ingest,
so the lake, its footers and the ledger are those of the Lambda path: transform and load
cannot tell which engine extracted a batch.

Why the project's extract rather than Spark's JDBC reader: the JDBC reader cannot stop short
of in-flight transactions (the cutoff is per table, read in the source), does not write the
watermark footer, and would make Spark's types the lake's; each part here is already a
bounded-memory stream at COPY speed. A Spark task that fails is retried by Spark; a part that
an earlier attempt published is not read again.

Executors find the source and the lake by reference (:class:`SourceRef`: a URL or a Secrets
Manager secret id; the lake's URI): no password travels in a task's closure.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from totes.contracts.config import TablePlan
from totes.contracts.stage_results import IngestResult
from totes.ingest.extract import (PartResult, commit_landed_parts, extract_part,
                                  ingest_ledger_summary, plan_distributed, skipped_result)
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, new_run_id
from totes.utils.run_tracking import skip_reason, tracked
from totes.utils.source_reader import reader_for
from totes.utils.spark import DatabaseRef, run_tasks, spark_session  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


class SourceRef(DatabaseRef):
    """How a Spark executor finds the source (:class:`~totes.utils.spark.DatabaseRef` of
    role ``source``)."""


def _read_part(payload: dict, spec: dict, source: SourceRef, lake_uri: str) -> tuple:
    """One Spark task: one part, through :func:`extract_part`. Returns ``("ok", part JSON)``
    or ``("error", exception)``: the driver raises the part's own error (its type says
    whether a retry can help), not Spark's wrapper of it."""
    try:
        part = extract_part(TablePlan.model_validate(payload), spec, source.database(),
                            Lake(lake_uri))
        return "ok", part.model_dump(mode="json")
    except Exception as exc:  # handed to the driver, which raises it
        return "error", exc


def extract_on_spark(spark, plan: TablePlan, source: SourceRef, lake_uri: str,
                     ledger: Optional[Ledger] = None) -> IngestResult:
    """Extract ``plan.table`` with Spark as the module docstring says; returns the ingest
    result the Lambda path returns (``parts`` lists the parts; ``seconds`` is the whole job).

    Raises:
        as :func:`totes.ingest.extract.ingest_table` (a part's own error, re-raised).
    """
    run_id = plan.run_id or new_run_id()
    plan = plan.model_copy(update={"run_id": run_id, "distributed": None})

    def skipped(holder) -> IngestResult:
        return skipped_result(plan, run_id, skip_reason(holder))

    def work() -> IngestResult:
        started = time.monotonic()
        database, lake = source.database(), Lake(lake_uri)
        doing = f"planning the parts of table {plan.table} in the {database.describe()}"
        with database.session(f"totes-spark-{plan.table}", doing) as session:
            shared = plan_distributed(reader_for(database), session.conn, lake, plan)
        specs = shared.shared().parts
        payload = shared.model_dump(mode="json")
        log.info("%s: %d parts on Spark (batch %s)", plan.table, len(specs),
                 shared.shared().batch_id)
        answers = run_tasks(spark, lambda spec: _read_part(payload, spec, source, lake_uri),
                            specs, f"extracting table {plan.table}")
        parts = [PartResult.model_validate(answer) for answer in answers]
        result = commit_landed_parts(shared, parts, lake, run_id)
        return result.model_copy(update={"seconds": round(time.monotonic() - started, 3)})

    return tracked(ledger, "ingest", plan.table, run_id, plan.mode, work, skipped,
                   ingest_ledger_summary)
