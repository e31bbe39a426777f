"""Hard deletes of a polled table, found without the change log (``delete_detection: keys``).

A cursor on ``last_updated`` never sees a row that was deleted. For a table configured with
``delete_detection: keys``, a run's ingest (after its incremental batch, under the same lease)
compares the source's primary keys, read by one scan of the key's index, with the keys the
lake holds, and writes a **delete version** of each key gone from the source: the row's last
values in the lake plus the change columns of :mod:`totes.contracts.cdc`
(``_totes_operation = 'delete'``, ``_totes_lsn = 0``, ``_totes_commit_time`` = the moment
the delete was detected, UTC). Transform and load treat it as they treat a delete read from
the log: a new version with ``is_deleted = true`` stamped with that moment.

**The key index** (``_keys/<table>/YYYY/MM/DD/HHMMSSffffff.parquet``): the table's current
keys as the lake knows them, one int64 column sorted, and in its footer
(``totes.key_index``, JSON) ``through``, the newest lake batch it accounts for, so that no
run rereads the table's history: the next comparison starts from the newest index and applies
only the batches after ``through`` (a key in a version adds it; a key whose last version in a
batch is a delete removes it). It is derived data: the lake's batches stay the truth, and an
index lost or removed is rebuilt from all of them. After a new index is written the older
ones are removed.

What other work does to it:

* a **reingest** writes a batch of every current row: the keys are already there (or come
  back, for a row re-inserted under an old key), nothing is lost;
* a **backfill** reads rows the source still holds: it adds nothing the index lacks;
* a switch of the table to **cdc**: its deletes then come from the log, in batches whose
  delete versions the index applies if the table is switched back;
* **crash safety**: the delete batch is published before the new index, and both under the
  table's lease. A run killed between them leaves the old index; the next comparison applies
  the delete batch (its delete versions remove the keys) and finds nothing more to delete.
  The source's keys are read after the incremental batch, so a row inserted since is either
  in the index or not yet extracted, never taken for deleted.

Every ``delete_detection_every``-th run compares (the ledger counts the runs since the last
comparison; without a ledger every run does).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.cdc import CDC_COLUMNS, CDC_FIELDS, LSN, OPERATION
from totes.contracts.config import TablePlan
from totes.contracts.errors import LakeError
from totes.contracts.source_schema import schema_footer
from totes.contracts.watermark import footer_metadata
from totes.utils.databases import SourceDatabase
from totes.utils.footers import batch_files, read_footer
from totes.utils.lake import Lake, key_time, parquet_writer, storage_call
from totes.utils.ledger import Ledger
from totes.utils.run_tracking import check_lease
from totes.utils.source_reader import reader_for

log = logging.getLogger(__name__)

#: The folder of the key indexes, per table.
KEY_INDEX = "_keys"
#: The footer entry of a key index (UTF-8 JSON): ``{"through": "<lake key>" | null,
#: "source_keys": 11187, "detected_at": "2026-12-04T21:00:00.000000+00:00"}``.
KEY_INDEX_FOOTER = b"totes.key_index"
#: ``totes.mode`` of a batch of delete versions found by a key comparison.
DELETE_DETECTION_MODE = "delete_detection"
#: The ledger's details entry of an ingest that compared the keys.
DETAILS_KEY = "delete_detection"


@dataclass(frozen=True)
class Detection:
    """One comparison: ``source_keys`` (how many keys the source holds), ``lake_keys`` (how
    many the lake's key index held), ``deleted`` (delete versions written), ``key`` (their
    lake batch; None when none), ``index_key`` (the key index written; None when unchanged),
    ``seconds``."""

    source_keys: int
    lake_keys: int
    deleted: int
    key: Optional[str]
    index_key: Optional[str]
    seconds: float

    def details(self) -> dict:
        """What the ingest's ledger record keeps of it."""
        return {"source_keys": self.source_keys, "lake_keys": self.lake_keys,
                "deleted": self.deleted, "key": self.key}


def due(plan: TablePlan, ledger: Optional[Ledger]) -> bool:
    """Whether this run of ``plan``'s ingest compares the keys: it is configured to, and no
    comparison is among the table's last ``delete_detection_every - 1`` successful ingests in
    the ``ledger`` (always, without one)."""
    if plan.delete_detection != "keys" or plan.mode != "incremental":
        return False
    if plan.delete_detection_every == 1 or ledger is None:
        return True
    recent = [r for r in ledger.history("ingest", plan.table, limit=50)
              if r.status == "succeeded"][:plan.delete_detection_every - 1]
    return not any(DETAILS_KEY in (r.details or {}) for r in recent)


