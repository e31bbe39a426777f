"""What each stage returns: the JSON documents that pass between the states of the state machine
(``main-terraform/state_machine.asl.json`` selects fields of them by name), the local runner
and the command line's ``--json``. A handler returns ``result.model_dump(mode="json")``; a test
checks that every field the state machine selects exists here.

Units: ``seconds`` are wall-clock seconds of the stage (3 decimals), ``bytes`` are bytes,
``rows`` are rows; timestamps are UTC text as PostgreSQL prints them.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, model_validator

from totes.contracts.config import CapturePlan, TablePlan
from totes.contracts.watermark import Watermark


def counted(count: int, noun: str, plural: Optional[str] = None) -> str:
    """``1 row version``, ``2 row versions``, ``48,066 rows``: a count with its noun in the
    number it takes (``plural`` when adding an s is wrong: ``counted(2, "batch",
    "batches")``)."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanResult(_Result):
    """The plan step's output, the input of the Map over tables::

        {"tables": [<TablePlan>, ...], "capture": <CapturePlan> | null,
         "items": [...], "left_out": ["currency", ...]}

    ``tables``: the tables read by a cursor (incremental, full), one Map item each;
    ``capture``: the ``cdc`` tables, read from the change log by one reader; ``items``: the
    Map's items, the tables' payloads and, when there are ``cdc`` tables, one for the reader
    (``{"table": "capture:<slot>", "job_type": "capture", "capture": <CapturePlan>, ...}``).
    ``left_out``: the configured tables this run does not extract (the run named others).
    ``warnings``: what plan advises without failing (a large table without an index on its
    watermark, with the statement that adds one).
    """

    tables: list[TablePlan]
    capture: Optional[CapturePlan] = None
    items: list[dict] = []
    left_out: list[str] = []
    warnings: list[str] = []


class HeldBackBy(_Result):
    """The source transaction that held an extract's cutoff back for more than a minute:
    rows changed after it started wait until it ends. An idle one (``idle in transaction``)
    is usually a client that forgot to commit: ``SELECT pg_terminate_backend(<pid>)`` ends
    it."""

    pid: int
    role: Optional[str]
    application_name: str
    state: str
    transaction_age_seconds: float


class IngestResult(_Result):
    """One table's ingest (a Map item's output)::

        {"table": "payment", "mode": "incremental",
         "key": "payment/2024/11/15/144010123000.parquet" | null,
         "rows": 15836, "row_groups": 2, "bytes": 702115,
         "low_watermark": null | {"timestamp": "...", "primary_key": 1},
         "high_watermark": {"timestamp": "2024-11-15 14:40:10.123000", "primary_key": 15836},
         "cutoff": "2026-11-22 15:00:00.123456", "seconds": 1.23, "peak_arrow_bytes": 4194304}

    ``key`` is null when no row was extracted; ``high_watermark`` is the table's incremental
    watermark after the run (a backfill leaves it as it was; a full snapshot gives its
    greatest). ``range`` is a backfill's ``{"from", "to"}``; ``vanished_rows`` counts, for a
    full snapshot, the rows of the previous snapshot no longer in the source.
    ``parts`` lists a partitioned batch's parts (key, rows, bounds).
    ``keys`` lists, oldest first, every batch of an extract that landed as more than one
    (``max_batch_rows``; ``key`` is then the newest, and ``rows``, ``row_groups`` and
    ``bytes`` are the sums); null otherwise.
    ``skipped`` says why the table was not extracted (another run holds its lease).
    ``cutoff`` is the instant the extract stopped short of (in-flight transactions).
    ``peak_arrow_bytes`` is the most memory Arrow held at once during the extract.
    ``held_back_by`` names an old open source transaction that held the cutoff back.
    A ``cdc`` table's result (mode ``cdc``, or ``cdc_snapshot`` for its initial copy) also
    gives ``changes`` (the versions read from the log by operation: ``{"insert": 3,
    "update": 5, "delete": 1}``), ``through_lsn`` (the log position its batches now hold
    every change up to, as PostgreSQL writes an LSN: ``0/16B0A40``) and, when a TRUNCATE or
    a schema change read from the log stopped it, ``stopped`` (what happened and what to do).
    A table with ``delete_detection: keys`` whose run compared the keys gives
    ``delete_detection``: ``{"source_keys": 11187, "lake_keys": 11188, "deleted": 1,
    "key": "sales_order/2024/11/15/142009952001.parquet" | null}``.
    A polled table's batch gives ``schema_version`` (the table's schema version it was
    written with) and, when the source's schema changed since the newest batch,
    ``schema_changes`` (``[{"column": "units_sold", "change": "widened", "old_type":
    "integer", "new_type": "bigint", "action": "evolved"}]``,
    :mod:`totes.contracts.source_schema`).
    """

    table: str
    mode: str = "incremental"
    key: Optional[str]
    rows: int
    row_groups: int
    bytes: int
    low_watermark: Optional[Watermark]
    high_watermark: Optional[Watermark]
    range: Optional[dict[str, str]] = None
    vanished_rows: Optional[int] = None
    parts: Optional[list[dict]] = None
    keys: Optional[list[str]] = None
    cutoff: str
    held_back_by: Optional[HeldBackBy] = None
    skipped: Optional[str] = None
    ledger_note: Optional[str] = None
    schema_version: Optional[int] = None
    schema_changes: Optional[list[dict]] = None
    run_id: Optional[str] = None
    seconds: float
    peak_arrow_bytes: int
    changes: Optional[dict[str, int]] = None
    through_lsn: Optional[str] = None
    delete_detection: Optional[dict] = None
    stopped: Optional[str] = None


