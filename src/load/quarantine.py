"""What the quarantine holds, and the state of each row version in it, from the warehouse's
point of view: ``totes quarantine``.

Two places hold row versions back (see :mod:`totes.contracts.quarantine` and
:mod:`totes.load.held_facts`):

* **transform** quarantine files: row versions that broke a rule. Each is ``held`` until a
  newer version of the same source row is in the warehouse (``superseded``), or a retry put
  this very version through (``released``);
* **load**'s held facts: fact rows waiting for a dimension row (always ``waiting``; the first
  load after the dimension row arrives inserts them).
"""
from __future__ import annotations

from datetime import timezone
from typing import Optional

import pyarrow as pa
from pydantic import BaseModel

from totes.contracts.identifiers import quote_ident
from totes.contracts.quarantine import VERSION_COLUMN, concat_quarantined, source_rows
from totes.contracts.source_tables import SOURCE_TABLES, default_primary_key
from totes.contracts.star_schema import TABLES
from totes.load.held_facts import held_rows
from totes.utils import settings
from totes.utils.settings import bookkeeping
from totes.utils.lake import Lake
from totes.utils.manifests import latest_manifest
from totes.utils.postgres import Database


class QuarantineEntry(BaseModel):
    """One row version held back, as ``totes quarantine --json`` lists it."""

    stage: str               # "transform" (broke a rule) or "load" (waits for a dimension)
    table: str               # source table (transform) or fact table (load)
    key_column: Optional[str]
    row_id: Optional[int]
    version: str             # the row's last_updated (UTC)
    column: Optional[str] = None
    value: Optional[str] = None
    rule: str                # text_date, not_null, fits_type, iso_4217, reference, dimension
    message: str
    status: str              # held, superseded, released, waiting
    where: str               # the quarantine file, or the batch that brought the row


class QuarantineReport(BaseModel):
    """``{"entries": [...], "counts": {"held": 1, "superseded": 2, "waiting": 1}}``."""

    entries: list[QuarantineEntry]
    counts: dict[str, int]


def _quarantined(processed: Lake) -> dict[str, tuple[pa.Table, list[str]]]:
    """Per source table, its quarantined row versions (the newest record of each), and the
    file each came from."""
    _, manifest = latest_manifest(processed)
    by_table: dict[str, list[tuple[pa.Table, str]]] = {}
    for key in (manifest.quarantine if manifest else []):
        table = key.split("/")[1]
        by_table.setdefault(table, []).append((processed.read_table(key), key))
    result = {}
    for table, parts in by_table.items():
        rows = concat_quarantined([t for t, _ in parts])
        files = [key for t, key in parts for _ in range(t.num_rows)]
        newest: dict = {}
        pk = default_primary_key(table)
        for i, (row_id, version) in enumerate(zip(rows[pk].to_pylist(),
                                                  rows[VERSION_COLUMN].to_pylist())):
            newest[(row_id, version)] = i  # a retried version held again: its last record
        order = sorted(newest.values())
        result[table] = (rows.take(pa.array(order, pa.int64())), [files[i] for i in order])
    return result


def _warehouse_versions(conn, table: str, ids: list) -> list:
    """For each id of source ``table``: the newest version of that row in the warehouse
    table it becomes (in the warehouse schema, ``TOTES_WAREHOUSE_SCHEMA``), or None (also
    when that table does not exist yet)."""
    target = TABLES[SOURCE_TABLES[table].warehouse_table or ""]
    relation = target.relation(settings.current().warehouse_schema)
    (exists,), = conn.run("SELECT to_regclass(:t) IS NOT NULL", t=relation)
    if not exists:
        return [None] * len(ids)
    key = quote_ident(target.merge_key[0])
    newest = ("max(w.last_updated_date + w.last_updated_time)" if target.kind == "fact"
              else f"max(w.{quote_ident(target.version_columns[0])})")
    # Identifiers only, each through quote_ident; ids and versions are bound arrays.
    rows = conn.run(
        f"SELECT (SELECT {newest} FROM {relation} w "  # nosec B608
        f"WHERE w.{key} = q.id) FROM unnest(CAST(:ids AS bigint[])) "
        "WITH ORDINALITY AS q(id, n) ORDER BY q.n", ids=ids)
    return [row[0] for row in rows]