def detect_deletes(plan: TablePlan, source: SourceDatabase, lake: Lake) -> Detection:
    """Compare ``plan.table``'s primary keys in ``source`` with the lake's, and write a delete
    version of each key gone from the source (see the module docstring). Call under the
    table's lease, after its incremental batch.

    Raises:
        DatabaseUnavailable / TerminalError: the source failed (retry / not).
        StorageUnavailable: the lake could not be read or written (retry).
        LakeError: a batch or the key index breaks the lake's contract, or a key gone from
            the source has no version in the lake (the index and the lake disagree).
    """
    started = datetime.now(timezone.utc)
    table, key_column = plan.table, plan.primary_key
    lake_ids, through, old_indexes = read_key_index(lake, table)
    lake_ids, through = apply_batches(lake, table, key_column, lake_ids, through)
    source_ids = _source_keys(plan, source)
    gone = lake_ids.filter(pc.invert(pc.is_in(lake_ids, value_set=source_ids)))
    detected_at = datetime.now(timezone.utc)
    key = None
    if len(gone):
        key = _write_delete_versions(lake, plan, gone, detected_at)
        through = key
        lake_ids = lake_ids.filter(pc.is_in(lake_ids, value_set=source_ids))
        log.warning("%s: %d rows are no longer in the source: delete versions written to %s",
                    table, len(gone), key)
    index_key = None
    if through is not None and (not old_indexes or _through_of(lake, old_indexes[-1]) != through):
        index_key = _write_index(lake, table, lake_ids, through, len(source_ids), detected_at)
        for old in old_indexes:
            lake.delete(old)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    return Detection(len(source_ids), len(lake_ids) + len(gone), len(gone), key, index_key,
                     round(seconds, 3))


def read_key_index(lake: Lake, table: str) -> tuple[pa.Array, Optional[str], list[str]]:
    """The newest key index of ``table``: its keys (int64, sorted), the lake batch it
    accounts for (None: none, the index is empty), and every index file, oldest first."""
    indexes = lake.keys_after(f"{KEY_INDEX}/{table}", None)
    if not indexes:
        return pa.array([], pa.int64()), None, []
    newest = indexes[-1]
    ids = lake.read_table(newest).column(0).combine_chunks().cast(pa.int64())
    return ids, _through_of(lake, newest), indexes


def _through_of(lake: Lake, index: str) -> Optional[str]:
    metadata = lake.metadata(index).metadata or {}
    try:
        return json.loads(metadata[KEY_INDEX_FOOTER])["through"]
    except (KeyError, ValueError, TypeError):
        raise LakeError(f"{index} has no totes.key_index entry in its footer: it was not "
                        "written by delete detection (remove it: the next run rebuilds the "
                        "index from the lake)") from None


def apply_batches(lake: Lake, table: str, key_column: str, ids: pa.Array,
                  through: Optional[str]) -> tuple[pa.Array, Optional[str]]:
    """``ids`` (a table's keys as of batch ``through``) brought up to the table's newest lake
    batch: a key with a version in a later batch is added, a key whose last version in a
    batch is a delete is removed. Returns the keys (int64, sorted) and the newest batch."""
    for key in lake.keys_after(table, through):
        for file in batch_files(lake, key):
            names = lake.metadata(file).schema.to_arrow_schema().names
            wanted = [key_column] + [c for c in (LSN, OPERATION) if c in names]
            present, deleted = _final_states(lake.read_table(file, columns=wanted), key_column)
            ids = ids.filter(pc.invert(pc.is_in(ids, value_set=deleted)))
            ids = pa.concat_arrays([ids, present.cast(pa.int64())])
        ids = pc.unique(ids)
        through = key
    return pc.take(ids, pc.sort_indices(ids)), through


def _final_states(rows: pa.Table, key_column: str) -> tuple[pa.Array, pa.Array]:
    """The keys of one lake file whose last version there is a row (``present``) and those
    whose last version is a delete (``deleted``)."""
    ids = rows[key_column].combine_chunks()
    if OPERATION not in rows.column_names:
        return ids, pa.array([], ids.type)
    ordered = rows.sort_by([(key_column, "ascending"), (LSN, "ascending")])
    keys = ordered[key_column].combine_chunks()
    last = pa.concat_arrays([pc.not_equal(keys[:-1], keys[1:]), pa.array([True])]) \
        if len(keys) else pa.array([], pa.bool_())
    final = ordered.filter(last)
    is_delete = pc.fill_null(pc.equal(final[OPERATION], "delete"), False)
    return (final[key_column].filter(pc.invert(is_delete)).combine_chunks(),
            final[key_column].filter(is_delete).combine_chunks())


def _source_keys(plan: TablePlan, source: SourceDatabase) -> pa.Array:
    doing = f"reading the primary keys of table {plan.table} from the {source.describe()}"
    reader = reader_for(source)
    with source.session(f"totes-deletes-{plan.table}", doing) as session:
        reader.begin(session.conn)
        with reader.primary_keys(session.conn, plan.table, plan.primary_key, doing) as arrays:
            found = list(arrays)
        session.conn.run("COMMIT")
    return pa.concat_arrays(found) if found else pa.array([], pa.int64())


