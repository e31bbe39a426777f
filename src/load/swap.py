"""Swap a rebuilt star schema in, in one transaction, keeping the one it replaces.

``totes rebuild`` (:mod:`totes.local.rebuild`) derives the star schema again into scratch
schemas, ``<star>_rebuild`` and ``<bookkeeping>_rebuild``. :func:`swap_in` then, in one
transaction:

1. takes an ``ACCESS EXCLUSIVE`` lock on every relation it moves, ``NOWAIT``: a query that is
   reading one of them makes the attempt fail at once rather than queue behind it (a queued
   swap would block every new query, and could deadlock with one that holds a table the swap
   needs next); the transaction is rolled back and tried again after a pause, up to
   :data:`SWAP_SECONDS`;
2. drops ``<star>_previous`` and ``<bookkeeping>_previous`` (what the last rebuild kept) and
   creates them empty;
3. moves each live table (and a fact's ``<fact>_current`` view, and its held rows
   ``held_<fact>``) into ``*_previous`` and the rebuilt one into its place
   (``ALTER … SET SCHEMA``: a catalogue change, no row is copied);
4. points every foreign key of the live schema that now references a table outside it at the
   live table of the same name (validated: a partial rebuild's fact must find every key in
   the dimensions it did not rebuild), and grants each new table what its predecessor had;
5. drops the scratch schemas, and commits.

A query sees the old tables or the new ones, whole: it holds its tables' ``ACCESS SHARE``
locks until it ends, so the swap either waits for it (and is retried) or the query waits
for the swap's commit and then resolves the names to the new tables. The swap also takes the
load's advisory lock, so no load runs in the middle of it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import pg8000

from totes.contracts.errors import DatabaseUnavailable
from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.star_schema import TABLES
from totes.load.warehouse import LOAD_LOCK_ID
from totes.utils.postgres import Database
from totes.utils.run_tracking import check_lease

log = logging.getLogger(__name__)

#: How long a swap keeps trying to take its locks (seconds) before it gives up (retryable).
SWAP_SECONDS = 120.0
#: SQLSTATEs after which a swap is tried again: lock_not_available, deadlock_detected.
_LOCK_NOT_AVAILABLE, _DEADLOCK = "55P03", "40P01"
#: Bookkeeping tables a full rebuild leaves in place: the raw layer is not rebuilt, so its
#: progress stays.
KEPT_BOOKKEEPING = ("raw_table",)
#: Privileges a swap copies from a replaced table to its successor.
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}


def previous_schema(schema: str) -> str:
    """``<schema>_previous``: where a swap keeps the tables it replaced."""
    return f"{schema}_previous"


def scratch_schema(schema: str) -> str:
    """``<schema>_rebuild``: where a rebuild derives the tables it will swap in."""
    return f"{schema}_rebuild"


@dataclass
class SwapPlan:
    """What to swap: the star tables ``tables`` (names of
    :data:`~totes.contracts.star_schema.TABLES`) of schema ``star`` with those of
    ``scratch_schema(star)``; with ``bookkeeping``, every bookkeeping table of ``book`` but
    :data:`KEPT_BOOKKEEPING` too (a full rebuild, whose batches replace the processed area),
    else only the held rows of the swapped facts. ``marker`` (a full rebuild) is recorded in
    ``<book>.rebuild_adoption`` in the same transaction: the processed area still to adopt."""

    star: str
    book: str
    tables: list[str]
    bookkeeping: bool
    marker: Optional[dict] = None


def swap_in(warehouse: Database, plan: SwapPlan, patience: float = SWAP_SECONDS) -> list[str]:
    """Swap the rebuilt tables of ``plan`` in (the module docstring says how); returns the
    relations moved into the live schemas, qualified.

    Raises:
        DatabaseUnavailable: the locks could not be taken within ``patience`` seconds
            (queries kept the tables busy; retry later), or the connection broke.
        TerminalError: a foreign key did not validate (a partial rebuild's fact references a
            key the live dimension lacks): nothing was changed.
        LeaseLost: the transform or load lease was lost before the commit.
    """
    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        with warehouse.session("totes-rebuild", f"swapping the rebuilt star schema into "
                               f"schema {plan.star} of the {warehouse.describe()}") as session:
            conn = session.conn
            try:
                moved = _swap(conn, plan)
            except pg8000.exceptions.DatabaseError as exc:
                code = exc.args[0].get("C") if exc.args and isinstance(exc.args[0], dict) \
                    else None
                if code not in (_LOCK_NOT_AVAILABLE, _DEADLOCK):
                    raise
                conn.run("ROLLBACK")
                if time.monotonic() + pause > deadline:
                    raise DatabaseUnavailable(
                        f"the swap of schema {plan.star} could not lock its tables within "
                        f"{patience:.0f} s: queries kept them busy; run `totes rebuild` again "
                        "when they are quieter (nothing was changed)") from None
                log.info("swap: tables busy (%s), trying again in %.1f s", code, pause)
            else:
                return moved
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def marker_table(book: str) -> str:
    """``<book>.rebuild_adoption`` (quoted): a full rebuild's processed area still to move
    into place (one row: the scratch folder, its entries, when the swap committed)."""
    return f"{quote_ident(book)}.rebuild_adoption"


def adoption_pending(conn, book: str) -> Optional[str]:
    """When a full rebuild's processed area is not in place yet (its swap committed, its
    move did not finish): when that rebuild swapped, as text; else None. A load refuses to
    start then: its batches would be read from a half-moved processed area."""
    (exists,), = conn.run("SELECT to_regclass(:t) IS NOT NULL", t=marker_table(book))
    if not exists:
        return None
    rows = conn.run(f"SELECT rebuilt_at::text FROM {marker_table(book)}")  # nosec B608
    return rows[0][0] if rows else None


def _relations(conn, schema: str, kind: str) -> set[str]:
    """Names of the tables (``kind`` 'r') or views ('v') of ``schema``."""
    return {name for name, in conn.run(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relkind = :k", s=schema, k=kind)}


def _swap(conn, plan: SwapPlan) -> list[str]:
    star, book = plan.star, plan.book
    new_star, new_book = scratch_schema(star), scratch_schema(book)
    old_star, old_book = previous_schema(star), previous_schema(book)
    conn.run("START TRANSACTION")
    conn.run("SET LOCAL lock_timeout = '2s'")
    conn.run("SELECT pg_advisory_xact_lock(:id)", id=LOAD_LOCK_ID)
    # (schema the relation is in, schema it moves to, name, 'TABLE' or 'VIEW'); the live
    # ones out first, so that the names are free for the rebuilt ones.
    live_tables, live_views = _relations(conn, star, "r"), _relations(conn, star, "v")
    new_tables, new_views = _relations(conn, new_star, "r"), _relations(conn, new_star, "v")
    out: list[tuple[str, str, str, str]] = []
    into: list[tuple[str, str, str, str]] = []
    for name in plan.tables:
        table = TABLES[name]
        names = [(name, "TABLE")] + ([(table.current_view, "VIEW")] if table.current_view else [])
        for relation, kind in names:
            here, there = (live_tables, new_tables) if kind == "TABLE" else (live_views, new_views)
            if relation in here:
                out.append((star, old_star, relation, kind))
            if relation in there:
                into.append((new_star, star, relation, kind))
    live_book, new_book_tables = _relations(conn, book, "r"), _relations(conn, new_book, "r")
    if plan.bookkeeping:
        kept = set(KEPT_BOOKKEEPING)
        out += [(book, old_book, t, "TABLE") for t in sorted(live_book - kept)]
        into += [(new_book, book, t, "TABLE") for t in sorted(new_book_tables - kept)]
    else:
        held = {f"held_{name}" for name in plan.tables if TABLES[name].kind == "fact"}
        out += [(book, old_book, t, "TABLE") for t in sorted(live_book & held)]
        into += [(new_book, book, t, "TABLE") for t in sorted(new_book_tables & held)]
    busy = [qualified(s, n) for s, _, n, kind in out if kind == "TABLE"]
    busy += [qualified(star, n) for n in sorted(live_tables) if qualified(star, n) not in busy]
    if busy:
        conn.run(f"LOCK TABLE {', '.join(busy)} IN ACCESS EXCLUSIVE MODE NOWAIT")
    for schema in (old_star, old_book):
        conn.run(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        conn.run(f"CREATE SCHEMA {quote_ident(schema)}")
    for source, target, relation, kind in out + into:
        conn.run(f"ALTER {kind} {qualified(source, relation)} SET SCHEMA {quote_ident(target)}")
    _repoint_foreign_keys(conn, star)
    replaced = {(target, relation) for _, target, relation, _ in out}
    for source, target, relation, kind in into:
        was = old_star if target == star else old_book
        if (was, relation) in replaced:
            _copy_grants(conn, qualified(was, relation), qualified(target, relation))
    if plan.marker is not None:
        conn.run(f"CREATE TABLE IF NOT EXISTS {marker_table(book)} ("
                 " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
                 " scratch text NOT NULL, names text[] NOT NULL,"
                 " rebuilt_at timestamptz NOT NULL DEFAULT now())")
        conn.run(f"INSERT INTO {marker_table(book)} (scratch, names) "  # nosec B608
                 "VALUES (:s, CAST(:n AS text[]))",
                 s=plan.marker["scratch"], n=plan.marker["names"])
    for schema in (new_star, new_book):
        conn.run(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    check_lease()
    conn.run("COMMIT")
    return [qualified(target, relation) for _, target, relation, _ in into]


def _repoint_foreign_keys(conn, schema: str) -> None:
    """Every foreign key of a table of ``schema`` that references a table in another schema
    is made to reference the table of the same name in ``schema`` (and validated)."""
    for conname, table, column, target in conn.run(
            "SELECT c.conname, t.relname, a.attname, r.relname FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace tn ON tn.oid = t.relnamespace "
            "JOIN pg_class r ON r.oid = c.confrelid "
            "JOIN pg_namespace rn ON rn.oid = r.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "WHERE c.contype = 'f' AND tn.nspname = :s AND rn.nspname <> :s", s=schema):
        if target not in TABLES:
            continue
        relation = qualified(schema, table)
        conn.run(f"ALTER TABLE {relation} DROP CONSTRAINT {quote_ident(conname)}")
        conn.run(f"ALTER TABLE {relation} ADD CONSTRAINT {quote_ident(conname)} FOREIGN KEY "
                 f"({quote_ident(column)}) REFERENCES {qualified(schema, target)} "
                 f"({quote_ident(TABLES[target].merge_key[0])})")


def _copy_grants(conn, was: str, now: str) -> None:
    """Grant ``now`` what ``was`` granted to roles other than its owner (an analysts' role's
    SELECT survives a rebuild)."""
    for grantee, privilege in conn.run(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = to_regclass(:r) AND a.grantee <> c.relowner", r=was):
        if privilege not in _PRIVILEGES:
            continue
        role = "PUBLIC" if grantee == "PUBLIC" else quote_ident(grantee)
        conn.run(f"GRANT {privilege} ON {now} TO {role}")
