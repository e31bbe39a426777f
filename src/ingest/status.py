"""The status step of each Map item: after a table's ingest, on success and (through the item's
Catch) on failure, the ledger is brought up to date and the item ends with a small summary,
so that one table's failure never aborts the others.

* ``ingested``: the ingest function recorded its run itself; the step checks the record is
  there (``succeeded`` or ``skipped``) and writes it from the ingest result if not (the
  ledger write failed after the extract landed).
* ``captured``: the change log's reader succeeded; it recorded each ``cdc`` table itself, and
  the item's summary counts their rows.
* ``job_ran``: a ``glue`` table's job run succeeded. The job recorded its ingest in the
  ledger itself (under the table's lease, as the Lambda does); the step reads that record
  back for the item's summary and writes nothing (a job run's output has no ingest result).
* ``failed``: the ingest function (or the Glue job run) failed. When it could record that
  itself, its ``failed`` record stays; when it could not (killed by its time limit, out of
  memory, a job run that could not start), the step writes ``failed`` with the error Step
  Functions reports (for a job run, the exception in its ``ErrorMessage``).

Item summary (the Map's output for the table)::

    {"table": "payment", "status": "succeeded" | "skipped" | "failed", "rows": 12,
     "key": "payment/...parquet" | null, "reason": null | "leased by run-…",
     "error_type": null | "SourceSchemaError", "error_message": null | "..."}
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

from totes.contracts.stage_results import CaptureResult, IngestResult
from totes.contracts.step_errors import error_of
from totes.utils.ledger import LeaseHolder, Ledger, LedgerRecord, lease_name, now, record_json
from totes.utils.run_tracking import skip_reason


class ItemStatus(BaseModel):
    """What one Map item ends with (see the module docstring)."""

    table: str
    status: str
    rows: int = 0
    key: Optional[str] = None
    reason: Optional[str] = None
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    warning: Optional[str] = None


def _own_record(ledger: Ledger, table: str, run_id: str) -> Optional[LedgerRecord]:
    return next((r for r in ledger.history("ingest", table, 20) if r.run_id == run_id), None)


def record_ingested(ledger: Optional[Ledger], result: IngestResult) -> ItemStatus:
    """The success path of a Map item."""
    status = "skipped" if result.skipped else "succeeded"
    if ledger is not None and result.run_id and _own_record(ledger, result.table,
                                                            result.run_id) is None:
        moment = now().isoformat(timespec="microseconds")
        ledger.put(LedgerRecord(
            stage="ingest", table=result.table, run_id=result.run_id, status=status,
            mode=result.mode, started_at=moment, ended_at=moment, seconds=result.seconds,
            rows=result.rows, bytes=result.bytes, key=result.key,
            low_watermark=record_json(result.low_watermark),
            high_watermark=record_json(result.high_watermark),
            details={"recorded_by": "status step"}))
    return ItemStatus(table=result.table, status=status, rows=result.rows, key=result.key,
                      reason=result.skipped)


def captured(result: CaptureResult) -> ItemStatus:
    """The success path of the change log reader's item (``capture:<slot>``): every table's
    rows, the position record as its key."""
    return ItemStatus(table=f"capture:{result.slot}",
                      status="skipped" if result.skipped else "succeeded",
                      rows=sum(t.rows for t in result.tables), key=result.position,
                      reason=result.skipped, warning=result.warning)


def job_ran(ledger: Optional[Ledger], item: dict) -> ItemStatus:
    """The success path of a ``glue`` Map item: ``item`` is the table's payload (a TablePlan
    JSON, with ``run_id``). The summary comes from the job's own ledger record of this run
    (``succeeded``, or ``skipped`` with the lease holder); nothing is recorded twice.

    Raises:
        ConfigError: no ledger (``TOTES_LEDGER``), or ``item`` names no table or run.
        TransientError: the job run succeeded but the ledger shows no finished ingest of this
            run (the ledger's query is eventually consistent: the state retries; after the
            retries, the item's Catch records the table failed, and it alerts).
    """
    from totes.contracts.errors import ConfigError, TransientError

    table, run_id = item.get("table"), item.get("run_id")
    if ledger is None or not table or not run_id:
        raise ConfigError("the status step of a Glue job run needs the ledger (TOTES_LEDGER) "
                          "and the item's table and run_id")
    own = _own_record(ledger, table, run_id)
    if own is None or own.status not in ("succeeded", "skipped"):
        raise TransientError(f"the Glue job run of table {table} succeeded, but the ledger "
                             f"has no finished ingest of run {run_id} "
                             f"({own.status if own else 'no record'})")
    reason = None
    if own.status == "skipped":
        reason = skip_reason(LeaseHolder(
            name=lease_name("ingest", table), owner=own.details.get("lease_holder", "?"),
            expires_at=own.details.get("lease_expires_at", "?")))
    return ItemStatus(table=table, status=own.status, rows=max(own.rows, 0), key=own.key,
                      reason=reason)


def record_failed(ledger: Optional[Ledger], item: dict, error: Optional[dict]) -> ItemStatus:
    """The Catch path of a Map item: ``item`` is the table's payload, ``error`` what Step
    Functions caught (``{"Error": ..., "Cause": ...}``)."""
    kind, message = error_of(error)
    table, run_id = item.get("table", "?"), item.get("run_id")
    if ledger is not None and run_id:
        own = _own_record(ledger, table, run_id)
        if own is None or own.status == "running":
            moment = now().isoformat(timespec="microseconds")
            base = own or LedgerRecord(stage="ingest", table=table, run_id=run_id,
                                       status="running", mode=item.get("mode"),
                                       started_at=moment)
            ledger.put(base.model_copy(update={
                "status": "failed", "ended_at": moment, "rows": 0, "error_type": kind,
                "error_message": message[:2000],
                "details": {**base.details, "recorded_by": "status step"}}))
    return ItemStatus(table=table, status="failed", error_type=kind,
                      error_message=message[:1000])