class CaptureResult(_Result):
    """One read of the change log for every ``cdc`` table (the Capture step's output)::

        {"slot": "totes", "tables": [<IngestResult>, ...],
         "position": "_cdc/totes/2026/12/04/101500123456.json" | null,
         "through_lsn": "0/16B0A40", "transactions": 12, "changes": 40,
         "stopped": {"payment": "TRUNCATE ..."}, "skipped": null, "seconds": 0.4}

    ``position``: the position record this read committed (null when it read nothing new);
    ``transactions``/``changes``: what it read from the log (the changes of the tables'
    versions, before several changes of a row in one transaction became one version);
    ``stopped``: the tables a TRUNCATE or a schema change stopped (their batches stop short
    of it, and the slot is not advanced past it until a person acts: the message says how);
    ``skipped``: why nothing was read (another run holds the reader's lease);
    ``retained_wal_bytes``: the WAL the source keeps for the slot after the read, and
    ``warning`` when it passed ``cdc.retained_wal_alert_bytes`` (an alert, not a failure)."""

    slot: str
    tables: list[IngestResult]
    position: Optional[str] = None
    through_lsn: Optional[str] = None
    transactions: int = 0
    changes: int = 0
    stopped: dict[str, str] = {}
    skipped: Optional[str] = None
    retained_wal_bytes: Optional[int] = None
    warning: Optional[str] = None
    seconds: float


class TableOutput(_Result):
    """One processed file of a transform batch: ``{"table": "fact_payment", "key":
    "fact_payment/2024/11/15/144010123000.parquet", "rows": 15836}``."""

    table: str
    key: str
    rows: int


class RebuildResult(_Result):
    """``totes transform --rebuild``'s output::

        {"batch": "_manifests/2024/11/15/144010123000.json",
         "repair": "_repairs/2026/12/04/183000000000.json",
         "replaced": {"fact_sales_order/....parquet": "fact_sales_order/....parquet"},
         "rows": {"fact_sales_order": 1204, "_state/address": 30}, "seconds": 0.8}

    ``replaced`` maps every file of the batch to its rebuilt file; ``rows`` counts the rows
    of each rebuilt file (checked equal to the batch's own counts where it recorded them).
    """

    batch: str
    repair: str
    replaced: dict[str, str]
    rows: dict[str, int]
    seconds: float


