"""``totes status``: per table, what the ledger, the lake, the processed area, the warehouse and
the source say about where the pipeline stands.

Per table: its mode; its last successful ingest (when, rows, high watermark); whether a run
holds its lease now; its last failure; its lag (the source's newest watermark minus the one
extracted: seconds for a timestamp, a count for an integer watermark; only when the source is
reachable); the lake files no transform batch has taken. For the pipeline: the committed
batches the warehouse has not loaded, and the last transform and load.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from pydantic import BaseModel

from totes.contracts.cdc import lsn_text, parse_position, position_prefix
from totes.contracts.config import PipelineConfig, resolve_tables
from totes.contracts.errors import TotesError
from totes.contracts.metrics import as_json, metric
from totes.load.pending import unloaded_batches
from totes.utils import mysql_binlog, postgres_cdc
from totes.utils.footers import read_high_watermark, read_schema_record
from totes.utils.freshness import table_lag
from totes.utils.lake import Lake
from totes.utils.ledger import ALL_TABLES, Ledger, LedgerRecord, lease_name
from totes.utils.manifests import latest_manifest
from totes.utils.databases import SourceDatabase
from totes.utils.postgres import Database


class TableStatus(BaseModel):
    """One table's line of ``totes status --json``."""

    table: str
    mode: str
    last_success: Optional[LedgerRecord] = None
    last_batch: Optional[LedgerRecord] = None  # the last success that extracted rows
    last_failure: Optional[LedgerRecord] = None
    running: Optional[str] = None           # the run holding the lease now
    high_watermark: Optional[dict] = None   # the lake's (the truth)
    source_newest: Optional[str] = None
    lag: Optional[float] = None             # seconds, or rows for an integer watermark
    lag_unit: Optional[str] = None
    pending_lake_files: int = 0
    #: The table's source schema version (its newest batch's; None: no batch yet) and the
    #: last change the ledger recorded: ``{"version", "at", "changes": [...]}``
    #: (:mod:`totes.contracts.source_schema`).
    schema_version: Optional[int] = None
    schema_change: Optional[dict] = None
    #: The table's values of the metrics the functions publish (LagSeconds), with the same
    #: names and units (:func:`totes.contracts.metrics.as_json`).
    metrics: list[dict] = []


class SlotStatus(BaseModel):
    """The replication slot of the ``cdc`` tables: ``retained_wal_bytes`` (WAL the source
    keeps for it), ``oldest_change_age_seconds`` (how long the oldest change not in the lake
    yet has waited; None when there is none), ``lake_through`` (the LSN every ``cdc`` table's
    batches hold every change up to: the newest position record) and ``confirmed_through``
    (the slot's: it moves to the lake's at the start of the next read), whether a reader
    holds it now, and whether the retained WAL passed ``cdc.retained_wal_alert_bytes``
    (``over_limit``: the state machine alerts). From a MySQL source (no slot: the binlog's
    reader), ``lake_through`` is the binlog position the lake holds every change through,
    ``confirmed_through`` the binlog's end and ``binlog_behind_bytes`` the bytes of binlog
    between them (the WAL fields stay empty)."""

    slot: str
    exists: bool
    retained_wal_bytes: Optional[int] = None
    oldest_change_age_seconds: Optional[float] = None
    lake_through: Optional[str] = None
    confirmed_through: Optional[str] = None
    active: Optional[bool] = None
    limit_bytes: int
    over_limit: bool = False
    binlog_behind_bytes: Optional[int] = None
    metrics: list[dict] = []  # RetainedWalBytes, as the capture function publishes it


class PipelineStatus(BaseModel):
    """``totes status --json``."""

    tables: list[TableStatus]
    slot: Optional[SlotStatus] = None
    pending_batches: Optional[int] = None   # None: the warehouse could not be asked
    last_transform: Optional[LedgerRecord] = None
    last_load: Optional[LedgerRecord] = None
    notes: list[str] = []
    #: What could not be read (``source``, ``slot``, ``warehouse``) → the error's type; the
    #: command then exits 75 (all of them transient) or 1, after showing the rest.
    unreadable: dict[str, str] = {}
    #: Whether every unreadable part failed for a reason a retry can fix.
    retryable: bool = True


def _add_schema(status: TableStatus, lake: Lake, ledger: Ledger) -> None:
    """Fill ``status``' schema version (the newest batch's record) and its last change (the
    newest ingest record of the ledger that holds one)."""
    record = read_schema_record(lake, status.table)
    status.schema_version = record.version if record is not None else None
    changed = next((r for r in ledger.history("ingest", status.table, 200)
                    if r.status == "succeeded" and r.details.get("schema_changes")), None)
    if changed is not None:
        status.schema_change = {"version": changed.details.get("schema_version"),
                                "at": changed.ended_at,
                                "changes": changed.details["schema_changes"]}


