"""PostgreSQL logical replication through SQL functions: the publication and slot of a
pipeline, whether the source is ready for them, reading the slot's changes, advancing it.

Why SQL functions (``pg_logical_slot_peek_binary_changes``, ``pg_replication_slot_advance``)
rather than the replication protocol (a psycopg2 replication connection, as dlt's
``pg_replication`` source streams): they need no driver beyond pg8000 and run from a Lambda
over an ordinary connection; a peek consumes nothing, so the lake, not the slot, says how far
the log has been read, and the slot is advanced to what the lake committed (at the start of
the next read); the read is bounded by ``upto_nchanges``, which PostgreSQL only checks after
a whole transaction was decoded, so a transaction is never split. What the protocol would
give beyond that, an exported snapshot for the initial copy, is replaced by the copy's own
snapshot and a visibility test of each transaction against it
(:func:`totes.contracts.cdc.visible_in_snapshot`).

The role needs ``REPLICATION`` (on RDS, membership of ``rds_replication``), and the server
``wal_level = logical`` (on RDS, ``rds.logical_replication = 1``). Every statement binds its
values; names are checked identifiers.
"""
from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Optional

from totes.contracts.identifiers import quote_ident
from totes.utils.postgres_copy import copy_stream

#: What the publication publishes: TRUNCATE too, so that one is seen (and stops its table)
#: rather than missed.
PUBLISHED = "insert, update, delete, truncate"


@dataclass(frozen=True)
class SlotState:
    """The slot as ``pg_replication_slots`` shows it: ``confirmed_flush`` (the position a
    read starts after), ``restart_lsn`` (the oldest WAL it holds), ``active`` (a backend
    reads it now), ``retained_bytes`` (WAL the server keeps for it: the current position
    minus ``restart_lsn``)."""

    confirmed_flush: int
    restart_lsn: int
    active: bool
    retained_bytes: int


def readiness(conn, slot: str, publication: str, tables: list[str]) -> list[str]:
    """What stops change data capture of ``tables`` from working, each with the fix (empty:
    ready): ``wal_level``, the role's ``REPLICATION``, the publication (and that it holds
    each table and publishes every operation), the slot, and each table's replica
    identity (a primary key, or ``FULL``)."""
    problems = []
    (level,), = conn.run("SHOW wal_level")
    if level != "logical":
        problems.append(f"the server runs with wal_level = {level}: set wal_level = logical "
                        "(ALTER SYSTEM SET wal_level = logical, then restart the server; on "
                        "RDS, set rds.logical_replication = 1 in the parameter group)")
    (role, may), = conn.run(
        "SELECT current_user::text, rolsuper OR rolreplication OR EXISTS (SELECT 1 FROM "
        "pg_roles r WHERE r.rolname = 'rds_replication' AND pg_has_role(current_user, "
        "r.oid, 'MEMBER')) FROM pg_roles WHERE rolname = current_user")
    if not may:
        problems.append(f"the role {role} may not read a replication slot: ALTER ROLE "
                        f"{quote_ident(role)} REPLICATION (on RDS: GRANT rds_replication TO "
                        f"{quote_ident(role)})")
    found = conn.run("SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM "
                     "pg_publication WHERE pubname = :p", p=publication)
    if not found:
        problems.append(f"there is no publication {publication}: run `totes cdc init`")
    else:
        if not found[0][0]:
            problems.append(f"publication {publication} does not publish every operation: "
                            f"ALTER PUBLICATION {quote_ident(publication)} SET (publish = "
                            f"'{PUBLISHED}')")
        listed = {name for name, in conn.run(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = :p AND "
            "schemaname = current_schema()", p=publication)}
        for table in tables:
            if table not in listed:
                problems.append(f"publication {publication} does not hold table {table}: run "
                                f"`totes cdc init --table {table}`")
    slots = conn.run("SELECT plugin::text, database::text = current_database() FROM "
                     "pg_replication_slots WHERE slot_name = :s", s=slot)
    if not slots:
        problems.append(f"there is no replication slot {slot}: run `totes cdc init`")
    elif slots[0][0] != "pgoutput" or not slots[0][1]:
        problems.append(f"replication slot {slot} is not a pgoutput slot of this database: "
                        "give the pipeline another slot name (cdc.slot)")
    for table in tables:
        identity = conn.run(
            "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid "
            "= c.oid AND i.indisprimary) FROM pg_class c WHERE c.oid = to_regclass(:t)",
            t=quote_ident(table))
        if not identity:
            continue  # plan's catalog check names a missing table
        kind, has_key = identity[0]
        if kind == "n" or (kind == "d" and not has_key):
            problems.append(f"table {table} has no replica identity (its deletes and updates "
                            "would not say which row): give it a primary key, or ALTER "
                            f"TABLE {quote_ident(table)} REPLICA IDENTITY FULL")
    return problems