class TransformResult(_Result):
    """The transform step's output::

        {"manifest": "_manifests/2024/11/15/144010123000.json" | null, "source_files": 11,
         "tables": [<TableOutput>, ...], "quarantined": {"sales_order": 1},
         "quarantined_rows": 1, "seconds": 2.1}

    ``manifest`` is null and ``tables`` empty when the lake had nothing new, or when another
    run held the transform lease for longer than this one waited (``skipped`` says so).
    ``quarantined`` counts, per source table, the row versions this batch held in quarantine
    (they broke a rule; the rest of the batch went on); ``quarantined_rows`` is their sum.
    ``more``: lake files beyond this batch's bound wait (``TOTES_TRANSFORM_MAX_ROWS`` per
    source table); the state machine, and ``totes run``, transform and load again.
    """

    manifest: Optional[str]
    source_files: int
    tables: list[TableOutput]
    quarantined: dict[str, int] = {}
    quarantined_rows: int = 0
    more: bool = False
    skipped: Optional[str] = None
    seconds: float


class LoadedTable(_Result):
    """One warehouse table's share of a load: rows staged, rows inserted, rows updated
    (dimension rows replaced by newer versions; facts are never updated)."""

    table: str
    rows: int = 0
    inserted: int = 0
    updated: int = 0


class RawLoaded(_Result):
    """One table's share of a load into the raw layer (:mod:`totes.load.raw`): the lake
    batches loaded, their rows, and the row versions inserted (a version already there is
    not inserted again). ``relation``: the raw table, ``raw.<table>``; ``more``: lake
    batches beyond the load's bound wait."""

    table: str
    relation: str = ""
    batches: int = 0
    rows: int = 0
    inserted: int = 0
    more: bool = False


class LoadResult(_Result):
    """The load step's output::

        {"batches": ["_manifests/2024/11/15/144010123000.json"],
         "tables": [<LoadedTable>, ...], "held": {"fact_sales_order": 1}, "held_rows": 1,
         "released": {"fact_sales_order": 3}, "waiting": {"fact_sales_order": 1},
         "seconds": 3.2}

    ``batches`` are the manifest keys loaded, in batch order; empty when none was pending (or
    another run held the load lease: ``skipped``).
    ``held``: fact rows this load set aside because a foreign key has no dimension row yet
    (``held_rows`` is their sum); ``released``: held rows this load inserted because their
    dimension rows had arrived; ``waiting``: every fact row still held after this load
    (``waiting_rows`` is their sum).
    ``raw``: per table of the raw layer that took lake batches, a :class:`RawLoaded`.
    ``more``: committed batches beyond this load's bounds (``TOTES_LOAD_MAX_BATCHES``,
    ``TOTES_LOAD_MAX_ROWS``), or lake batches of a raw table beyond
    ``TOTES_LOAD_MAX_BATCHES``, wait; the state machine, and ``totes run``, load again.
    """

    batches: list[str]
    tables: list[LoadedTable]
    held: dict[str, int] = {}
    held_rows: int = 0
    released: dict[str, int] = {}
    waiting: dict[str, int] = {}
    waiting_rows: int = 0
    raw: list[RawLoaded] = []
    more: bool = False
    skipped: Optional[str] = None
    seconds: float


# ---- reconciliation ------------------------------------------------------------------------
class Difference(_Result):
    """One disagreement: the warehouse table, the row's key, the column (None for a missing
    or extra row), both values as text, and what is wrong."""

    table: str
    key: dict
    column: Optional[str] = None
    source: Optional[str] = None
    warehouse: Optional[str] = None
    problem: str


