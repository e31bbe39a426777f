"""``totes check``: can a run work here? Each part a run touches, checked on its own.

The settings and the pipeline file; the source (reachable, every configured table and column
readable, change data capture ready where configured: what plan checks); the warehouse (not
the source, the role can create the star schema in its schema and owns its tables); the lake
and the processed area (reachable, writable where that can be known without writing); the
ledger. Each connection waits at most ``TOTES_CONNECT_TIMEOUT_SECONDS`` to be answered. A
check that fails says what to fix and does not stop the others, as ``dbt debug`` reports
each connection.

JSON (``totes check --json``)::

    {"ok": false, "seconds": 0.41, "checks": [
      {"check": "source", "ok": true, "detail": "source database totesys at …: 11 tables
       readable", "error": null, "retryable": null, "seconds": 0.12}, ...]}
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

from pydantic import BaseModel

from totes.contracts.errors import ConfigError, LakeError, StorageUnavailable, TotesError
from totes.contracts.stage_results import counted
from totes.utils.lake import Lake
from totes.utils.manifests import latest_manifest


class Check(BaseModel):
    """One part: ``ok``, what was found (``detail``) or what is wrong (``error``: the error's
    type; ``detail`` its message, which says what to fix), and whether a retry may help."""

    check: str
    ok: bool
    detail: str
    error: Optional[str] = None
    retryable: Optional[bool] = None
    seconds: float


class CheckResult(BaseModel):
    """Every check, in order; ``ok`` when all passed."""

    ok: bool
    checks: list[Check]
    seconds: float

    @property
    def retryable(self) -> bool:
        """Whether every failed check may pass on a retry (a server or store that did not
        answer), rather than needing a fix."""
        return all(c.retryable for c in self.checks if not c.ok)


def _timed(name: str, work: Callable[[], str]) -> Check:
    started = time.monotonic()
    try:
        detail = work()
    except TotesError as exc:
        return Check(check=name, ok=False, detail=str(exc), error=type(exc).__name__,
                     retryable=exc.retryable, seconds=round(time.monotonic() - started, 3))
    return Check(check=name, ok=True, detail=detail,
                 seconds=round(time.monotonic() - started, 3))


def storage_check(store: Lake, what: str) -> str:
    """``store`` can be listed, and (a directory) written: a description of what it holds.

    Raises:
        LakeError: a directory that this process may not write, a bucket that does not
            exist or may not be read.
        StorageUnavailable: the store did not answer, or is a read-only filesystem (as a
            write there would fail: retry once it is writable).
    """
    if store.is_local and os.statvfs(store.root).f_flag & os.ST_RDONLY:
        raise StorageUnavailable(f"the {what} {store.root} is on a read-only filesystem "
                                 "(remounted after a disk error?): writing there fails "
                                 "until it is writable again")
    if store.is_local and not os.access(store.root, os.W_OK | os.X_OK):
        raise LakeError(f"the {what} {store.root} is not writable by this user: fix its "
                        f"permissions, or point {what} at another directory")
    tables = store.folders()
    return (f"{store.uri}: {counted(len(tables), 'folder')}"
            + (f" ({', '.join(tables[:4])}{', …' if len(tables) > 4 else ''})"
               if tables else " (empty: the first run fills it)")
            + ("" if store.is_local else "; readable (writing is not tried)"))


def check_everything(workspace) -> CheckResult:
    """Run every check of the module docstring on ``workspace``
    (:class:`~totes.local.workspace.Workspace`) and return them all; never raises for a
    part that fails (it is a failed :class:`Check`)."""
    from totes.ingest.plan import plan
    from totes.load.warehouse import check_separate, check_warehouse

    started = time.monotonic()
    checks: list[Check] = []
    config = None

    def configuration() -> str:
        nonlocal config
        config = workspace.config()
        from totes.contracts.config import resolve_tables

        tables = resolve_tables(config)
        return f"{workspace.config_path}: {counted(len(tables), 'table')} configured"
    checks.append(_timed("configuration", configuration))

    source = None

    def source_check() -> str:
        nonlocal source
        if config is None:
            raise ConfigError("not checked: the configuration could not be read (see its "
                              "check)")
        source = workspace.database("source")
        if workspace.is_embedded("source") and workspace.source_is_empty():
            return (f"the {source.describe()} (embedded) is empty: the first `totes run` "
                    "seeds it with the ToteSys snapshot")
        planned = plan(config, source)
        captured = planned.capture.tables if planned.capture is not None else []
        cdc = " (change data capture ready)" if captured else ""
        warned = "".join(f"; {w}" for w in planned.warnings)
        tables = counted(len(planned.tables) + len(captured), "table")
        return f"the {source.describe()}: {tables} readable{cdc}{warned}"
    checks.append(_timed("source", source_check))

    def warehouse_check() -> str:
        warehouse = workspace.database("warehouse")
        if source is not None:
            check_separate(source, warehouse)
        from totes.contracts.config import raw_tables
        from totes.load.raw import raw_schema
        from totes.load.warehouse import warehouse_schema

        raw = raw_schema() if config is not None and raw_tables(config) else None
        check_warehouse(warehouse, raw_schema=raw)
        return (f"the {warehouse.describe()}: the role may create the star schema in schema "
                f"{warehouse_schema()} and owns its tables"
                + (f"; and the raw layer in schema {raw}" if raw else ""))
    checks.append(_timed("warehouse", warehouse_check))
    checks.append(_timed("lake", lambda: storage_check(workspace.lake(), "lake")))

    def processed_check() -> str:
        processed = workspace.processed()
        described = storage_check(processed, "processed area")
        key, _ = latest_manifest(processed)
        return described + (f"; newest batch {key}" if key else "")
    checks.append(_timed("processed", processed_check))

    def ledger_check() -> str:
        ledger = workspace.ledger()
        ledger.history(limit=1)
        return f"{ledger.describe()}: readable"
    checks.append(_timed("ledger", ledger_check))
    return CheckResult(ok=all(c.ok for c in checks), checks=checks,
                       seconds=round(time.monotonic() - started, 3))
