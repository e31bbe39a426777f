"""One transform batch: the lake files no batch has transformed yet → the star schema.

The steps, each a function below: find the lake files after the last batch's
(:func:`pending_lake_files`); read the new rows of the dimensions' sources and merge the
reference tables' latest rows (:func:`merge_reference_state`); build the dimensions
(:data:`totes.transform.dimensions.DIMENSION_RULES`) and stream the facts, one record batch at
a time, with the dates they refer to (:func:`write_facts`); publish every file, then commit the
batch with its manifest (:mod:`totes.utils.manifest`), written last.

A run that fails before its manifest leaves only files that no manifest names; the next run
transforms the same lake files again, under new keys. The batch's time is the newest lake
key's time (data time), so manifests sort as the data does.
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from totes.transform import dimensions as dims
from totes.transform.facts import FACT_SOURCES, fact_dates, fact_rows
from totes.utils.lake import Lake, key_time
from totes.utils.manifest import Manifest, commit, latest_manifest, state_prefix
from totes.utils.source_tables import REFERENCE_TABLES, SOURCE_TABLES
from totes.utils.stage_results import TableOutput, TransformResult
from totes.utils.star_schema import TABLES

log = logging.getLogger(__name__)

#: Rows per record batch when streaming a fact table's lake file (one batch in memory).
FACT_BATCH_ROWS = 65_536


class _Outputs:
    """Staged Parquet files, one per warehouse table (or state table), published together."""

    def __init__(self, processed: Lake, stack: contextlib.ExitStack):
        self.processed, self.stack = processed, stack
        self.writers: dict[str, tuple[str, pq.ParquetWriter]] = {}
        self.rows: dict[str, int] = {}

    def write(self, name: str, rows: Optional[pa.Table]) -> None:
        """Append ``rows`` to the file of ``name`` (a warehouse table or ``_state/<table>``)."""
        if rows is None or rows.num_rows == 0:
            return
        if name not in self.writers:
            path = self.stack.enter_context(self.processed.staging_file())
            schema = TABLES[name].arrow_schema() if name in TABLES else rows.schema
            writer = pq.ParquetWriter(path, schema, compression="zstd")
            self.stack.callback(writer.close)
            self.writers[name] = (path, writer)
        self.writers[name][1].write_table(rows)
        self.rows[name] = self.rows.get(name, 0) + rows.num_rows

    def publish(self, moment: datetime) -> dict[str, str]:
        """Close every file and publish it under its key; returns name → key."""
        keys = {}
        for name, (path, writer) in self.writers.items():
            writer.close()
            key = self.processed.next_key(name, moment)
            self.processed.publish(path, key)
            keys[name] = key
        return keys


def pending_lake_files(lake: Lake, previous: Optional[Manifest]) -> dict[str, list[str]]:
    """Per source table, the lake keys after the newest one ``previous`` took (all of them
    before the first batch), oldest first; tables with none are left out."""
    consumed = previous.lake if previous is not None else {}
    return {table: keys for table in SOURCE_TABLES
            if (keys := lake.keys_after(table, consumed.get(table)))}


def _read_all(lake: Lake, keys: list[str]) -> pa.Table:
    return pa.concat_tables([lake.read_table(key) for key in keys], promote_options="default")


def merge_reference_state(processed: Lake, previous: Optional[Manifest],
                          new: dict[str, pa.Table], outputs: _Outputs) -> dict:
    """The latest row per key of every reference table, this batch's rows included; a table
    that changed gets a new state file (written to ``outputs``)."""
    state_keys = previous.state if previous is not None else {}
    state: dict[str, Optional[pa.Table]] = {}
    for table, key in REFERENCE_TABLES.items():
        old = processed.read_table(state_keys[table]) if table in state_keys else None
        if table not in new:
            state[table] = old
            continue
        merged = [t for t in (old, new[table]) if t is not None]
        state[table] = dims.latest_per_key(pa.concat_tables(merged, promote_options="default"),
                                           key)
        outputs.write(state_prefix(table), state[table])
    return state


def write_facts(lake: Lake, new_keys: dict[str, list[str]], outputs: _Outputs) -> pa.Array:
    """Stream every new lake file of the fact sources into its fact table, one record batch
    at a time; returns the distinct dates the fact rows refer to (for dim_date)."""
    dates = [pa.array([], pa.date32())]
    for source_table, (fact_name, _) in FACT_SOURCES.items():
        for key in new_keys.get(source_table, []):
            for batch in lake.iter_batches(key, FACT_BATCH_ROWS):
                rows = fact_rows(batch, source_table)
                outputs.write(fact_name, rows)
                dates.append(fact_dates(rows))
    return pa.concat_arrays(dates)


def transform(lake: Lake, processed: Lake) -> TransformResult:
    """Transform every lake file newer than the last batch's, then commit a manifest.

    Returns the stage result (:class:`~totes.utils.stage_results.TransformResult`); its
    ``manifest`` is None and ``tables`` empty when the lake has nothing new.

    Raises:
        DataError: a source row breaks a rule (names table, row id and column).
        LakeError: storage broke its contract, or another transform committed the same batch
            first.
        StorageUnavailable: storage could not be reached (retry).
    """
    started = time.monotonic()
    _, previous = latest_manifest(processed)
    new_keys = pending_lake_files(lake, previous)
    if not new_keys:
        return TransformResult(manifest=None, source_files=0, tables=[],
                               seconds=round(time.monotonic() - started, 3))
    moment = max(key_time(keys[-1]) for keys in new_keys.values())

    with contextlib.ExitStack() as stack:
        outputs = _Outputs(processed, stack)
        new = {t: _read_all(lake, keys) for t, keys in new_keys.items() if t not in FACT_SOURCES}
        state = merge_reference_state(processed, previous, new, outputs)
        for name, rows in dims.dimension_rows(dims.BatchInputs(new, state)):
            outputs.write(name, rows)
        dates = write_facts(lake, new_keys, outputs)
        if len(dates):
            outputs.write("dim_date", dims.dim_date(dates))
        published = outputs.publish(moment)

    tables = [TableOutput(table=name, key=published[name], rows=outputs.rows[name])
              for name in TABLES if name in published]
    manifest = Manifest(
        batch_time=moment.isoformat(sep=" ", timespec="microseconds"),
        lake={**(previous.lake if previous else {}),
              **{t: keys[-1] for t, keys in new_keys.items()}},
        state={**(previous.state if previous else {}),
               **{t: published[state_prefix(t)] for t in REFERENCE_TABLES
                  if state_prefix(t) in published}},
        source_files=new_keys, outputs=tables)
    manifest_key = commit(processed, manifest, moment)
    source_files = sum(map(len, new_keys.values()))
    log.info("transformed %d lake files into %s", source_files, manifest_key)
    return TransformResult(manifest=manifest_key, source_files=source_files, tables=tables,
                           seconds=round(time.monotonic() - started, 3))