class TableReconciliation(_Result):
    """One warehouse table against its source table (rows: keys compared). ``scoped_keys``:
    None when the whole table was compared, else how many source ids a reconciliation
    scoped to a load compared (the ids that load brought). ``key_range``: in a step of a
    bounded reconciliation, the fact's source ids compared, ``[from, before)`` (either end
    None: unbounded; ``[None, None]``: every id, in one range); None outside such a step."""

    table: str
    source_table: str
    source_rows: int
    warehouse_rows: int
    pending: int
    held: int = 0
    quarantined: int = 0
    differences: int
    loaded_through: Optional[str]
    listed: list[Difference]
    scoped_keys: Optional[int] = None
    key_range: Optional[list[Optional[int]]] = None


class SumCheck(_Result):
    """A fact's money column summed per currency, over the rows compared."""

    table: str
    column: str
    currency: str
    source: str
    warehouse: str
    equal: bool


class ReconcileCursor(_Result):
    """Where the next step of a bounded reconciliation begins:
    ``{"fact": "fact_sales_order", "raw_table": null, "start": 1048577}``, the fact (or, once
    the facts are done, ``raw_table``: the raw layer's table, by its source table's name) and
    its first source id to compare (``start`` None: from its first id)."""

    fact: Optional[str] = None
    raw_table: Optional[str] = None
    start: Optional[int] = None

    @model_validator(mode="after")
    def _one_table(self) -> "ReconcileCursor":
        if (self.fact is None) == (self.raw_table is None):
            raise ValueError("a reconcile cursor names a fact or a raw table (one of them)")
        return self


class ReconcileResult(_Result):
    """Everything :func:`totes.reconcile.reconcile.reconcile` found (its module docstring shows
    the JSON): the output of ``totes reconcile --json`` and of the state machine's Reconcile
    step. ``resume``: after a step of a bounded reconciliation
    (:func:`totes.reconcile.reconcile.reconcile_step`), where the next step begins
    (:class:`ReconcileCursor`), None when the step compared the last range."""

    equal: bool
    differences: int
    tables: list[TableReconciliation]
    sums: list[SumCheck]
    seconds: float
    resume: Optional[ReconcileCursor] = None

    def summary(self) -> str:
        """One line: ``reconcile: source and warehouse agree (11 tables, 48,066 rows; 2
        pending)`` or ``reconcile: 3 differences (fact_payment 1, dim_staff 1, …)``, with
        the rows pending, held and quarantined; after a load, the ids each fact was
        compared on (``facts on the ids the load brought: fact_sales_order all (too many to
        scope), fact_purchase_order 0, fact_payment 12``)."""
        waiting = "".join(
            f"; {n:,} {what}" for what, n in (
                ("pending", sum(t.pending for t in self.tables)),
                ("held", sum(t.held for t in self.tables)),
                ("quarantined", sum(t.quarantined for t in self.tables))) if n)
        facts = [t for t in self.tables if t.table.startswith("fact_")]
        if any(t.scoped_keys is not None for t in facts):
            waiting += "; facts on the ids the load brought: " + ", ".join(
                f"{t.table} all (too many to scope)" if t.scoped_keys is None else
                f"{t.table} {t.scoped_keys:,}" for t in facts)
        if self.equal:
            tables = counted(len(self.tables), "table")
            rows = counted(sum(t.source_rows for t in self.tables), "row")
            return f"reconcile: source and warehouse agree ({tables}, {rows}{waiting})"
        where = ", ".join(f"{t.table} {t.differences:,}" for t in self.tables if t.differences)
        sums = sum(1 for s in self.sums if not s.equal)
        differ = f"; {counted(sums, 'sum')} {'differs' if sums == 1 else 'differ'}" \
            if sums else ""
        return (f"reconcile: {counted(self.differences, 'difference')} ({where}{differ})"
                f"{waiting}")


class RunResult(_Result):
    """A whole local run (``totes run --json``): every stage's output and the run's seconds.
    ``ingest`` holds one result per table, the ``cdc`` tables' included; ``capture`` is the
    read of the change log that brought those (null without ``cdc`` tables)."""

    run_id: Optional[str] = None
    plan: PlanResult
    ingest: list[IngestResult]
    capture: Optional[CaptureResult] = None
    transform: TransformResult
    load: LoadResult
    reconcile: Optional[ReconcileResult] = None
    seconds: float


