"""``totes rebuild``: derive the star schema again from every lake batch, reconcile it, and
swap it in, in one transaction.

The lake holds every row version the pipeline ever read, so the star schema is a function of
it (and of the rules). After a change of the rules (a new dimension attribute, a corrected
derivation), or when the processed area is lost or damaged, :func:`rebuild_warehouse`:

1. takes the ``transform`` and ``load`` leases (no other run transforms or loads meanwhile;
   ingest goes on, and what it adds is picked up by the rebuild or by the next run);
2. transforms every lake batch into a scratch processed area (``<processed>/.rebuild``) and
   loads it into scratch warehouse schemas (``<star>_rebuild``, ``<bookkeeping>_rebuild``),
   in the same bounded steps as a run (``TOTES_TRANSFORM_MAX_ROWS``,
   ``TOTES_LOAD_MAX_BATCHES``), until nothing is pending;
3. reconciles the rebuilt schema with the source (:func:`totes.reconcile.reconcile.reconcile`,
   whole); a difference stops the rebuild with nothing swapped
   (:class:`~totes.contracts.errors.ReconciliationFailed`), the rebuilt tables left in
   ``<star>_rebuild`` to inspect;
4. swaps the rebuilt tables in, in one transaction (:func:`totes.load.swap.swap_in`); the
   replaced ones are kept in ``<star>_previous`` (and ``<bookkeeping>_previous``) until the
   next rebuild;
5. after a full rebuild, adopts the scratch processed area: the live one moves to
   ``<processed>/.previous`` and the scratch one into its place, so the next run's transform
   carries on from the rebuilt batches. The swap's transaction records this move
   (``<bookkeeping>.rebuild_adoption``); until it is done a load refuses to start, and the
   next ``totes rebuild`` finishes it first.

With ``table`` (``--table T``), only the star tables derived from source table ``T`` are
swapped (the dimensions whose rule reads it, its fact); the live processed area and the load's
bookkeeping stay, and the next runs add to the rebuilt tables as to the others.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from totes.contracts.errors import ConfigError, LeaseHeld, ReconciliationFailed
from totes.contracts.identifiers import quote_ident
from totes.contracts.stage_results import WarehouseRebuildResult
from totes.contracts.star_schema import TABLES
from totes.load.swap import (SwapPlan, marker_table, previous_schema, scratch_schema,
                             swap_in)
from totes.load.warehouse import check_warehouse, load
from totes.local.runner import Resources, combined_loads, combined_transforms
from totes.rules.dimensions import DIMENSION_RULES
from totes.rules.facts import FACT_SOURCES
from totes.transform.run import transform
from totes.utils import settings
from totes.utils.lake import Lake
from totes.utils.ledger import ALL_TABLES, new_run_id
from totes.utils.postgres import Database
from totes.utils.run_tracking import skip_reason, tracked

log = logging.getLogger(__name__)

#: The scratch processed area (inside the processed area; hidden from its listings).
SCRATCH_FOLDER = ".rebuild"
#: Where a full rebuild keeps the processed area it replaced, until the next one.
PREVIOUS_FOLDER = ".previous"


def derived_tables(source_table: Optional[str]) -> list[str]:
    """The star tables derived from ``source_table`` (every table for None), in
    :data:`~totes.contracts.star_schema.TABLES` order: the dimensions whose rule reads it
    (:data:`~totes.rules.dimensions.DIMENSION_RULES`) and its fact
    (:data:`~totes.rules.facts.FACT_SOURCES`).

    Raises:
        ConfigError: no star table derives from ``source_table`` (the message lists the
            tables that do).
    """
    if source_table is None:
        return list(TABLES)
    found = {rule.table for rule in DIMENSION_RULES if source_table in rule.sources}
    if source_table in FACT_SOURCES:
        found.add(FACT_SOURCES[source_table][0])
    if not found:
        readable = sorted({s for rule in DIMENSION_RULES for s in rule.sources}
                          | set(FACT_SOURCES))
        raise ConfigError(f"no star-schema table derives from source table {source_table!r}: "
                          f"the rules read {', '.join(readable)}. A table no rule reads is "
                          "in the raw layer (raw.<table>), which a rebuild leaves alone")
    return [name for name in TABLES if name in found]


def rebuild_warehouse(resources: Resources, source_table: Optional[str] = None,
                      reconcile: bool = True,
                      on_stage: Callable[[str, object], None] = lambda stage, result: None
                      ) -> WarehouseRebuildResult:
    """Rebuild the star schema (or, with ``source_table``, the tables derived from it) from
    every lake batch, as the module docstring says; ``on_stage(stage, result)`` is called
    after each transform and load step, the reconciliation and the swap (for progress).

    Raises:
        ConfigError: ``source_table`` derives no star table.
        LeaseHeld: a transform or load is running (retry when it has ended).
        ReconciliationFailed: the rebuilt schema differs from the source; nothing swapped.
        DatabaseUnavailable: the swap could not lock the tables within
            :data:`totes.load.swap.SWAP_SECONDS` (retry), or a database broke off.
        and what transform, load and reconcile raise.
    """
    started = time.monotonic()
    tables = derived_tables(source_table)
    full = source_table is None
    current = settings.current()
    star, book = current.warehouse_schema, current.bookkeeping_schema
    warehouse, processed = resources.warehouse, resources.processed
    check_warehouse(warehouse)
    run_id = new_run_id()

    def work() -> WarehouseRebuildResult:
        _finish_adoption(warehouse, processed, book)
        processed.remove_folder(SCRATCH_FOLDER)
        _drop_schemas(warehouse, scratch_schema(star), scratch_schema(book))
        scratch = Lake(f"{processed.uri}/{SCRATCH_FOLDER}")
        with settings.overridden(warehouse_schema=scratch_schema(star),
                                 bookkeeping_schema=scratch_schema(book)):
            transforms, loads = [], []
            while True:
                transforms.append(transform(resources.lake, scratch, run_id=run_id))
                on_stage("transform", transforms[-1])
                loads.append(load(scratch, warehouse, run_id=run_id))
                on_stage("load", loads[-1])
                if not ((transforms[-1].more and transforms[-1].manifest)
                        or (loads[-1].more and loads[-1].batches)):
                    break
            checked = None
            if reconcile:
                from totes.reconcile.reconcile import reconcile as reconcile_warehouse

                checked = reconcile_warehouse(resources.source, warehouse, raw=[])
                on_stage("reconcile", checked)
        if checked is not None and not checked.equal:
            raise ReconciliationFailed(
                f"the rebuilt star schema differs from the source ({checked.summary()}): "
                f"nothing was swapped; the rebuilt tables are in schema "
                f"{scratch_schema(star)} (`totes reconcile` with TOTES_WAREHOUSE_SCHEMA="
                f"{scratch_schema(star)} and TOTES_BOOKKEEPING_SCHEMA={scratch_schema(book)} "
                "lists the differences)")
        names = scratch.entries()
        marker = {"scratch": SCRATCH_FOLDER, "names": names} if full else None
        swapped = swap_in(warehouse, SwapPlan(star=star, book=book, tables=tables,
                                              bookkeeping=full, marker=marker))
        on_stage("swap", swapped)
        if full:
            _adopt(processed, names)
            _adopted(warehouse, book)
        else:
            processed.remove_folder(SCRATCH_FOLDER)
        return WarehouseRebuildResult(
            table=source_table, tables=tables, transform=combined_transforms(transforms),
            load=combined_loads(loads), reconcile=checked, swapped=swapped,
            previous={"star": previous_schema(star), "bookkeeping": previous_schema(book),
                      "processed": processed.describe(PREVIOUS_FOLDER) if full else None},
            seconds=round(time.monotonic() - started, 3))

    def held(stage: str):
        def skipped(holder) -> WarehouseRebuildResult:
            raise LeaseHeld(f"a {stage} is running ({skip_reason(holder)}): run "
                            "`totes rebuild` again when it has ended")
        return skipped

    def summary(result: WarehouseRebuildResult) -> dict:
        return {"rows": sum(t.inserted + t.updated for t in result.load.tables),
                "details": {"tables": result.tables, "swapped": result.swapped,
                            "source_table": result.table}}

    ledger = resources.ledger
    return tracked(ledger, "transform", ALL_TABLES, run_id, "rebuild", lambda: tracked(
        ledger, "load", ALL_TABLES, run_id, "rebuild", work, held("load"), summary),
        held("transform"), summary)


def _drop_schemas(warehouse: Database, *schemas: str) -> None:
    """Drop the scratch schemas an earlier rebuild left (one that stopped, or differed)."""
    with warehouse.session("totes-rebuild", f"clearing the scratch schemas "
                           f"{', '.join(schemas)} of the {warehouse.describe()}") as session:
        for schema in schemas:
            session.conn.run(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def _adopt(processed: Lake, names: list[str]) -> None:
    """Move the live processed area's entries aside (into :data:`PREVIOUS_FOLDER`) and the
    scratch area's entries ``names`` into their place. Done again after an interruption, it
    finishes the move: an entry of ``names`` no longer in the scratch area was adopted."""
    waiting = set(names) & set(processed.entries(SCRATCH_FOLDER, hidden=True))
    for name in processed.entries():
        if name not in names or name in waiting:
            processed.move_folder(name, f"{PREVIOUS_FOLDER}/{name}")
    for name in sorted(waiting):
        processed.move_folder(f"{SCRATCH_FOLDER}/{name}", name)
    processed.remove_folder(SCRATCH_FOLDER)
    log.info("adopted the rebuilt processed area; the replaced one is in %s",
             processed.describe(PREVIOUS_FOLDER))


def _finish_adoption(warehouse: Database, processed: Lake, book: str) -> None:
    """Finish the move of the processed area a full rebuild committed but did not complete
    (it stopped between its swap and the move)."""
    with warehouse.session("totes-rebuild", "reading the rebuild's unfinished work in the "
                           f"{warehouse.describe()}") as session:
        (exists,), = session.conn.run("SELECT to_regclass(:t) IS NOT NULL",
                                      t=marker_table(book))
        rows = session.conn.run(
            f"SELECT names FROM {marker_table(book)}"  # nosec B608: a quoted identifier
        ) if exists else []
    if rows:
        log.warning("finishing the move of the processed area that the last rebuild began")
        _adopt(processed, list(rows[0][0]))
        _adopted(warehouse, book)


def _adopted(warehouse: Database, book: str) -> None:
    with warehouse.session("totes-rebuild", "recording the adopted processed area in the "
                           f"{warehouse.describe()}") as session:
        session.conn.run(f"DELETE FROM {marker_table(book)}")  # nosec B608: quoted
