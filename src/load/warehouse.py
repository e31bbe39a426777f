"""Merge transform batches into the warehouse, in one transaction per load.

For each batch (a transform manifest) and each of its tables, dimensions before facts:
``COPY ... FROM STDIN`` streams the processed Parquet's record batches into a temporary
staging table, then one set-based statement merges it:

* a dimension is upserted on its key; a row whose values did not change is not rewritten;
* a fact row (one version of a source row) is inserted unless its version key (source id +
  last_updated date and time) is already there.

The warehouse keeps the keys of the batches it has loaded in ``totes.loaded_batch``, written
in the same transaction as the rows (as dlt keeps its state with the data): a load either
lands whole, batch keys included, or leaves the warehouse as it was, and the next load starts
after the last batch that landed. Loading a batch again changes nothing. An advisory lock
serialises concurrent loads.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Optional

from totes.transform.run import MANIFESTS, read_manifest
from totes.utils.db import Database, copy_into, merge_staged, quote_ident
from totes.utils.errors import DataError
from totes.utils.lake import Lake
from totes.utils.star_schema import TABLES, WarehouseTable

log = logging.getLogger(__name__)

# Arbitrary constant identifying the load lock among the warehouse's advisory locks.
LOAD_LOCK_ID = 7_001_007
COPY_BATCH_ROWS = 65_536
_LOADED_BATCH_DDL = (
    "CREATE SCHEMA IF NOT EXISTS totes",
    "CREATE TABLE IF NOT EXISTS totes.loaded_batch ("
    " manifest_key text PRIMARY KEY,"
    " loaded_at timestamptz NOT NULL DEFAULT now(),"
    " rows jsonb NOT NULL)",
)


def create_warehouse(conn) -> None:
    """Create the star schema (SCHEMAS.md §2) and the load bookkeeping where absent."""
    for statement in _LOADED_BATCH_DDL:
        conn.run(statement)
    for table in TABLES.values():
        conn.run(table.ddl())


def _changed(table: WarehouseTable) -> str:
    """The condition under which an existing dimension row is rewritten: a value differs."""
    target = quote_ident(table.name)
    others = [quote_ident(c) for c in table.column_names if c not in table.merge_key]
    current = ", ".join(f"{target}.{c}" for c in others)
    incoming = ", ".join(f"EXCLUDED.{c}" for c in others)
    return f"({current}) IS DISTINCT FROM ({incoming})"


def check_foreign_keys(conn, table: WarehouseTable, stage: str) -> None:
    """Check that every foreign key of the staged fact rows has its dimension row (the
    dimensions of the same batch are merged first).

    Raises:
        DataError: ``fact_sales_order row sales_order_id=12: sales_staff_id 99 has no
            dim_staff row``.
    """
    source_id, staged = quote_ident(table.merge_key[0]), quote_ident(stage)
    for column, dimension in table.foreign_keys.items():
        key, value = quote_ident(TABLES[dimension].merge_key[0]), quote_ident(column)
        # Identifiers only, each through quote_ident; no values.
        orphans = conn.run(
            f"SELECT s.{source_id}, s.{value} FROM {staged} s WHERE NOT EXISTS "  # nosec B608
            f"(SELECT 1 FROM {quote_ident(dimension)} d WHERE d.{key} = s.{value}) LIMIT 1")
        if orphans:
            (row_id, value), = orphans
            raise DataError(f"{table.name} row {table.merge_key[0]}={row_id}: {column} "
                            f"{value} has no {dimension} row")


def merge_file(conn, table: WarehouseTable, processed: Lake, key: str) -> dict:
    """Stage one processed file of ``table`` and merge it; returns
    ``{"rows": staged, "inserted": n, "updated": n}``."""
    stage = f"stage_{table.name}"
    columns = ", ".join(quote_ident(c) for c in table.column_names)
    source = quote_ident(table.name)
    conn.run(f"CREATE TEMP TABLE {quote_ident(stage)} ON COMMIT DROP AS "  # nosec B608
             f"SELECT {columns} FROM {source} WITH NO DATA")
    parquet = processed.parquet_file(key)
    copy_into(conn, stage, table.column_names,
              parquet.iter_batches(batch_size=COPY_BATCH_ROWS, columns=table.column_names))
    if table.kind == "fact":
        check_foreign_keys(conn, table, stage)
    inserted, updated = merge_staged(conn, table.name, stage, table.column_names,
                                     list(table.merge_key),
                                     None if table.kind == "fact" else _changed(table))
    conn.run(f"DROP TABLE {quote_ident(stage)}")
    return {"rows": parquet.metadata.num_rows, "inserted": inserted, "updated": updated}


def pending_batches(conn, processed: Lake) -> list[str]:
    """Manifest keys newer than the last batch the warehouse has loaded, oldest first."""
    (last,), = conn.run("SELECT max(manifest_key) FROM totes.loaded_batch")
    return processed.keys_after(MANIFESTS, last, "json")


def load(processed: Lake, warehouse: Database,
         manifest_keys: Optional[list[str]] = None) -> dict:
    """Load the given transform batches (default: every batch not loaded yet) in one
    transaction.

    Returns (the state machine's load output)::

        {"batches": ["_manifests/2024/11/15/144010123000.json"],
         "tables": [{"table": "dim_date", "rows": 1012, "inserted": 1012, "updated": 0}, ...],
         "seconds": 3.2}

    Raises:
        DatabaseUnavailable: the warehouse could not be reached or the connection broke (retry).
        TerminalError: the warehouse rejected the rows (a constraint; the message names it and
            the key), nothing was written.
        LakeError / StorageUnavailable: a batch's file is missing or unreadable.
    """
    started = time.monotonic()
    totals: dict[str, dict] = {}
    with warehouse.session("totes-load", f"loading into the {warehouse.describe()}") as session:
        conn = session.conn
        conn.run("START TRANSACTION")
        conn.run("SELECT pg_advisory_xact_lock(:id)", id=LOAD_LOCK_ID)
        create_warehouse(conn)
        keys = pending_batches(conn, processed) if manifest_keys is None else manifest_keys
        for manifest_key in keys:
            outputs = {o["table"]: o for o in read_manifest(processed, manifest_key)["outputs"]}
            counts = {}
            for name, table in TABLES.items():
                if name in outputs:
                    session.doing = f"loading {name} of batch {manifest_key} into the " \
                                    f"{warehouse.describe()}"
                    counts[name] = merge_file(conn, table, processed, outputs[name]["key"])
                    total = totals.setdefault(name, {"table": name, "rows": 0, "inserted": 0,
                                                     "updated": 0})
                    for field in ("rows", "inserted", "updated"):
                        total[field] += counts[name][field]
            conn.run("INSERT INTO totes.loaded_batch (manifest_key, rows) "
                     "VALUES (:key, CAST(:rows AS jsonb)) ON CONFLICT (manifest_key) DO NOTHING",
                     key=manifest_key, rows=json.dumps(counts))
        conn.run("COMMIT")
    log.info("loaded %d batches", len(keys))
    return {"batches": keys, "tables": list(totals.values()),
            "seconds": round(time.monotonic() - started, 3)}
