"""Helpers the tests share (the fixtures are in conftest.py)."""
from __future__ import annotations

import functools
from pathlib import Path

import pyarrow.parquet as pq

from totes.utils.postgres import Database

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config" / "pipeline.yaml")
SNAPSHOT = REPO / "data" / "totesys-2024-11"
TEMPLATE = "totesys_template"


def query(database: Database, sql: str, **params):
    """Rows of ``sql`` run on ``database``."""
    conn = database.connect("totes-test")
    try:
        return conn.run(sql, **params)
    finally:
        conn.close()


def snapshot(table: str):
    """The real snapshot of one source table, as an Arrow table."""
    return pq.read_table(SNAPSHOT / f"{table}.parquet")


@functools.lru_cache(maxsize=256)
def versions_at(table: str, moment) -> frozenset:
    """The row versions ``(id, last_updated)`` of ``table`` that the source held at
    ``moment``, computed from the snapshot: rows created by then, in their version of then
    (a row updated later was still at ``last_updated = created_at``). Kept per (table,
    moment): the snapshot never changes."""
    import pyarrow as pa

    rows = snapshot(table)
    ids = rows[f"{table}_id"].to_pylist()
    created = rows["created_at"].cast(pa.timestamp("ms")).to_pylist()
    updated = rows["last_updated"].cast(pa.timestamp("ms")).to_pylist()
    return frozenset((i, u if u <= moment else c) for i, c, u in zip(ids, created, updated)
                     if c <= moment)


def fact_versions(warehouse: Database, fact: str, id_column: str) -> list:
    """``(source id, last_updated)`` of every row of a fact table (a list: duplicates show)."""
    from datetime import datetime

    rows = query(warehouse, f"SELECT {id_column}, last_updated_date, last_updated_time "
                            f"FROM {fact}")
    return [(i, datetime.combine(d, t)) for i, d, t in rows]


def url_of(database: Database) -> str:
    """A URL of ``database`` (the test server's: a Unix socket, no password)."""
    params = database.params
    folder, _, name = params["unix_sock"].rpartition("/")
    port = name.rsplit(".", 1)[1]
    return f"postgresql://{params['user']}@/{params['database']}?host={folder}&port={port}"


def versions_beyond(polled, cdc) -> dict[str, list]:
    """Per fact table, the ``(key, is_deleted)`` of each row version the warehouse of ``cdc``
    (resources whose facts' sources are on ``cdc``) holds beyond those of ``polled`` (the same
    source, polled), sorted; asserts that it holds every version ``polled`` holds."""
    beyond = {}
    for fact, key in (("fact_sales_order", "sales_order_id"),
                      ("fact_purchase_order", "purchase_order_id"),
                      ("fact_payment", "payment_id")):
        sql = (f"SELECT {key}, last_updated_date, last_updated_time, is_deleted "  # nosec B608
               f"FROM {fact}")  # (the schema's names)
        from_polling = {tuple(row) for row in query(polled.warehouse, sql)}
        from_log = {tuple(row) for row in query(cdc.warehouse, sql)}
        assert from_polling <= from_log, f"{fact}: {sorted(from_polling - from_log)[:5]}"
        beyond[fact] = sorted((row[0], row[3]) for row in from_log - from_polling)
    return beyond
