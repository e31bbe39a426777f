"""Run a stage's work under its lease, with its ledger records: the one place where the
ledger's semantics (:mod:`totes.utils.ledger`) meet the stages.

``tracked(...)`` takes the lease of the work (``ingest:<table>``, ``transform``, ``load``),
writes a ``running`` record (rows -1), runs the work, and writes ``succeeded`` with the
summary of its result, or ``failed`` with the error's type and message (and re-raises). When
the lease is held by a live run, nothing runs: a ``skipped`` record names the holder, and the
stage's own "skipped" result is returned. A run killed midway leaves its record ``running``;
its lease expires, and the record reads as ``abandoned``.
"""
from __future__ import annotations

import contextvars
import time
import uuid
from typing import Callable, Optional, TypeVar

from totes.utils.ledger import (Lease, LeaseHolder, Ledger, LedgerRecord, lease_name,
                                lease_seconds, now)

R = TypeVar("R")
#: The lease of the work running in this thread (set by :func:`tracked`).
_current: contextvars.ContextVar[Optional[Lease]] = contextvars.ContextVar(
    "lease", default=None)


def check_lease() -> None:
    """Called by a stage right before it makes its work visible (publishes a lake file,
    commits a manifest, commits the warehouse transaction): confirms the work's lease is
    still held. Does nothing when the work runs without a ledger.

    Raises:
        LeaseLost: the lease was lost; nothing must be made visible (a retry can succeed).
    """
    lease = _current.get()
    if lease is not None:
        lease.check()


def _iso(moment) -> str:
    return moment.isoformat(timespec="microseconds")


def tracked(ledger: Optional[Ledger], stage: str, table: str, run_id: str,
            mode: Optional[str], work: Callable[[], R],
            skipped: Callable[[LeaseHolder], R], summary: Callable[[R], dict],
            wait: bool = False) -> R:
    """Run ``work()`` under the lease of ``stage``/``table`` for run ``run_id``, recording it.

    ``summary(result)`` gives the succeeded record's fields (rows, bytes, key, watermarks,
    details). ``skipped(holder)`` builds the result when the lease is held by another run;
    with ``wait``, the lease is waited for (twice its duration) before skipping. Without a
    ledger, ``work()`` just runs.
    """
    if ledger is None:
        return work()
    wait_seconds = 2 * lease_seconds() if wait else 0.0
    attempt = f"{run_id}/{uuid.uuid4().hex[:8]}"  # a retry of the same run is another owner
    with ledger.lease(lease_name(stage, table), attempt, wait_seconds) as lease:
        holder = lease.holder
        started = now()
        record = LedgerRecord(stage=stage, table=table, run_id=run_id, mode=mode,
                              status="running", started_at=_iso(started), attempt=attempt)
        if holder is not None:
            ledger.put(record.model_copy(update={
                "status": "skipped", "ended_at": _iso(now()), "rows": 0,
                "details": {"lease_holder": holder.owner, "lease_expires_at":
                            holder.expires_at}}))
            return skipped(holder)
        ledger.put(record)
        clock = time.monotonic()
        token = _current.set(lease)
        try:
            result = work()
        except BaseException as exc:
            failed = record.model_copy(update={
                "status": "failed", "ended_at": _iso(now()),
                "seconds": round(time.monotonic() - clock, 3),
                "error_type": type(exc).__name__, "error_message": str(exc)[:2000]})
            try:
                ledger.put(failed)
            except Exception as ledger_error:
                exc.add_note(f"the ledger could not record this failure: {ledger_error}")
            raise
        finally:
            _current.reset(token)
        ledger.put(record.model_copy(update={
            "status": "succeeded", "ended_at": _iso(now()),
            "seconds": round(time.monotonic() - clock, 3), **summary(result)}))
        return result


def skip_reason(holder: LeaseHolder) -> str:
    """``"leased by run-… until 2026-12-01T10:01:00+00:00"``."""
    return f"leased by {holder.owner} until {holder.expires_at}"
