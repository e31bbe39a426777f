"""One transform batch: the lake files no batch has transformed yet → the star schema.

The steps, each a function below: find the lake files after the last batch's
(:func:`pending_lake_files`: whole lake batches up to ``TOTES_TRANSFORM_MAX_ROWS`` rows per
source table, the rest left for the next batch, which ``more`` announces); read the new
rows of the dimensions' sources and merge the reference tables' latest rows
(:func:`merge_reference_state`); build the dimensions
(:data:`totes.rules.dimensions.DIMENSION_RULES`) and stream the facts, one record batch at a
time, with the dates they refer to (:func:`write_facts`); publish every file, then commit
the batch with its manifest (:mod:`totes.contracts.manifest`), written last.

A row version that breaks a rule does not stop the batch: it is held in the batch's
quarantine files (:mod:`totes.contracts.quarantine`) and the rest goes on. ``retry`` puts
quarantined row versions through the rules again, as part of a batch.

A run that fails before its manifest leaves only files that no manifest names; the next run
transforms the same lake files again, under new keys. The batch's time is the newest lake
key's time (data time), so manifests sort as the data does.
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from totes.contracts.errors import LakeError
from totes.contracts.manifest import Manifest, retry_prefix, state_prefix
from totes.contracts.quarantine import quarantine_prefix
from totes.contracts.source_tables import REFERENCE_TABLES, SOURCE_TABLES
from totes.contracts.stage_results import TableOutput, TransformResult, counted
from totes.contracts.star_schema import TABLES, WarehouseTable
from totes.rules import dimensions as dims
from totes.rules.facts import FACT_SOURCES, fact_dates, fact_rows, widened_fact
from totes.utils.footers import batch_files
from totes.utils.lake import Lake, key_time, parquet_writer, storage_call
from totes.utils.ledger import ALL_TABLES, Ledger, new_run_id
from totes.utils.manifests import commit, latest_manifest, read_raw_manifest
from totes.utils.run_tracking import check_lease, skip_reason, tracked
from totes.utils import settings

log = logging.getLogger(__name__)

#: Rows per record batch when streaming a fact table's lake file (one batch in memory).
FACT_BATCH_ROWS = 65_536
#: The most lake files of one table a batch takes: a backlog is transformed over several
#: batches (the next run takes the rest), each well inside a Lambda's time limit.
MAX_FILES_PER_TABLE = 96


class _Outputs:
    """Staged Parquet files, one per warehouse table (or state table), published together."""

    def __init__(self, processed: Lake, stack: contextlib.ExitStack):
        self.processed, self.stack = processed, stack
        self.writers: dict[str, tuple[str, pq.ParquetWriter]] = {}
        self.rows: dict[str, int] = {}
        #: A warehouse table's file schema when it is not the star schema's (a widened fact).
        self.schemas: dict[str, pa.Schema] = {}

    def write(self, name: str, rows: Optional[pa.Table]) -> None:
        """Append ``rows`` to the file of ``name`` (a warehouse table, ``_state/<table>`` or
        ``_quarantine/<table>``)."""
        if rows is None or rows.num_rows == 0:
            return
        if name not in self.writers:
            path = self.stack.enter_context(self.processed.staging_file())
            schema = self.schemas.get(name) or (
                TABLES[name].arrow_schema() if name in TABLES else rows.schema)
            with storage_call(self._doing(name)):
                writer = parquet_writer(path, schema)
            self.stack.callback(self._close, name, writer)
            self.writers[name] = (path, writer)
        writer = self.writers[name][1]
        if name not in TABLES and rows.schema != writer.schema:
            rows = rows.cast(writer.schema)  # a quarantine file of lake files of two schemas
        with storage_call(self._doing(name)):
            writer.write_table(rows)
        self.rows[name] = self.rows.get(name, 0) + rows.num_rows

    def _doing(self, name: str) -> str:
        return f"writing the staged {name} file of the processed area {self.processed.uri}"

    def _close(self, name: str, writer: pq.ParquetWriter) -> None:
        """Close ``writer`` (again: a no-op); a disk that fails it raises StorageUnavailable."""
        with storage_call(self._doing(name)):
            writer.close()

    def hold(self, table: str, held: Optional[pa.Table]) -> None:
        """Add row versions of source ``table`` that broke a rule to its quarantine file."""
        self.write(quarantine_prefix(table), held)

    def publish(self, moment: Optional[datetime] = None,
                key_of: Optional[Callable[[str], str]] = None) -> dict[str, str]:
        """Close every file and publish it under its key (``key_of(name)`` when given, else
        the next key of ``name`` at ``moment``); returns name → key."""
        keys = {}
        for name, (path, writer) in self.writers.items():
            self._close(name, writer)
            if key_of is not None:
                key = key_of(name)
            elif moment is not None:
                key = self.processed.next_key(name, moment)
            else:
                raise ValueError("publish needs the batch's moment or key_of")
            self.processed.publish(path, key)
            keys[name] = key
        return keys


def pending_lake_files(lake: Lake, previous: Optional[Manifest],
                       max_rows: Optional[int] = None) -> tuple[dict[str, list[str]], bool]:
    """Per source table, the lake keys after the newest one ``previous`` took (all of them
    before the first batch), oldest first, at most :data:`MAX_FILES_PER_TABLE` and, with
    ``max_rows``, whole batches up to that many rows (at least one batch; rows read from
    the footers); tables with none are left out. Second: whether keys beyond those bounds
    wait for the next transform.

    Raises:
        LakeError / StorageUnavailable: a footer could not be read.
    """
    consumed = previous.lake if previous is not None else {}
    taken, more = {}, False
    for table in SOURCE_TABLES:
        keys = lake.keys_after(table, consumed.get(table))
        if not keys:
            continue
        bounded = keys[:MAX_FILES_PER_TABLE]
        if max_rows is not None and len(bounded) > 1:
            rows = 0
            for i, key in enumerate(bounded):
                rows += sum(lake.metadata(file).num_rows for file in batch_files(lake, key))
                if rows >= max_rows:
                    bounded = bounded[:i + 1]
                    break
        taken[table] = bounded
        more = more or len(bounded) < len(keys)
    return taken, more


def lake_schema(lake: Lake, files: list[str]) -> pa.Schema:
    """The schema of ``files`` (one table's lake files, of any schema versions) read together:
    every column any of them has, each in the widest of its types (pyarrow's permissive
    promotion: int32 and int64 → int64, decimal128(10, 2) and decimal128(38, 9) →
    decimal128(38, 9), timestamp[ms] and timestamp[us] → timestamp[us]).

    Raises:
        LakeError: two files hold one column in types no type holds both of.
    """
    schemas = [lake.metadata(file).schema.to_arrow_schema() for file in files]
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas \
            else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LakeError(f"lake files {files[0]} … {files[-1]} hold a column in types that "
                        f"cannot be read together: {exc}") from None


def _read_all(lake: Lake, keys: list[str], retry: Optional[pa.Table] = None) -> pa.Table:
    """Every row of the lake files of ``keys`` (and the ``retry`` rows), their schema
    versions unified to the widest types (:func:`lake_schema`)."""
    tables = [lake.read_table(file) for key in keys for file in batch_files(lake, key)] + \
        ([retry] if retry is not None else [])
    return pa.concat_tables(tables, promote_options="permissive")


def merge_reference_state(processed: Lake, previous: Optional[Manifest],
                          new: dict[str, pa.Table], outputs: _Outputs) -> dict:
    """The latest row per key of every reference table, this batch's rows included; a table
    that changed gets a new state file (written to ``outputs``)."""
    state_keys = previous.state if previous is not None else {}
    state: dict[str, Optional[pa.Table]] = {}
    for table, key in REFERENCE_TABLES.items():
        old = _read_state(processed, state_keys[table]) if table in state_keys else None
        if table not in new:
            state[table] = old
            continue
        merged = [t for t in (old, new[table]) if t is not None]
        state[table] = dims.latest_per_key(
            pa.concat_tables(merged, promote_options="permissive"), key)
        outputs.write(state_prefix(table), state[table])
    return state


def _read_state(processed: Lake, key: str) -> pa.Table:
    """The reference state file ``key`` of the last batch.

    Raises:
        LakeError: it is missing or damaged; the message gives the command that rebuilds
            the batch that wrote it.
    """
    try:
        return processed.read_table(key)
    except LakeError as exc:
        raise LakeError(f"{exc}. It is the reference state of the last batch: `totes "
                        f"transform --rebuild {key}` rebuilds the batch that wrote it from "
                        "the lake (docs/how-to/damaged-processed-file.md)") from exc


def write_facts(lake: Lake, new_keys: dict[str, list[str]], outputs: _Outputs,
                retry: dict[str, pa.Table]) -> pa.Array:
    """Stream every new lake file of the fact sources (and the row versions to ``retry``)
    into its fact table, one record batch at a time, holding the row versions that break a
    rule; returns the distinct dates the fact rows refer to (for dim_date)."""
    return pa.concat_arrays([pa.array([], pa.date32())] + [
        write_fact(lake, source_table, new_keys.get(source_table, []), outputs,
                   retry.get(source_table)) for source_table in FACT_SOURCES])


def fact_target(lake: Lake, source_table: str, keys: list[str],
                outputs: _Outputs) -> tuple[list[str], WarehouseTable]:
    """The lake files of ``source_table``'s lake batches ``keys`` (oldest first), and its fact
    as those files make it: files of several schema versions give the fact the widest types
    of its measures (:func:`~totes.rules.facts.widened_fact`), which ``outputs`` writes the
    fact's file in."""
    files = [file for key in keys for file in batch_files(lake, key)]
    target = widened_fact(source_table, lake_schema(lake, files))
    outputs.schemas[FACT_SOURCES[source_table][0]] = target.arrow_schema()
    return files, target


def write_fact(lake: Lake, source_table: str, keys: list[str], outputs: _Outputs,
               retry: Optional[pa.Table] = None) -> pa.Array:
    """:func:`write_facts` of one fact source: its lake batches ``keys`` and its ``retry``
    rows into its fact table; returns the dates its rows refer to."""
    files, target = fact_target(lake, source_table, keys, outputs)
    batches = (batch for file in files for batch in lake.iter_batches(file, FACT_BATCH_ROWS))
    return write_fact_rows(_chain(batches, retry.to_batches(FACT_BATCH_ROWS)
                                  if retry is not None else []),
                           source_table, target, outputs)


def write_fact_rows(batches, source_table: str, target, outputs: _Outputs) -> pa.Array:
    """Record ``batches`` of ``source_table`` through the fact rules into ``outputs`` (the
    fact ``target``, widened; held versions to the quarantine file); returns their dates."""
    dates = [pa.array([], pa.date32())]
    for batch in batches:
        checked = fact_rows(batch, source_table, target)
        outputs.write(FACT_SOURCES[source_table][0], checked.rows)
        outputs.hold(source_table, checked.held)
        dates.append(fact_dates(checked.rows))
    return pa.concat_arrays(dates)


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


#: What writes a batch's facts: :func:`write_facts` (here, one record batch at a time) or the
#: Spark engine's (:func:`totes.transform.spark_transform.fact_writer`), same arguments.
FactWriter = Callable[[Lake, dict[str, list[str]], "_Outputs", dict[str, pa.Table]], pa.Array]


def build_batch(lake: Lake, processed: Lake, previous: Optional[Manifest],
                new_keys: dict[str, list[str]], retry: dict[str, pa.Table],
                moment: datetime, facts: Optional[FactWriter] = None
                ) -> tuple[dict[str, str], dict[str, int]]:
    """Write and publish the files of one batch: the lake files ``new_keys`` (per source
    table, oldest first) and the quarantined row versions ``retry`` put through the rules,
    with the reference state of ``previous`` (the batch before; None for the first). Returns
    (file name → published key, file name → rows); a name is a warehouse table,
    ``_state/<table>``, ``_quarantine/<table>`` or ``_retry/<table>``. The same inputs give
    the same files: what :mod:`totes.transform.rebuild` relies on. ``facts`` writes the
    facts (default :func:`write_facts`; the Spark engine's writes the same rows).

    Raises:
        LakeError / StorageUnavailable: a file could not be read or written.
        LeaseLost: the transform lease was lost before the files were published.
    """
    with contextlib.ExitStack() as stack:
        outputs = _Outputs(processed, stack)
        for table in SOURCE_TABLES:  # the batch's own record of what it retried
            outputs.write(retry_prefix(table), retry.get(table))
        new = {t: _read_all(lake, new_keys.get(t, []), retry.get(t)) for t in SOURCE_TABLES
               if (t in new_keys or t in retry) and t not in FACT_SOURCES}
        state = merge_reference_state(processed, previous, new, outputs)
        for rule, checked in dims.dimension_rows(dims.BatchInputs(new, state)):
            if checked is not None:
                outputs.write(rule.table, checked.rows)
                outputs.hold(rule.sources[0], checked.held)
        dates = (facts or write_facts)(lake, new_keys, outputs, retry)
        if len(dates):
            outputs.write("dim_date", dims.dim_date(dates))
        check_lease()
        return outputs.publish(moment), dict(outputs.rows)


def transform(lake: Lake, processed: Lake, retry: Optional[dict[str, pa.Table]] = None,
              ledger: Optional[Ledger] = None, run_id: Optional[str] = None,
              facts: Optional[FactWriter] = None) -> TransformResult:
    """Transform every lake file newer than the last batch's, then commit a manifest; with a
    ``ledger``, under the ``transform`` lease (waited for: transforms are serialised) and
    recorded there.

    ``retry`` maps a source table to quarantined row versions of it (source columns only) to
    put through the rules again in this batch: those that pass now join the star schema, the
    others are held again.

    ``facts`` writes the facts (default :func:`write_facts`; the Spark engine passes its own,
    :mod:`totes.transform.spark_transform`).

    Returns the stage result (:class:`~totes.contracts.stage_results.TransformResult`); its
    ``manifest`` is None and ``tables`` empty when there was nothing to transform.

    Raises:
        LakeError: storage broke its contract, or another transform committed the same batch
            first.
        StorageUnavailable: storage could not be reached (retry).
    """
    def skipped(holder) -> TransformResult:
        return TransformResult(manifest=None, source_files=0, tables=[],
                               skipped=skip_reason(holder), seconds=0.0)

    def summary(result: TransformResult) -> dict:
        return {"rows": sum(t.rows for t in result.tables), "key": result.manifest,
                "details": {"source_files": result.source_files,
                            "tables": {t.table: t.rows for t in result.tables},
                            "quarantined": result.quarantined}}

    return tracked(ledger, "transform", ALL_TABLES, run_id or new_run_id(),
                   "retry" if retry else None, lambda: _transform(lake, processed, retry, facts),
                   skipped, summary, wait=True)


def _transform(lake: Lake, processed: Lake, retry: Optional[dict[str, pa.Table]],
               facts: Optional[FactWriter] = None) -> TransformResult:
    started = time.monotonic()
    retry = {t: rows for t, rows in (retry or {}).items() if rows is not None and rows.num_rows}
    previous_key, previous = latest_manifest(processed)  # read through the repairs, to read
    # its files; what the new manifest carries on is the committed one's keys, so that a
    # later repair of an earlier batch reaches this one too.
    carried = read_raw_manifest(processed, previous_key) if previous_key else None
    new_keys, more = pending_lake_files(lake, previous, settings.current().transform_max_rows)
    if more:
        log.info("transform takes %s; later lake files wait for the next transform",
                 ", ".join(f"{t} {len(k):,}" for t, k in new_keys.items()))
    if not new_keys and not retry:
        return TransformResult(manifest=None, source_files=0, tables=[],
                               seconds=round(time.monotonic() - started, 3))
    moment = max([key_time(keys[-1]) for keys in new_keys.values()]
                 + ([datetime.fromisoformat(previous.batch_time)] if previous else []))
    published, rows = build_batch(lake, processed, previous, new_keys, retry, moment, facts)
    tables = [TableOutput(table=name, key=published[name], rows=rows[name])
              for name in TABLES if name in published]
    quarantined = {t: rows[quarantine_prefix(t)] for t in SOURCE_TABLES
                   if quarantine_prefix(t) in published}
    manifest = Manifest(
        batch_time=moment.isoformat(sep=" ", timespec="microseconds"),
        lake={**(carried.lake if carried else {}),
              **{t: keys[-1] for t, keys in new_keys.items()}},
        state={**(carried.state if carried else {}),
               **{t: published[state_prefix(t)] for t in REFERENCE_TABLES
                  if state_prefix(t) in published}},
        source_files=new_keys, outputs=tables, quarantined=quarantined,
        quarantine=(carried.quarantine if carried else [])
        + [published[quarantine_prefix(t)] for t in quarantined],
        retried={t: published[retry_prefix(t)] for t in SOURCE_TABLES
                 if retry_prefix(t) in published})
    check_lease()  # the manifest makes the batch visible: only while the lease is ours
    manifest_key = commit(processed, manifest, moment)
    source_files = sum(map(len, new_keys.values()))
    if quarantined:
        log.warning("batch %s held %s in quarantine: %s", manifest_key,
                    counted(sum(quarantined.values()), "row version"),
                    ", ".join(f"{t} {n:,}" for t, n in quarantined.items()))
    log.info("transformed %s into %s", counted(source_files, "lake file"), manifest_key)
    return TransformResult(manifest=manifest_key, source_files=source_files, tables=tables,
                           quarantined=quarantined, quarantined_rows=sum(quarantined.values()),
                           more=more, seconds=round(time.monotonic() - started, 3))
