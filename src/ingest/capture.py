"""Change data capture: every committed change of the ``cdc`` tables, read from PostgreSQL's
log (a ``pgoutput`` slot, through SQL functions: :mod:`totes.utils.postgres_cdc`), written to
the lake as each table's batches, the position read through committed last
(:mod:`totes.contracts.cdc` has the file contract).

One reader per run, for every ``cdc`` table, under the lease ``capture:<slot>``: a slot
serves one reader at a time. A read:

1. checks the source is ready (``wal_level``, the role's ``REPLICATION``, the publication
   and its tables, the slot, replica identities): a message naming what is missing, before
   anything is written;
2. advances the slot to the newest position record's ``through_lsn`` (the lake is the
   truth: the slot never gets ahead of what the lake committed);
3. takes the initial copy of each table that has none (or is reingested, or was polled
   before): the table in one snapshot, the snapshot and the slot's position in its footer;
4. reads the slot's changes up to the current WAL position, at most ``max_changes_per_run``
   (a transaction is never split); a transaction's changes of a table become versions (a
   row's last state in the transaction; a delete with the row's last values), unless the
   table's batches already hold the transaction (its commit at or before the table's
   ``through_lsn``, or visible in the table's initial copy's snapshot);
5. publishes each table's batch, then the position record, last.

A schema change (a Relation message whose columns are not the lake's) follows the table's
``schema_contract`` (:meth:`_Capture._schema_change`): what it evolves ends the table's
batch before that point and starts one of the new shape. A TRUNCATE, or a schema change the
contract freezes, stops its table: its batch ends before that transaction, the position (and
so the slot) stays there, and the read raises :class:`CaptureStopped` naming the table and
what to do, after the other tables have landed. Killed at any line, a read loses and doubles
nothing: the next read starts from the slot (at the last position record) and each table
skips what its batches already hold (a batch a schema change ended included: its footer
says how far it goes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from totes.contracts.cdc import (CDC_COLUMNS, CDC_FIELDS, CdcFooter, LSN, Position, SNAPSHOT_MODE,
                                 STREAM_MODE, lsn_text, parse_position, position_json,
                                 position_prefix, visible_in_snapshot)
from totes.contracts.config import CapturePlan, TablePlan
from totes.contracts.errors import (CaptureStopped, CdcNotReady, ConfigError, DatabaseUnavailable,
                                    PermissionDenied, SourceSchemaError)
from totes.contracts.quarantine import UNREADABLE, add_unreadable, with_unreadable
from totes.contracts.source_schema import (FIRST_VERSION, SchemaDecision, SchemaRecord,
                                           SourceColumn, decide, record_of_arrow,
                                           schema_footer)
from totes.contracts.source_tables import SOURCE_TABLES
from totes.contracts.stage_results import CaptureResult, IngestResult
from totes.contracts.watermark import Footer, MODE_KEY, Watermark, footer_metadata, greatest
from totes.ingest.batch_writer import cutoff_bound, read_into
from totes.utils import mysql_binlog, postgres_cdc
from totes.utils.databases import SourceDatabase
from totes.utils.footers import batch_files, read_footer
from totes.utils.lake import Lake, parquet_writer, storage_call
from totes.utils.ledger import Ledger, LedgerRecord, new_run_id, now, record_json
from totes.utils.pgoutput import (Begin, Change, Commit, Relation, Truncate, UNCHANGED, Value,
                                  decode)
from totes.utils.postgres_catalog import arrow_type
from totes.utils.postgres_copy import csv_record_batches
from totes.utils.postgres_errors import sqlstate_and_message, sqlstate_of
from totes.utils.postgres_reader import PostgresReader
from totes.utils.run_tracking import check_lease, skip_reason, tracked
from totes.utils.source_reader import Job, measuring_pool

log = logging.getLogger(__name__)

#: Versions of one table held in memory before they are written as a row group.
FLUSH_ROWS = 50_000
#: A slot read by another backend (SQLSTATE 55006, object in use): another run reads it.
_OBJECT_IN_USE = "55006"


def capture(plan: CapturePlan, source: SourceDatabase, lake: Lake,
            ledger: Optional[Ledger] = None) -> CaptureResult:
    """Read the change log once for every table of ``plan`` (see the module docstring);
    with a ``ledger``, under the lease ``capture:<slot>`` (a run that finds it held skips),
    recorded there: the read, and each table's ingest.

    Returns :class:`~totes.contracts.stage_results.CaptureResult` (one
    :class:`~totes.contracts.stage_results.IngestResult` per table).

    Raises:
        CdcNotReady: the source lacks what change data capture needs (nothing is written).
        CaptureStopped: a TRUNCATE or a schema change stopped a table (the others landed).
        ConfigError: the source is not PostgreSQL.
        DatabaseUnavailable: the source could not be reached, or another reader holds the
            slot (retry).
        LakeError / StorageUnavailable: the lake could not be read or written.
    """
    run_id = plan.run_id or new_run_id()
    engine = getattr(source, "engine", "postgresql")
    if engine == "mysql":  # the binlog's reader: the same contract, another log
        from totes.ingest.binlog_capture import BinlogCapture
        reader: _Capture = BinlogCapture(plan, source, lake, run_id)
    elif engine == "postgresql":
        reader = _Capture(plan, source, lake, run_id)
    else:
        raise ConfigError(f"the cdc tables ({', '.join(t.table for t in plan.tables)}) need a "
                          f"PostgreSQL or MySQL source; the {source.describe()} is read by a "
                          "cursor (extract_type: incremental)")

    def skipped(holder) -> CaptureResult:
        reason = skip_reason(holder)
        return CaptureResult(slot=plan.slot, skipped=reason, seconds=0.0, tables=[
            _empty_result(t, run_id, reason) for t in plan.tables])

    def summary(result: CaptureResult) -> dict:
        return {"rows": sum(t.rows for t in result.tables), "key": result.position,
                "details": {"through_lsn": result.through_lsn, "changes": result.changes,
                            "transactions": result.transactions, "stopped": result.stopped,
                            "tables": {t.table: t.rows for t in result.tables}}}

    result = tracked(ledger, "capture", plan.slot, run_id, "cdc",
                     lambda: reader.run(ledger), skipped,
                     summary)
    if result.stopped:
        raise CaptureStopped("; ".join(f"table {t}: {why}" for t, why in
                                       result.stopped.items()))
    return result


def _empty_result(plan: TablePlan, run_id: str, skipped: Optional[str] = None) -> IngestResult:
    return IngestResult(table=plan.table, mode=plan.mode, key=None, rows=0, row_groups=0,
                        bytes=0, low_watermark=None, high_watermark=None, cutoff="",
                        skipped=skipped, run_id=run_id, seconds=0.0, peak_arrow_bytes=0)


@dataclass
class _Table:
    """One ``cdc`` table during a read: how far its batches go, what it writes."""

    plan: TablePlan
    schema: pa.Schema  # the lake's columns of the table (the source's)
    through: int
    snapshot: Optional[str]
    low: Optional[Watermark]
    key_index: int
    result: IngestResult
    rows: list = field(default_factory=list)  # (values, operation, lsn, commit time)
    deferred: list = field(default_factory=list)  # versions that need the lake's values
    latest: dict = field(default_factory=dict)  # key → values of its last version read
    stopped: Optional[str] = None
    limit: Optional[int] = None  # a stopped table's through: before what stopped it
    high: Optional[Watermark] = None
    changes: dict = field(default_factory=lambda: {"insert": 0, "update": 0, "delete": 0})
    staged: Optional[str] = None
    writer: Optional[pq.ParquetWriter] = None
    written: int = 0
    row_groups: int = 0
    last_commit: Optional[datetime] = None
    record: Optional[SchemaRecord] = None  # the source schema of the newest batch
    keep: Optional[list[int]] = None  # the log's columns the lake keeps (None: all)
    evolved: bool = False  # the schema evolved in this read: the batch records it
    split_key: Optional[str] = None  # the batch a schema change ended in this read
    #: an ALTER TABLE read from a binlog, not decided yet: when, and the position before it
    altered: Optional[tuple[datetime, int]] = None
    mapped: bool = False  # a binlog table map of the table was decided in this read
    #: columns the contract casts to the lake's type (``data_type: discard_value``): the
    #: decision, and the schema the log's values are read with (those columns in the
    #: source's type); None when no column is cast
    casting: Optional[tuple[SchemaDecision, pa.Schema]] = None


@dataclass
class _Transaction:
    xid: int
    commit_time: datetime
    # table → key → [first operation, last operation, values, key-only delete]
    changes: dict = field(default_factory=dict)


class _Capture:
    def __init__(self, plan: CapturePlan, source, lake: Lake, run_id: str):
        self.plan, self.source, self.lake, self.run_id = plan, source, lake, run_id
        self.tables: dict[str, _Table] = {}
        self.relations: dict[int, Optional[str]] = {}
        self.type_names: dict[tuple[int, int], str] = {}
        self.namespace = "public"
        self.transactions = self.changes = 0
        self.pool = measuring_pool()

    # ---- the read --------------------------------------------------------------------------
    def run(self, ledger: Optional[Ledger]) -> CaptureResult:
        started = time.monotonic()
        slot, publication = self.plan.slot, self.plan.publication
        names = [t.table for t in self.plan.tables]
        doing = f"reading the change log (slot {slot}) of the {self.source.describe()}"
        with self.source.session(f"totes-capture-{slot}", doing) as session, \
                contextlib.ExitStack() as stack:
            conn = session.conn
            problems = postgres_cdc.readiness(conn, slot, publication, names)
            if problems:
                raise CdcNotReady(f"change data capture of {', '.join(names)} is not ready in "
                                  f"the {self.source.describe()}: " + "; ".join(problems))
            position_key, position = self._position()
            if position is not None:
                postgres_cdc.advance(conn, slot, position.through_lsn)
            for table_plan in self.plan.tables:
                session.doing = f"preparing table {table_plan.table} for change data capture"
                self.tables[table_plan.table] = self._prepare(conn, table_plan, position)
            session.doing = doing
            (self.namespace,), = conn.run("SELECT current_schema()::text")
            # The types the log may name, by (oid, modifier): read now, since the connection
            # streams the log while it is read.
            self.type_names = {(int(o), int(m)): t for o, m, t in conn.run(
                "SELECT DISTINCT a.atttypid::bigint, a.atttypmod, format_type(a.atttypid, "
                "a.atttypmod) FROM pg_attribute a WHERE a.attrelid = ANY(CAST(:t AS "
                "regclass[])) AND a.attnum > 0 AND NOT a.attisdropped",
                t=[f'"{name}"' for name in names])}
            upto = postgres_cdc.current_lsn(conn)
            start = max([t.through for t in self.tables.values()] or [0])
            read_end, messages = self._read(conn, stack, upto, start)
            session.doing = f"completing the versions read from slot {slot}"
            self._resolve_deferred()
            through = min([read_end] + [t.limit for t in self.tables.values()
                                        if t.limit is not None])
            keys = self._publish(stack, through, read_end)
            state = postgres_cdc.slot_state(conn, slot)
        record = self._commit_position(position, through, read_end, keys)
        retained = state.retained_bytes if state is not None else None
        warning = None
        if retained is not None and retained > self.plan.retained_wal_alert_bytes:
            warning = (f"replication slot {slot} retains {retained:,} bytes of WAL on the "
                       f"{self.source.describe()}, more than cdc.retained_wal_alert_bytes "
                       f"({self.plan.retained_wal_alert_bytes:,}): the source keeps WAL until "
                       "the slot is read; check that runs read it (a stopped table holds it "
                       "back: totes status), or drop it when capture is over (totes cdc drop)")
            log.warning(warning)
        seconds = round(time.monotonic() - started, 3)  # one read serves every table
        results = [self._result(t, read_end).model_copy(update={"seconds": seconds})
                   for t in self.tables.values()]
        if ledger is not None:
            for result in results:
                self._record(ledger, result)
        log.info("read slot %s through %s: %d transactions, %d changes", slot,
                 lsn_text(through), self.transactions, self.changes)
        return CaptureResult(
            slot=slot, tables=results, position=record or position_key,
            through_lsn=lsn_text(through), transactions=self.transactions,
            changes=self.changes,
            stopped={n: t.stopped for n, t in self.tables.items() if t.stopped},
            retained_wal_bytes=retained, warning=warning, seconds=seconds)

    def _position(self) -> tuple[Optional[str], Optional[Position]]:
        prefix = position_prefix(self.plan.slot)
        key = self.lake.newest_key(prefix, "json")
        if key is None:
            return None, None
        return key, parse_position(self.lake.read_bytes(key), self.lake.describe(key))

    def _prepare(self, conn, plan: TablePlan, position: Optional[Position]) -> _Table:
        """The table's state: from its newest batch, or from a new initial copy."""
        key = self.lake.newest_key(plan.table)
        footer: Optional[Footer] = read_footer(self.lake, key) if key else None
        copied = None
        if footer is None or footer.cdc is None or plan.mode == "reingest":
            copied = self._copy(conn, plan)
            assert copied.key is not None  # nosec B101 (a copy always publishes a file)
            key, footer = copied.key, read_footer(self.lake, copied.key)
        assert footer is not None and footer.cdc is not None and key is not None  # nosec B101
        schema = self._lake_schema(key)
        # Every table holds every change up to the newest position too (a table reingested
        # now was copied after the slot moved to it: its own position is the later one).
        through = max(footer.cdc.through_lsn, position.through_lsn if position else 0)
        snapshot = footer.cdc.snapshot if footer.mode == SNAPSHOT_MODE else None
        result = copied or _empty_result(plan, self.run_id)
        return _Table(plan, schema, through, snapshot, footer.high,
                      schema.get_field_index(plan.primary_key), result, high=footer.high,
                      record=footer.source_schema or record_of_arrow(schema))

    def _lake_schema(self, key: str) -> pa.Schema:
        """The source's columns as the table's lake batches keep them."""
        files = batch_files(self.lake, key)
        schema = self.lake.metadata(files[0]).schema.to_arrow_schema()
        return pa.schema([f for f in schema if f.name not in CDC_COLUMNS + (UNREADABLE,)])

    def _copy(self, conn, plan: TablePlan) -> IngestResult:
        """The table's initial copy, in one snapshot, with the snapshot and the slot's
        position in its footer; an empty table gets an empty file (its footer is the
        state)."""
        started = time.monotonic()
        copy = plan.model_copy(update={"extract_type": "full", "mode": "full"})
        doing = f"copying table {plan.table} (its initial copy for change data capture)"
        reader, inspected, state = self._begin_copy(conn, copy)
        snapshot, confirmed = state.snapshot, state.through_lsn
        extra = {MODE_KEY: json.dumps(SNAPSHOT_MODE), **state.metadata()}
        job = Job(copy, inspected.schema, None, self.pool, plan.record_batch_bytes,
                  cutoff_bound(inspected))
        with self.lake.staging_file() as staged:
            written = read_into(reader, conn, copy, inspected, job, staged, doing,
                                footer=extra)
            conn.run("COMMIT")
            if written is None:  # an empty table: an empty file keeps the copy's state
                with storage_call(f"writing the staged copy of {plan.table}"), \
                        parquet_writer(staged, inspected.schema) as empty:
                    empty.add_key_value_metadata(footer_metadata(None, None, SNAPSHOT_MODE)
                                                 | extra)
            high = written.high if written else None
            moment = (high.moment() if high else None) or inspected.moment
            key = self.lake.next_key(plan.table, moment)
            check_lease()
            size = self.lake.publish(staged, key)
        log.info("copied %s: %d rows into %s (snapshot %s)", plan.table,
                 written.rows if written else 0, key, snapshot)
        return IngestResult(
            table=plan.table, mode=SNAPSHOT_MODE, key=key, rows=written.rows if written else 0,
            row_groups=written.row_groups if written else 0, bytes=size, low_watermark=None,
            high_watermark=high, cutoff=inspected.cutoff, run_id=self.run_id,
            seconds=round(time.monotonic() - started, 3),
            peak_arrow_bytes=self.pool.max_memory(), through_lsn=self._text(confirmed))

    def _begin_copy(self, conn, copy: TablePlan):
        """Start the initial copy's snapshot: ``(reader, inspected, footer state)``, the
        state the snapshot and the log position it is consistent with."""
        reader = PostgresReader()
        inspected = reader.inspect(conn, copy)
        reader.begin(conn)
        (snapshot, confirmed), = conn.run(
            "SELECT pg_current_snapshot()::text, (SELECT (confirmed_flush_lsn - "
            "'0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = :s)",
            s=self.plan.slot)
        return reader, inspected, CdcFooter(through_lsn=int(confirmed), snapshot=snapshot)

    def _text(self, position: int) -> str:
        """A log position as the source writes it (PostgreSQL: ``0/16B0A40``)."""
        return lsn_text(position)

    def _position_fields(self, through: int) -> dict:
        """Fields a source adds to a position record (none for PostgreSQL)."""
        return {}

    def _versions_batch(self, table: "_Table") -> pa.RecordBatch:
        """``table.rows`` (versions read from the log) as a record batch of the lake's
        columns plus the change columns."""
        if table.casting is None:
            return _versions_batch(table.schema, table.rows, table.plan.table, self.pool)
        decision, read_as = table.casting  # values read in the source's type, then cast
        batch = _versions_batch(read_as, table.rows, table.plan.table, self.pool)
        values = len(batch.schema) - len(CDC_FIELDS)
        cast = decision.apply(pa.RecordBatch.from_arrays(
            batch.columns[:values], schema=pa.schema(list(batch.schema)[:values])))
        return pa.RecordBatch.from_arrays([*cast.columns, *batch.columns[values:]],
                                          schema=pa.schema([*cast.schema, *CDC_FIELDS]))

    def _read(self, conn, stack, upto: int, start: int) -> tuple[int, int]:
        """Read the slot up to ``upto``; returns how far the log is read (every change up
        to it is decided) and the number of messages."""
        messages, last_end, previous_end = 0, None, start
        transaction: Optional[_Transaction] = None
        try:
            with postgres_cdc.peek(conn, self.plan.slot, self.plan.publication, upto,
                                   self.plan.max_changes_per_run,
                                   f"reading slot {self.plan.slot}") as rows:
                for _, xid, data in rows:
                    messages += 1
                    message = decode(data)
                    if isinstance(message, Begin):
                        transaction = _Transaction(xid, message.commit_time)
                    elif isinstance(message, Relation):
                        self._relation(message, previous_end, transaction, stack)
                    elif isinstance(message, Change) and transaction is not None:
                        self._change(message, transaction)
                    elif isinstance(message, Truncate) and transaction is not None:
                        self._truncate(message, previous_end, transaction)
                    elif isinstance(message, Commit) and transaction is not None:
                        self._commit(transaction, message, stack)
                        last_end = previous_end = message.end_lsn
                        transaction = None
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if sqlstate_of(exc.__cause__ or exc) == _OBJECT_IN_USE:
                raise DatabaseUnavailable(f"slot {self.plan.slot} is being read by another "
                                          "reader; the next run goes on") from exc
            raise
        if messages < self.plan.max_changes_per_run:  # the whole log up to upto was read
            return max(upto, last_end or 0, start), messages
        return max(last_end or start, start), messages

    # ---- messages ----------------------------------------------------------------------------
    def _relation(self, relation: Relation, previous_end: int,
                  transaction: Optional[_Transaction], stack) -> None:
        table = self.tables.get(relation.name) if relation.namespace == self.namespace \
            else None
        self.relations[relation.oid] = table.plan.table if table else None
        if table is None or table.stopped:
            return
        found = [(c.name, c.type_oid, c.type_modifier) for c in relation.columns]
        columns = [(name, self._arrow_type(table, name, oid, modifier))
                   for name, oid, modifier in found]
        expected = [(f.name, f.type) for f in table.schema]
        if table.casting is not None or columns != expected:
            # the versions read so far are parsed as the log described them until now
            self._resolve_deferred(table)
            self._flush(table, stack)
        table.keep = table.casting = None
        if columns != expected:
            source = [SourceColumn(column, kind,
                                   source_type=self.type_names.get((oid, modifier)))
                      for (column, oid, modifier), (_, kind) in zip(found, columns)]
            self._schema_change(table, source, previous_end, transaction, stack)

    def _schema_change(self, table: _Table, source: list[SourceColumn], previous_end: int,
                       transaction: Optional[_Transaction], stack,
                       moment: Optional[datetime] = None, probe: bool = False) -> None:
        """The log describes the table with other columns (``source``, in the log's order,
        each with the lake's type for it: null for a type the lake cannot hold) than the
        lake's: follow the table's ``schema_contract``
        (:func:`totes.contracts.source_schema.decide`, as a polled extract does). A change
        of schema version (a new column kept or discarded, a widening, a narrowing whose
        values are cast under ``data_type: discard_value``, a dropped column no rule reads)
        ends the table's batch before this point, in the old shape, and the versions after
        it go into a new batch, in the new shape, whose footer records the new version; a
        discarded new column is left out of the versions; a value that does not cast to the
        lake's type is NULL with its text kept for the quarantine, as when polled. What the
        contract freezes, a dropped column a rule reads, a type the lake cannot hold and a
        change in the middle of a transaction that changed the table's rows stop the table.
        ``moment``: when the change was made (default: the transaction's commit time, or
        now). ``probe``: only take up the casts of the schema the lake holds; a change of
        version, or a stop, is left to the change's own event."""
        name = table.plan.table
        columns = [(c.name, c.arrow_type) for c in source]
        expected = [(f.name, f.type) for f in table.schema]
        changed = _describe_change(expected, columns)
        reingest = (f"Run `totes ingest --table {name} --reingest` to take a new initial copy "
                    "in the new shape (the versions before it stay in the lake)")

        def stop(why: str) -> None:
            if not probe:
                self._stop(table, previous_end, transaction, why)

        if any(pa.types.is_null(kind) for _, kind in columns):
            return stop(f"its columns changed in the source ({changed}) to a type the lake "
                        f"cannot hold. {reingest}")
        if transaction is not None and transaction.changes.get(name):
            return stop(f"its columns changed in the source ({changed}) within a transaction "
                        f"that also changed its rows before the change. {reingest}")
        read = SOURCE_TABLES[name].columns if name in SOURCE_TABLES else ()
        now_named = {column for column, _ in columns}
        gone = [column for column, _ in expected if column not in now_named and
                (column in read or column == table.plan.primary_key)]
        if gone:
            return stop(f"table {name} has no column {', '.join(gone)}, which transform reads "
                        "or which is its primary key (dropped or renamed in the source, read "
                        f"from the change log). {reingest} once the column is back, or change "
                        "the rules or the table's primary_key")
        moment = moment or (transaction.commit_time if transaction is not None else now())
        try:
            decision = decide(name, table.record or record_of_arrow(table.schema), source,
                              table.plan.schema_contract, frozenset(read),
                              moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(
                                  sep=" ", timespec="microseconds"))
        except SourceSchemaError as exc:
            return stop(f"{exc} (read from the change log)")
        schema = pa.schema([f for f in decision.lake_schema if f.name != UNREADABLE])
        keep = [i for i, (column, _) in enumerate(columns) if column in schema.names]
        table.keep = keep if len(keep) < len(columns) else None
        read_as = dict(columns)
        casting = (decision, pa.schema([pa.field(f.name, read_as[f.name])
                                        if f.name in decision.casts else f for f in schema])) \
            if decision.casts else None
        unchanged = decision.record.version == (table.record.version if table.record
                                                is not None else FIRST_VERSION)
        if probe and not unchanged:
            return
        if unchanged:
            table.casting = casting
            if table.record is not None:  # what the source now holds, the changes kept
                table.record = decision.record.model_copy(update={
                    "changes": table.record.changes, "changed_at": table.record.changed_at})
            return  # nothing new to the contract (a column it left out before, say)
        self._resolve_deferred(table)
        if table.rows or table.writer is not None or table.evolved:
            table.split_key = self._publish_table(table, stack,
                                                  max(previous_end, table.through))
        table.schema, table.record, table.evolved = schema, decision.record, True
        table.casting = casting
        table.key_index = schema.get_field_index(table.plan.primary_key)
        table.latest = {}  # values of the old shape
        table.result = table.result.model_copy(update={
            "schema_version": decision.record.version,
            "schema_changes": [c.model_dump() for c in decision.record.changes] or None})
        log.warning("%s: source schema version %d (read from the change log): %s", name,
                    decision.record.version,
                    "; ".join(c.describe() for c in decision.record.changes))

    def _arrow_type(self, table: _Table, column: str, oid: int, modifier: int) -> pa.DataType:
        """The lake's type for a column the log describes; a type no column of the tables
        had when the read began is null (a schema change all the same)."""
        name = self.type_names.get((oid, modifier))
        try:
            return arrow_type(name, table.plan.table, column) if name else pa.null()
        except SourceSchemaError:
            return pa.null()  # a type the lake cannot hold: a schema change all the same

    def _truncate(self, message: Truncate, previous_end: int,
                  transaction: _Transaction) -> None:
        for oid in message.oids:
            name = self.relations.get(oid)
            if name is not None and not self.tables[name].stopped:
                self._stop(self.tables[name], previous_end, transaction,
                           "the source table was truncated (TRUNCATE): its rows are gone "
                           "without a delete each. Take a new initial copy with `totes "
                           f"ingest --table {name} --reingest` (the warehouse keeps the "
                           "versions it has; rows gone from the source can then be found "
                           "by totes reconcile)")

    def _stop(self, table: _Table, previous_end: int,
              transaction: Optional[_Transaction], why: str) -> None:
        table.stopped = why
        table.limit = max(table.through, previous_end)
        if transaction is not None:
            transaction.changes.pop(table.plan.table, None)
        log.error("table %s stopped at %s: %s", table.plan.table, self._text(table.limit),
                  why)

    def _change(self, change: Change, transaction: _Transaction) -> None:
        name = self.relations.get(change.oid)
        if name is None or self.tables[name].stopped:
            return
        self.changes += 1
        table = self.tables[name]
        if table.keep is not None:  # a new column the contract discards
            change = _project(change, table.keep)
        rows = transaction.changes.setdefault(name, {})
        index = table.key_index
        if change.operation == "delete":
            old = change.old or ()
            self._note(rows, old[index], "delete", old, not change.old_is_row)
            return
        new = tuple(change.new or ())
        if change.old is not None and change.old[index] != new[index]:  # the key changed
            self._note(rows, change.old[index], "delete", change.old, not change.old_is_row)
        if change.old_is_row and change.old is not None:  # unchanged TOASTed values
            new = tuple(o if v is UNCHANGED else v for v, o in zip(new, change.old))
        self._note(rows, new[index], change.operation, new, False)

    @staticmethod
    def _note(rows: dict, key: Value, operation: str, values, key_only: bool) -> None:
        if key in rows:
            first = rows[key][0]
            previous = rows[key][2]
            if key_only:  # a key-only delete after a change in this transaction
                values, key_only = previous, False
            values = tuple(p if v is UNCHANGED else v for v, p in zip(values, previous))
            rows[key] = [first, operation, values, key_only]
        else:
            rows[key] = [operation, operation, tuple(values), key_only]

    def _commit(self, transaction: _Transaction, commit: Commit, stack) -> None:
        self.transactions += 1
        for name, rows in transaction.changes.items():
            table = self.tables[name]
            if commit.end_lsn <= table.through or table.stopped:
                continue
            if table.snapshot and visible_in_snapshot(transaction.xid, table.snapshot):
                continue  # the initial copy holds it
            for key, (first, last, values, key_only) in rows.items():
                if last == "delete" and first == "insert":
                    continue  # created and deleted in one transaction: never seen
                operation = "delete" if last == "delete" else \
                    "insert" if first == "insert" else "update"
                values = tuple(values)
                if key_only or UNCHANGED in values:
                    known = table.latest.get(key)
                    if known is not None:
                        values = known if key_only else tuple(
                            k if v is UNCHANGED else v for v, k in zip(values, known))
                    else:
                        table.deferred.append((key, values, key_only, operation,
                                               commit.end_lsn, commit.commit_time))
                        continue
                self._add(table, values, operation, commit.end_lsn, commit.commit_time, stack)

    def _add(self, table: _Table, values: tuple, operation: str, lsn: int,
             commit_time: datetime, stack) -> None:
        table.rows.append((values, operation, lsn, commit_time))
        table.latest[values[table.key_index]] = values
        table.changes[operation] += 1
        table.last_commit = commit_time
        if len(table.rows) >= FLUSH_ROWS:
            self._flush(table, stack)

    # ---- versions into files ------------------------------------------------------------------
    def _flush(self, table: _Table, stack) -> None:
        if not table.rows:
            return
        batch = self._versions_batch(table)
        table.rows = []
        doing = f"writing the staged batch of {table.plan.table} for {self.lake.uri}"
        if table.writer is None:
            table.staged = stack.enter_context(self.lake.staging_file())
            with storage_call(doing):
                table.writer = parquet_writer(table.staged, batch.schema, memory_pool=self.pool)
            stack.callback(_close, table.writer, doing)
        with storage_call(doing):
            table.writer.write_batch(batch)
        table.written += batch.num_rows
        table.row_groups += 1
        wm = table.plan.watermark_column
        if wm and wm in batch.schema.names:
            table.high = greatest(batch, wm, table.plan.primary_key, table.high)

    def _resolve_deferred(self, only: Optional[_Table] = None) -> None:
        """Give the versions that lack values (a delete under the default replica identity,
        an unchanged TOASTed value) the values of the row's last version in the lake (of
        every table, or of ``only``)."""
        for table in [only] if only is not None else self.tables.values():
            if not table.deferred:
                continue
            wanted = {key for key, *_ in table.deferred}
            known = _last_versions(self.lake, table, wanted)
            for key, values, key_only, operation, lsn, commit_time in table.deferred:
                last = known.get(key)
                if last is not None:
                    values = last if key_only else tuple(
                        k if v is UNCHANGED else v for v, k in zip(values, last))
                else:  # the lake never held the row: the version keeps what the log gave
                    values = tuple(None if v is UNCHANGED else v for v in values)
                table.rows.append((values, operation, lsn, commit_time))
                table.changes[operation] += 1
                table.last_commit = max(table.last_commit or commit_time, commit_time)
            table.deferred = []

    def _publish(self, stack, through: int, read_end: int) -> dict[str, str]:
        keys = {}
        for table in self.tables.values():
            table_through = table.limit if table.limit is not None else read_end
            key = self._publish_table(table, stack, table_through) or table.split_key
            if key is not None:
                keys[table.plan.table] = key
        return keys

    def _publish_table(self, table: _Table, stack, table_through: int) -> Optional[str]:
        """Publish what the table's batch holds (None: nothing), its footer saying it holds
        every change up to ``table_through``; the table starts a new batch."""
        self._flush(table, stack)
        if table.writer is None:
            if not table.evolved:
                return None
            # a schema change and no version after it: a batch of no rows records it
            doing = f"writing the staged batch of {table.plan.table} for {self.lake.uri}"
            table.staged = stack.enter_context(self.lake.staging_file())
            with storage_call(doing):
                table.writer = parquet_writer(
                    table.staged, pa.schema([*with_unreadable(table.schema), *CDC_FIELDS]),
                    memory_pool=self.pool)
            stack.callback(_close, table.writer, doing)
            table.last_commit = table.last_commit or now()
        record = table.record if table.evolved else \
            table.record.model_copy(update={"changes": []}) \
            if table.record is not None and table.record.version > FIRST_VERSION else None
        table.writer.add_key_value_metadata(
            footer_metadata(table.high, table.low, STREAM_MODE)
            | CdcFooter(through_lsn=max(table_through, table.through)).metadata()
            | (schema_footer(record) if record is not None else {}))
        _close(table.writer, f"writing the staged batch of {table.plan.table} for "
                             f"{self.lake.uri}")
        assert table.last_commit is not None and table.staged is not None  # nosec B101
        moment = table.last_commit.astimezone(timezone.utc).replace(tzinfo=None)
        key = self.lake.next_key(table.plan.table, moment)
        check_lease()
        size = self.lake.publish(table.staged, key)
        table.result = table.result.model_copy(update={
            "mode": table.result.mode if table.result.key else STREAM_MODE, "key": key,
            "rows": table.result.rows + table.written,
            "row_groups": table.result.row_groups + table.row_groups,
            "bytes": table.result.bytes + size})
        table.writer = table.staged = None
        table.written = table.row_groups = 0
        table.evolved = False
        return key

    def _commit_position(self, previous: Optional[Position], through: int, read_end: int,
                         keys: dict[str, str]) -> Optional[str]:
        stopped = {n: t.stopped for n, t in self.tables.items() if t.stopped}
        if previous is not None and through <= previous.through_lsn and not keys and \
                not stopped:
            return None  # nothing new: the newest record says it all
        record = Position(slot=self.plan.slot, through_lsn=through, read_lsn=read_end,
                          batches=keys, stopped=stopped,
                          read_at=now().isoformat(timespec="microseconds"),
                          **self._position_fields(through))
        prefix = position_prefix(self.plan.slot)
        key = self.lake.next_key(prefix, now().replace(tzinfo=None), "json")
        check_lease()
        self.lake.put_bytes(key, position_json(record))
        return key

    def _result(self, table: _Table, read_end: int) -> IngestResult:
        through = table.limit if table.limit is not None else max(read_end, table.through)
        return table.result.model_copy(update={
            "low_watermark": table.low, "high_watermark": table.high,
            "changes": dict(table.changes), "stopped": table.stopped,
            "through_lsn": self._text(through)})

    def _record(self, ledger: Ledger, result: IngestResult) -> None:
        stamp = now().isoformat(timespec="microseconds")
        ledger.put(LedgerRecord(
            stage="ingest", table=result.table, run_id=self.run_id,
            status="failed" if result.stopped else "succeeded", mode=result.mode,
            started_at=stamp, ended_at=stamp, seconds=result.seconds, rows=result.rows,
            bytes=result.bytes, key=result.key,
            low_watermark=record_json(result.low_watermark),
            high_watermark=record_json(result.high_watermark),
            error_type="CaptureStopped" if result.stopped else None,
            error_message=result.stopped,
            details={"changes": result.changes, "through_lsn": result.through_lsn,
                     **({"schema_version": result.schema_version,
                         "schema_changes": result.schema_changes}
                        if result.schema_changes else {})}))