def pipeline_status(config: PipelineConfig, ledger: Ledger, lake: Lake, processed: Lake,
                    warehouse: Optional[Database], source: Optional[SourceDatabase]
                    ) -> PipelineStatus:
    """Where the pipeline stands. A source or warehouse that cannot be reached leaves its
    columns empty, with a note, and is listed in ``unreadable`` (status still shows the
    rest; the command's exit code says that a part is missing).

    Raises:
        LakeError / StorageUnavailable: the lake or processed area could not be read.
    """
    notes = []
    failed: dict[str, TotesError] = {}
    _, manifest = latest_manifest(processed)
    taken = manifest.lake if manifest else {}
    tables = []
    for plan in resolve_tables(config):
        high = read_high_watermark(lake, plan.table)
        holder = ledger.holder(lease_name("ingest", plan.table))
        status = TableStatus(
            table=plan.table, mode=plan.mode,
            last_success=ledger.last("ingest", plan.table, "succeeded"),
            last_batch=next((r for r in ledger.history("ingest", plan.table, 200)
                             if r.status == "succeeded" and r.key), None),
            last_failure=ledger.last("ingest", plan.table, "failed"),
            running=holder.owner if holder else None,
            high_watermark=high.model_dump() if high else None,
            pending_lake_files=len(lake.keys_after(plan.table, taken.get(plan.table))))
        _add_schema(status, lake, ledger)
        if source is not None and plan.watermark_column:
            try:
                lag = table_lag(source, lake, plan, high)
                status.source_newest, status.lag, status.lag_unit = \
                    lag.source_newest, lag.value, lag.unit
                if lag.seconds is not None:
                    status.metrics = as_json([metric("LagSeconds", lag.seconds,
                                                     table=plan.table)])
            except TotesError as exc:
                notes.append(f"source not read for {plan.table}: {exc}")
                failed["source"] = exc
                source = None  # one note, not one per table
        tables.append(status)
    slot = None
    if source is not None and any(p.extract_type == "cdc" for p in resolve_tables(config)):
        try:
            slot = slot_status(config, source, lake)
        except TotesError as exc:
            notes.append(f"replication slot {config.cdc.slot} not read: {exc}")
            failed["slot"] = exc
    pending = None
    if warehouse is not None:
        try:
            pending = unloaded_batches(processed, warehouse)
        except TotesError as exc:
            notes.append(f"warehouse not read: {exc}")
            failed["warehouse"] = exc
    return PipelineStatus(tables=tables, slot=slot, pending_batches=pending,
                          last_transform=ledger.last("transform", ALL_TABLES),
                          last_load=ledger.last("load", ALL_TABLES), notes=notes,
                          unreadable={part: type(exc).__name__ for part, exc in failed.items()},
                          retryable=all(exc.retryable for exc in failed.values()))


def slot_status(config: PipelineConfig, source: SourceDatabase, lake: Lake) -> SlotStatus:
    """The health of the pipeline's replication slot (:class:`SlotStatus`).

    Raises:
        DatabaseUnavailable / TerminalError: the source could not be asked.
        LakeError / StorageUnavailable: the lake's position record could not be read.
    """
    slot, limit = config.cdc.slot, config.cdc.retained_wal_alert_bytes
    key = lake.newest_key(position_prefix(slot), "json")
    position = parse_position(lake.read_bytes(key), lake.describe(key)) if key else None
    if getattr(source, "engine", "postgresql") == "mysql":
        with source.session("totes-status", "reading where the binlog ends") as session:
            head, base = mysql_binlog.head(session.conn)
            logs = mysql_binlog.binary_logs(session.conn)
        through_at = position.through_lsn if position else None
        return SlotStatus(
            slot=slot, exists=True, limit_bytes=limit,
            lake_through=None if through_at is None else
            mysql_binlog.position_text(through_at, base),
            confirmed_through=mysql_binlog.position_text(head, base),
            binlog_behind_bytes=0 if through_at is None else
            mysql_binlog.behind_bytes(logs, through_at))
    with source.session("totes-status", f"reading replication slot {slot}") as session:
        state = postgres_cdc.slot_state(session.conn, slot)
        if state is None:
            return SlotStatus(slot=slot, exists=False, limit_bytes=limit)
        through = max(state.confirmed_flush, position.through_lsn if position else 0)
        oldest = postgres_cdc.oldest_change_time(session.conn, slot, config.cdc.publication,
                                                 through, config.cdc.max_changes_per_run)
    age = None if oldest is None else \
        max((datetime.now(timezone.utc) - oldest).total_seconds(), 0.0)
    return SlotStatus(slot=slot, exists=True, retained_wal_bytes=state.retained_bytes,
                      oldest_change_age_seconds=age, lake_through=lsn_text(through),
                      confirmed_through=lsn_text(state.confirmed_flush), active=state.active,
                      limit_bytes=limit, over_limit=state.retained_bytes > limit,
                      metrics=as_json([metric("RetainedWalBytes", state.retained_bytes,
                                              stage="capture")]))