def last_versions(lake: Lake, table: str, key_column: str, wanted: pa.Array) -> pa.Table:
    """The last version the lake holds of each key in ``wanted``: one row per key found,
    reading the table's batches newest first and stopping once every key is found. Rows
    from batches of different schemas are unified (a column a batch lacks is null)."""
    remaining = pc.unique(wanted.cast(pa.int64()))
    found: list[pa.Table] = []
    for key in reversed(lake.keys_after(table, None)):
        for file in reversed(batch_files(lake, key)):
            ids = lake.read_table(file, columns=[key_column])[key_column]
            mask = pc.is_in(ids, value_set=remaining.cast(ids.type))
            if not pc.any(mask).as_py():
                continue
            rows = lake.read_table(file).filter(mask)
            order = [(key_column, "descending")] + \
                ([(LSN, "descending")] if LSN in rows.column_names else [])
            rows = rows.sort_by(order)
            keys = rows[key_column].combine_chunks()
            first = pa.concat_arrays([pa.array([True]), pc.not_equal(keys[1:], keys[:-1])])
            rows = rows.filter(first)  # the newest version of each key in this file
            found.append(rows)
            remaining = remaining.filter(pc.invert(pc.is_in(
                remaining, value_set=rows[key_column].combine_chunks().cast(pa.int64()))))
        if not len(remaining):
            break
    if not found:
        return pa.table({key_column: pa.array([], pa.int64())})
    return pa.concat_tables(found, promote_options="default")


def _write_delete_versions(lake: Lake, plan: TablePlan, gone: pa.Array,
                           detected_at: datetime) -> str:
    """Publish one lake batch of delete versions of the keys ``gone``; returns its key."""
    table, key_column = plan.table, plan.primary_key
    rows = last_versions(lake, table, key_column, gone)
    if len(rows) != len(gone):
        missing = pc.invert(pc.is_in(gone, value_set=rows[key_column].combine_chunks()
                                     .cast(pa.int64())))
        raise LakeError(f"{table}: the key index holds keys the lake has no version of "
                        f"({gone.filter(missing)[:5].to_pylist()} …): remove _keys/{table}/, "
                        "and the next run rebuilds the index from the lake")
    newest = lake.newest_key(table)
    assert newest is not None  # nosec B101: a key the index holds came from a batch
    schema = lake.metadata(batch_files(lake, newest)[0]).schema.to_arrow_schema()
    columns = [f for f in schema if f.name not in CDC_COLUMNS]
    count = len(rows)
    arrays = [rows[f.name].cast(f.type) if f.name in rows.column_names
              else pa.nulls(count, f.type) for f in columns]
    arrays += [pa.array(["delete"] * count, pa.string()),
               pa.repeat(pa.scalar(0, pa.int64()), count),
               pa.repeat(pa.scalar(detected_at, pa.timestamp("us", "UTC")), count)]
    batch = pa.table(arrays, schema=pa.schema([*columns, *CDC_FIELDS]))
    footer = read_footer(lake, newest)
    high = footer.high
    # The newest batch's schema version goes on (a delete batch brings no schema change).
    record = schema_footer(footer.source_schema.model_copy(update={"changes": []})) \
        if footer.source_schema is not None else {}
    doing = f"writing the staged delete versions of {table} for {lake.uri}"
    with lake.staging_file() as staged:
        with storage_call(doing), parquet_writer(staged, batch.schema) as writer:
            writer.write_table(batch)
            writer.add_key_value_metadata(footer_metadata(high, None, DELETE_DETECTION_MODE)
                                          | record)
        moment = (high.moment() if high is not None else None) or key_time(newest)
        key = lake.next_key(table, moment)
        check_lease()  # only while the table's lease is ours
        lake.publish(staged, key)
    return key


def _write_index(lake: Lake, table: str, ids: pa.Array, through: str, source_keys: int,
                 detected_at: datetime) -> str:
    """Publish a key index of ``ids`` accounting for the batches up to ``through``."""
    entry = json.dumps({"through": through, "source_keys": source_keys,
                        "detected_at": detected_at.isoformat(timespec="microseconds")})
    data = pa.table({"key": ids})
    doing = f"writing the staged key index of {table} for {lake.uri}"
    with lake.staging_file() as staged:
        with storage_call(doing), parquet_writer(staged, data.schema) as writer:
            writer.write_table(data)
            writer.add_key_value_metadata({KEY_INDEX_FOOTER: entry})
        key = lake.next_key(f"{KEY_INDEX}/{table}", detected_at.replace(tzinfo=None))
        check_lease()
        lake.publish(staged, key)
    return key