def _project(change: Change, keep: list[int]) -> Change:
    """``change`` with only the columns at ``keep`` (a new column the contract discards left
    out of its values)."""
    def kept(values):
        return None if values is None else tuple(values[i] for i in keep)
    return dataclasses.replace(change, new=kept(change.new), old=kept(change.old))


def _describe_change(expected: list, found: list) -> str:
    before, after = dict(expected), dict(found)
    parts = [f"{name} added" for name in after if name not in before]
    parts += [f"{name} dropped" for name in before if name not in after]
    parts += [f"{name} is now {after[name]} (was {before[name]})" for name in before
              if name in after and after[name] != before[name]]
    return ", ".join(parts) or "the columns are in another order"


def _versions_batch(schema: pa.Schema, rows: list, table: str,
                    pool: pa.MemoryPool) -> pa.RecordBatch:
    """The versions ``rows`` (``(values as text, operation, lsn, commit time)``) as a record
    batch of the lake's columns plus the change columns: the text values parsed by the same
    CSV reader as a ``COPY`` (so that a value reads as it does when polled); a value the
    lake's type cannot hold is NULL and kept in
    :data:`~totes.contracts.quarantine.UNREADABLE`, as the polled extract does."""
    schema = with_unreadable(schema)
    checks = [(i, f.name, _unholdable(f.type)) for i, f in enumerate(schema)
              if f.name != UNREADABLE]
    lines = []
    for values, *_ in rows:
        kept, found = list(values), None
        for i, name, outside in checks:
            if outside is not None and kept[i] is not None and outside(kept[i]):
                found = add_unreadable(found, name, kept[i])
                kept[i] = None
        # PostgreSQL's CSV: a value quoted (its quotes doubled), NULL an unquoted empty field.
        lines.append(",".join("" if v is None else '"' + str(v).replace('"', '""') + '"'
                              for v in [*kept, found]) + "\n")
    data = io.BufferedReader(io.BytesIO("".join(lines).encode("utf-8")))
    parsed = pa.Table.from_batches(list(csv_record_batches(data, schema, table, pool=pool)),
                                   schema)
    extra = [pa.array([r[1] for r in rows], pa.string()),
             pa.array([r[2] for r in rows], pa.int64()),
             pa.array([r[3] for r in rows], pa.timestamp("us", "UTC"))]
    combined = pa.table([*parsed.columns, *extra],
                        schema=pa.schema([*schema, *CDC_FIELDS]))
    return combined.combine_chunks().to_batches()[0]


