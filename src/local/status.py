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
from totes.contracts.identifiers import quote_ident
from totes.contracts.watermark import Watermark
from totes.load.pending import unloaded_batches
from totes.utils import postgres_cdc
from totes.utils.footers import read_high_watermark
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


class SlotStatus(BaseModel):
    """The replication slot of the ``cdc`` tables: ``retained_wal_bytes`` (WAL the source
    keeps for it), ``oldest_change_age_seconds`` (how long the oldest change not in the lake
    yet has waited; None when there is none), ``lake_through`` (the LSN every ``cdc`` table's
    batches hold every change up to: the newest position record) and ``confirmed_through``
    (the slot's: it moves to the lake's at the start of the next read), whether a reader
    holds it now, and whether the retained WAL passed ``cdc.retained_wal_alert_bytes``
    (``over_limit``: the state machine alerts)."""

    slot: str
    exists: bool
    retained_wal_bytes: Optional[int] = None
    oldest_change_age_seconds: Optional[float] = None
    lake_through: Optional[str] = None
    confirmed_through: Optional[str] = None
    active: Optional[bool] = None
    limit_bytes: int
    over_limit: bool = False


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


def _source_newest(source: SourceDatabase, plan) -> Optional[object]:
    with source.session("totes-status", f"reading the newest {plan.table} rows") as session:
        (newest,), = session.conn.run(
            f"SELECT max({quote_ident(plan.watermark_column)}) "  # nosec B608 (identifiers)
            f"FROM {quote_ident(plan.table)}")
    return newest


def _lag(newest, high: Optional[Watermark]) -> tuple[Optional[float], Optional[str]]:
    if newest is None:
        return None, None
    if high is None:
        return None, "everything"
    if high.integer is not None:
        return float(newest - high.integer), "rows"
    extracted = datetime.fromisoformat(high.value)
    if isinstance(newest, datetime) and newest.tzinfo is not None:
        newest = newest.astimezone(timezone.utc).replace(tzinfo=None)
    if extracted.tzinfo is not None:
        extracted = extracted.astimezone(timezone.utc).replace(tzinfo=None)
    return max((newest - extracted).total_seconds(), 0.0), "seconds"


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
        if source is not None and plan.watermark_column:
            try:
                newest = _source_newest(source, plan)
                status.source_newest = None if newest is None else str(newest)
                status.lag, status.lag_unit = _lag(newest, high)
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
                      limit_bytes=limit, over_limit=state.retained_bytes > limit)