class WarehouseRebuildResult(_Result):
    """``totes rebuild``'s output (:func:`totes.local.rebuild.rebuild_warehouse`)::

        {"table": null, "tables": ["dim_date", "dim_staff", ..., "fact_payment"],
         "transform": {...TransformResult...}, "load": {...LoadResult...},
         "reconcile": {...ReconcileResult...} | null,
         "swapped": ["\"public\".\"dim_staff\"", ...],
         "previous": {"star": "public_previous", "bookkeeping": "totes_previous",
                      "processed": "/path/processed/.previous" | null},
         "seconds": 14.2}

    ``table`` is the source table of ``--table`` (None: everything), ``tables`` the star
    tables re-derived and swapped; ``transform`` and ``load`` combine the bounded steps that
    re-derived them from every lake batch; ``swapped`` lists the relations now live (tables,
    views, bookkeeping), ``previous`` where the replaced ones are kept until the next
    rebuild (``processed`` only after a full rebuild, whose processed area replaces the
    live one).
    """

    table: Optional[str]
    tables: list[str]
    transform: TransformResult
    load: LoadResult
    reconcile: Optional[ReconcileResult]
    swapped: list[str]
    previous: dict[str, Optional[str]]
    seconds: float


def combined_transforms(results: list[TransformResult]) -> TransformResult:
    """One result for the transform batches of one run, in order (one result unchanged):
    the newest manifest, every table output, the sums of files, rows set aside and
    seconds; ``more`` as the last one says."""
    if len(results) == 1:
        return results[0]
    quarantined: dict[str, int] = {}
    for result in results:
        for table, rows in result.quarantined.items():
            quarantined[table] = quarantined.get(table, 0) + rows
    return TransformResult(
        manifest=next((r.manifest for r in reversed(results) if r.manifest), None),
        source_files=sum(r.source_files for r in results),
        tables=[t for r in results for t in r.tables], quarantined=quarantined,
        quarantined_rows=sum(quarantined.values()), more=results[-1].more,
        skipped=results[-1].skipped, seconds=round(sum(r.seconds for r in results), 3))


def combined_loads(results: list[LoadResult]) -> LoadResult:
    """One result for the loads of one run, in order (one result unchanged): every batch,
    each table's rows (and each raw table's) summed, held and released rows summed, what
    still waits after the last; ``more`` as the last one says."""
    if len(results) == 1:
        return results[0]
    tables: dict[str, LoadedTable] = {}
    held: dict[str, int] = {}
    released: dict[str, int] = {}
    raw: dict[str, RawLoaded] = {}
    for result in results:
        for t in result.tables:
            before = tables.get(t.table, LoadedTable(table=t.table))
            tables[t.table] = LoadedTable(table=t.table, rows=before.rows + t.rows,
                                          inserted=before.inserted + t.inserted,
                                          updated=before.updated + t.updated)
        for into, counts in ((held, result.held), (released, result.released)):
            for table, rows in counts.items():
                into[table] = into.get(table, 0) + rows
        for r in result.raw:
            prior = raw.get(r.table, RawLoaded(table=r.table, relation=r.relation))
            raw[r.table] = RawLoaded(table=r.table, relation=r.relation,
                                     batches=prior.batches + r.batches,
                                     rows=prior.rows + r.rows,
                                     inserted=prior.inserted + r.inserted, more=r.more)
    return LoadResult(batches=[b for r in results for b in r.batches],
                      tables=list(tables.values()), held=held, held_rows=sum(held.values()),
                      released=released, waiting=results[-1].waiting,
                      waiting_rows=results[-1].waiting_rows, raw=list(raw.values()),
                      more=results[-1].more,
                      skipped=results[-1].skipped,
                      seconds=round(sum(r.seconds for r in results), 3))