_NOT_A_NUMBER = ("NaN", "Infinity", "-Infinity")
_FOUR_DIGIT_YEAR = re.compile(r"^\d{4}-")


def _unholdable(kind: pa.DataType):
    """A test of a value as the log writes it (text) that the lake's ``kind`` cannot hold,
    the same as the polled extract's (numeric NaN and infinities; a timestamp or date at
    infinity, before year 1 (``BC``) or after 9999); None for a kind that holds any."""
    if pa.types.is_decimal(kind):
        return lambda text: text in _NOT_A_NUMBER
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return lambda text: not _FOUR_DIGIT_YEAR.match(text) or text.endswith(" BC")
    return None


def _as_text(value, kind: pa.DataType) -> Optional[str]:
    """A lake value of Arrow type ``kind`` as PostgreSQL's text output writes it (what the
    log sends, and what the CSV reader parses back to the same value)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        unit = kind.unit if pa.types.is_timestamp(kind) else "us"
        return value.isoformat(sep=" ", timespec="milliseconds" if unit in ("s", "ms")
                               else "microseconds")
    if isinstance(value, (date, Decimal, int, float)):
        return str(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def _last_versions(lake: Lake, table: _Table, wanted: set) -> dict:
    """The values (as text) of the last version the lake holds of each key in ``wanted``
    (keys as the log writes them), reading the table's batches newest first and stopping
    once every key is found."""
    key_column = table.plan.primary_key
    remaining = {int(k) for k in wanted if k is not None}
    found: dict = {}
    for key in reversed(lake.keys_after(table.plan.table, None)):
        for file in batch_files(lake, key):
            ids = lake.read_table(file, columns=[key_column])[key_column]
            mask = pc.is_in(ids, value_set=pa.array(sorted(remaining), ids.type))
            if not pc.any(mask).as_py():
                continue
            rows = lake.read_table(file).filter(mask)
            order = [(key_column, "ascending")] + \
                ([(LSN, "ascending")] if LSN in rows.column_names else [])
            for row in rows.sort_by(order).to_pylist():  # the last of a key wins
                if row[key_column] in remaining:
                    found[str(row[key_column])] = tuple(
                        _as_text(row[f.name], f.type) for f in table.schema)
            remaining -= {int(k) for k in found}
        if not remaining:
            break
    return found


def init_source(plan: CapturePlan, source: SourceDatabase,
                apply: bool = True) -> list[str]:
    """The statements that create what change data capture of ``plan``'s tables lacks in
    ``source``: the publication (or the tables it does not hold yet) and the slot. With
    ``apply``, they are run; returns them either way (empty: nothing was missing). A MySQL
    source needs no publication or slot, but server settings and grants a role cannot give
    itself: their statements are returned for a DBA, never run
    (:func:`totes.utils.mysql_binlog.dba_statements`).

    Raises:
        PermissionDenied: the role may not run them (the message gives them, for a DBA).
        ConfigError: the source is not PostgreSQL.
    """
    names = [t.table for t in plan.tables]
    engine = getattr(source, "engine", "postgresql")
    if engine not in ("postgresql", "mysql"):
        raise ConfigError(f"the cdc tables ({', '.join(names)}) need a PostgreSQL or MySQL "
                          "source")
    doing = f"preparing change data capture in the {source.describe()}"
    if engine == "mysql":  # server settings and grants: a DBA's, never the role's
        with source.session("totes-cdc-init", doing) as session:
            return mysql_binlog.dba_statements(session.conn, names)
    with source.session("totes-cdc-init", doing) as session:
        statements = postgres_cdc.init_statements(session.conn, plan.slot, plan.publication,
                                                  names)
        if not apply:
            return statements
        for statement in statements:
            try:
                session.conn.run(statement)
            except Exception as exc:
                if sqlstate_of(exc).startswith("42"):  # insufficient privilege, ...
                    raise PermissionDenied(
                        f"the role may not prepare change data capture "
                        f"({sqlstate_and_message(exc)[1]}); ask a DBA to run: "
                        + "; ".join(statements)) from None
                raise
    return statements


def drop_source(plan: CapturePlan, source: SourceDatabase) -> list[str]:
    """Drop the slot and the publication of ``plan`` from ``source`` (those that exist);
    returns the statements run. The lake keeps every batch; a later read needs ``totes cdc
    init`` and takes new initial copies only of the tables whose batches are not cdc. A
    MySQL source has nothing to drop (its reader holds nothing on the server): returns no
    statement."""
    if getattr(source, "engine", "postgresql") == "mysql":
        return []
    doing = f"dropping the change data capture of the {source.describe()}"
    with source.session("totes-cdc-drop", doing) as session:
        statements = postgres_cdc.drop_statements(session.conn, plan.slot, plan.publication)
        for statement in statements:
            session.conn.run(statement)
    return statements


def _close(writer, doing: str) -> None:
    """Close a Parquet ``writer`` (again: a no-op); a disk that fails it raises
    StorageUnavailable (see :func:`~totes.utils.lake.storage_error`)."""
    with storage_call(doing):
        writer.close()