def _naive_utc(moment):
    if moment is not None and getattr(moment, "tzinfo", None) is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _status(version, newest) -> str:
    """``held``, ``released`` or ``superseded``: the quarantined ``version`` against the
    ``newest`` version of its row in the warehouse. A version without a time (its
    ``last_updated`` could not be read: rule ``unreadable``) stays held: nothing says a
    version of the warehouse is newer."""
    version, newest = _naive_utc(version), _naive_utc(newest)
    if newest is None or version is None or newest < version:
        return "held"
    return "released" if newest == version else "superseded"


def quarantine_report(processed: Lake, warehouse: Database, limit: int = 1000,
                      everything: bool = False) -> QuarantineReport:
    """Every row version the quarantine holds (``everything``: also those superseded or
    released), at most ``limit`` per table, and the counts by status.

    Raises:
        LakeError / StorageUnavailable: a quarantine file is missing or unreadable.
        DatabaseUnavailable: the warehouse could not be reached (retry).
    """
    entries: list[QuarantineEntry] = []
    counts: dict[str, int] = {}
    quarantined = _quarantined(processed)
    with warehouse.session("totes-quarantine", f"reading the {warehouse.describe()}") \
            as session:
        conn = session.conn
        for table, (rows, files) in quarantined.items():
            pk = default_primary_key(table)
            ids, versions = rows[pk].to_pylist(), rows[VERSION_COLUMN].to_pylist()
            newest = _warehouse_versions(conn, table, ids)
            shown = 0
            for record, file, version, latest in zip(rows.to_pylist(), files, versions, newest):
                status = _status(version, latest)
                counts[status] = counts.get(status, 0) + 1
                if (status != "held" and not everything) or shown >= limit:
                    continue
                shown += 1
                entries.append(QuarantineEntry(
                    stage="transform", table=table, key_column=record["_totes_key_column"],
                    row_id=record.get(pk), version=str(version),
                    column=record["_totes_column"], value=record["_totes_value"],
                    rule=record["_totes_rule"], message=record["_totes_message"],
                    status=status, where=file))
        (exists,), = conn.run(
            f"SELECT to_regclass('{bookkeeping()}.held_fact_payment') IS NOT NULL")
        for row in (held_rows(conn, limit) if exists else []):
            counts["waiting"] = counts.get("waiting", 0) + 1
            entries.append(QuarantineEntry(
                stage="load", table=row["table"], key_column=row["key_column"],
                row_id=row["row_id"], version=row["version"], rule="dimension",
                message=f"{row['table']} row {row['key_column']}={row['row_id']}: "
                        f"{row['reason']}", status="waiting", where=row["batch"]))
    return QuarantineReport(entries=entries, counts=counts)


def held_source_rows(processed: Lake, warehouse: Database) -> dict[str, pa.Table]:
    """Per source table, the quarantined row versions still ``held`` (source columns only):
    what a retry puts through the rules again."""
    quarantined = _quarantined(processed)
    held = {}
    with warehouse.session("totes-quarantine", f"reading the {warehouse.describe()}") \
            as session:
        for table, (rows, _) in quarantined.items():
            pk = default_primary_key(table)
            versions = rows[VERSION_COLUMN].to_pylist()
            newest = _warehouse_versions(session.conn, table, rows[pk].to_pylist())
            keep = [_status(v, n) == "held" for v, n in zip(versions, newest)]
            if any(keep):
                held[table] = source_rows(rows.filter(pa.array(keep)))
    return held
