"""Held facts: fact rows whose foreign key has no dimension row yet, kept in the warehouse until
it arrives.

A fact row refers to its dimensions by key (``sales_staff_id`` → ``dim_staff``). When a batch
brings a fact row whose dimension row is not in the warehouse (the dimension's source row was
quarantined, or arrives in a later batch), load does not insert it and does not fail the
batch: it moves the row into ``totes.held_<fact>`` (the fact's columns, plus ``reason``,
``batch`` and ``held_at``), in the same transaction as the rest of the batch. At the end of
every load, held rows whose dimension rows are all there now are inserted into their fact
table and leave the held table, in one statement. So a held row is never lost and never
inserted twice: it is either in its fact table or held, by construction.

The orphan check is one statement per fact file (every foreign key in one ``WHERE``), not
one query per foreign key.
"""
from __future__ import annotations

from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.star_schema import TABLES, WarehouseTable
from totes.utils.settings import bookkeeping


def held_table(table: WarehouseTable) -> str:
    """``totes.held_<fact>`` (quoted), where ``table``'s orphan rows wait."""
    return f"{bookkeeping()}.{quote_ident('held_' + table.name)}"


def held_ddl(table: WarehouseTable) -> str:
    """``CREATE TABLE IF NOT EXISTS totes.held_<fact>``: the fact's columns and natural key,
    the reason, the batch that brought the row and when it was held."""
    columns = [f"{quote_ident(c.name)} {c.sql_type}{'' if c.nullable else ' NOT NULL'}"
               for c in table.columns]
    columns += ["reason text NOT NULL", "batch text NOT NULL",
                "held_at timestamptz NOT NULL DEFAULT now()",
                f"PRIMARY KEY ({', '.join(quote_ident(c) for c in table.merge_key)})"]
    body = ",\n    ".join(columns)
    return f"CREATE TABLE IF NOT EXISTS {held_table(table)} (\n    {body}\n)"


def _found(table: WarehouseTable, alias: str, schema: str) -> list[tuple[str, str, str]]:
    """Per foreign key: (the condition that its dimension row exists in the warehouse schema
    ``schema``, column, dimension)."""
    checks = []
    for column, dimension in table.foreign_keys.items():
        key = quote_ident(TABLES[dimension].merge_key[0])
        checks.append((f"EXISTS (SELECT 1 FROM {qualified(schema, dimension)} d "  # nosec
                       f"WHERE d.{key} = {alias}.{quote_ident(column)})", column, dimension))
    return checks


def hold_orphans(conn, table: WarehouseTable, relation: str, batch: str,
                 schema: str) -> tuple[int, int]:
    """Move the rows of fact ``table`` held in ``relation`` (quoted: the batch's staging
    table, or the fact table itself when the batch was copied straight into it) that have a
    foreign key without its dimension row (in the warehouse schema ``schema``) out of
    ``relation`` into the held table; returns (rows moved out, rows newly held): a row held
    already, by an earlier load of the same batch, leaves ``relation`` but is not held
    twice."""
    checks = _found(table, "s", schema)
    if not checks:
        return 0, 0
    orphan = " AND ".join(condition for condition, _, _ in checks)
    reasons = ", ".join(
        f"CASE WHEN NOT {condition} THEN format('%s %s has no %s row', "
        f"CAST(:c{i} AS text), o.{quote_ident(column)}, CAST(:d{i} AS text)) END"
        for i, (condition, column, _) in enumerate(_found(table, "o", schema)))
    names = ", ".join(quote_ident(c) for c in table.column_names)
    listed = ", ".join(f"o.{quote_ident(c)}" for c in table.column_names)
    key = ", ".join(quote_ident(c) for c in table.merge_key)
    params = {f"c{i}": column for i, (_, column, _) in enumerate(checks)}
    params.update({f"d{i}": dimension for i, (_, _, dimension) in enumerate(checks)})
    # Identifiers only, each through quote_ident; names and the batch key are bound values.
    (moved, held), = conn.run(
        f"WITH orphans AS (DELETE FROM {relation} s WHERE NOT ({orphan}) "  # nosec B608
        f"RETURNING s.*), "
        f"held AS (INSERT INTO {held_table(table)} ({names}, reason, batch) "
        f"SELECT {listed}, concat_ws('; ', {reasons}), CAST(:batch AS text) FROM orphans o "
        f"ON CONFLICT ({key}) DO NOTHING RETURNING 1) "
        "SELECT (SELECT count(*) FROM orphans), (SELECT count(*) FROM held)",
        batch=batch, **params)
    return moved, held


def release(conn, table: WarehouseTable, schema: str) -> int:
    """Insert the held rows of fact ``table`` whose dimension rows have all arrived into the
    fact (in the warehouse schema ``schema``), and remove them from the held table; returns
    how many were inserted (a version that had reached the fact table by another way leaves
    the held table without a second row)."""
    checks = _found(table, "h", schema)
    if not checks:
        return 0
    names = ", ".join(quote_ident(c) for c in table.column_names)
    ready = " AND ".join(condition for condition, _, _ in checks)
    key = ", ".join(quote_ident(c) for c in table.merge_key)
    # Identifiers only, each through quote_ident.
    (released,), = conn.run(
        f"WITH ready AS (DELETE FROM {held_table(table)} h WHERE {ready} "  # nosec B608
        f"RETURNING {', '.join('h.' + quote_ident(c) for c in table.column_names)}), "
        f"inserted AS (INSERT INTO {table.relation(schema)} ({names}) "
        f"SELECT {names} FROM ready ON CONFLICT ({key}) DO NOTHING RETURNING 1) "
        "SELECT count(*) FROM inserted")
    return released


def waiting(conn) -> dict[str, int]:
    """Per fact table, the rows held now (tables with none are left out)."""
    counts = {}
    for table in TABLES.values():
        if table.kind == "fact":
            (count,), = conn.run(f"SELECT count(*) FROM {held_table(table)}")  # nosec B608
            if count:
                counts[table.name] = count
    return counts


def held_rows(conn, limit: int) -> list[dict]:
    """The held rows (at most ``limit`` per fact table, oldest first), each as
    ``{"table": "fact_sales_order", "key_column": "sales_order_id", "row_id": 11190,
    "version": "2024-11-16 00:00:00", "reason": "sales_staff_id 999 has no dim_staff row",
    "batch": "_manifests/...json", "held_at": "2026-12-01 10:00:00+00"}``."""
    rows = []
    for table in TABLES.values():
        if table.kind != "fact":
            continue
        key = quote_ident(table.merge_key[0])
        for row_id, day, moment, reason, batch, held_at in conn.run(
                f"SELECT {key}, last_updated_date, last_updated_time, reason, batch, "  # nosec
                f"held_at::text FROM {held_table(table)} ORDER BY held_at, {key} "
                "LIMIT CAST(:n AS int)", n=limit):
            rows.append({"table": table.name, "key_column": table.merge_key[0],
                         "row_id": row_id, "version": f"{day} {moment}", "reason": reason,
                         "batch": batch, "held_at": held_at})
    return rows