def init_statements(conn, slot: str, publication: str, tables: list[str]) -> list[str]:
    """The statements that create what :func:`readiness` finds missing of the publication
    (or the tables it lacks) and the slot, in order (empty when nothing is missing)."""
    statements = []
    found = conn.run("SELECT 1 FROM pg_publication WHERE pubname = :p", p=publication)
    listed = {name for name, in conn.run(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = :p AND "
        "schemaname = current_schema()", p=publication)}
    missing = [t for t in tables if t not in listed]
    names = ", ".join(quote_ident(t) for t in missing)
    if not found:
        statements.append(f"CREATE PUBLICATION {quote_ident(publication)} FOR TABLE {names} "
                          f"WITH (publish = '{PUBLISHED}')")
    elif missing:
        statements.append(f"ALTER PUBLICATION {quote_ident(publication)} ADD TABLE {names}")
    if not conn.run("SELECT 1 FROM pg_replication_slots WHERE slot_name = :s", s=slot):
        statements.append(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    return statements


def drop_statements(conn, slot: str, publication: str) -> list[str]:
    """The statements that drop the slot and the publication (those that exist)."""
    statements = []
    if conn.run("SELECT 1 FROM pg_replication_slots WHERE slot_name = :s", s=slot):
        statements.append(f"SELECT pg_drop_replication_slot('{slot}')")
    if conn.run("SELECT 1 FROM pg_publication WHERE pubname = :p", p=publication):
        statements.append(f"DROP PUBLICATION {quote_ident(publication)}")
    return statements


def slot_state(conn, slot: str) -> Optional[SlotState]:
    """The slot's positions (LSNs as integers), or None when there is no such slot."""
    found = conn.run(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, "
        "(restart_lsn - '0/0'::pg_lsn)::bigint, active, "
        "(pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots "
        "WHERE slot_name = :s", s=slot)
    if not found:
        return None
    confirmed, restart, active, retained = found[0]
    return SlotState(int(confirmed or 0), int(restart or 0), bool(active), int(retained or 0))


def current_lsn(conn) -> int:
    """How far the server's WAL is flushed (bytes from 0/0): the end of what a read may claim.

    Logical decoding through the SQL functions decodes only up to the flush position
    (``GetFlushRecPtr`` in PostgreSQL's logicalfuncs.c), while ``pg_current_wal_lsn()`` is
    the write position, which runs ahead of it while WAL buffers are written out unflushed
    (a large transaction, ``synchronous_commit = off``). A read that claimed everything up to
    the write position would advance the slot past commits it never decoded."""
    (lsn,), = conn.run("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint")
    return int(lsn)


def advance(conn, slot: str, lsn: int) -> bool:
    """Move the slot's ``confirmed_flush`` to ``lsn`` when it is behind it (a slot never
    moves back: PostgreSQL refuses that); returns whether it moved. The server may lose a
    move it did not checkpoint yet when it crashes: the changes are then read again, and
    each table skips those its batches hold."""
    state = slot_state(conn, slot)
    if state is None or lsn <= state.confirmed_flush:
        return False
    conn.run("SELECT pg_replication_slot_advance(:s, CAST(CAST(:l AS text) AS pg_lsn))",
             s=slot, l=_text(lsn))
    return True


def _text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@contextlib.contextmanager
def peek(conn, slot: str, publication: str, upto_lsn: int, max_changes: int,
         doing: str) -> Iterator[Iterator[tuple[int, int, bytes]]]:
    """The slot's changes after its ``confirmed_flush``, up to ``upto_lsn``, stopping after
    the transaction in which ``max_changes`` is passed: ``(lsn, xid, message)`` rows, each
    one pgoutput message (:func:`totes.utils.pgoutput.decode`), streamed by ``COPY`` (read to
    the end). Nothing is consumed: the slot stays where it was."""
    for name, value in (("slot", slot), ("publication", publication),
                        ("upto", _text(upto_lsn)), ("changes", str(max_changes))):
        conn.run("SELECT set_config(:n, :v, false)", n=f"totes.cdc_{name}", v=value)
    sql = ("COPY (SELECT (lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, data FROM "
           "pg_logical_slot_peek_binary_changes(current_setting('totes.cdc_slot')::name, "
           "current_setting('totes.cdc_upto')::pg_lsn, "
           "current_setting('totes.cdc_changes')::int, 'proto_version', '1', "
           "'publication_names', current_setting('totes.cdc_publication'))) "
           "TO STDOUT WITH (FORMAT csv)")
    with copy_stream(conn, sql, doing) as reader:
        text = io.TextIOWrapper(reader, encoding="ascii", newline="")
        yield ((int(lsn), int(xid), bytes.fromhex(data[2:]))
               for lsn, xid, data in csv.reader(text))


def oldest_change_time(conn, slot: str, publication: str, after_lsn: int,
                       limit: int) -> Optional[datetime]:
    """The commit time of the oldest transaction with a published change that the slot holds
    past ``after_lsn`` (what the lake already holds), looking at most ``limit`` of the log's
    messages ahead; None when there is none (or the slot is being read now)."""
    from totes.utils.pgoutput import Begin, Commit, decode

    if conn.run("SELECT active FROM pg_replication_slots WHERE slot_name = :s",
                s=slot) in ([], [[True]]):
        return None
    begun = None
    for (data,) in conn.run(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(CAST(:s AS name), NULL, "
            "CAST(:n AS int), 'proto_version', '1', 'publication_names', CAST(:p AS text))",
            s=slot, n=limit, p=publication):
        message = decode(bytes(data))
        if isinstance(message, Begin):
            begun = message.commit_time
        elif isinstance(message, Commit) and message.end_lsn > after_lsn:
            return begun
    return None
