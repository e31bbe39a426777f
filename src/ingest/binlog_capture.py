"""Change data capture from a MySQL or MariaDB source's binlog: the same contract as the
PostgreSQL reader (:mod:`totes.ingest.capture`, whose versions, batches, position records
and stops this reader shares), the log read through :mod:`totes.utils.mysql_binlog`.

A read, under the same lease (``capture:<cdc.slot>``):

1. checks the source is ready (the binlog settings, the role's replication privileges, each
   table's primary key): a message naming what is missing, before anything is written;
2. takes the initial copy of each table that has none (or is reingested): the table in one
   ``START TRANSACTION WITH CONSISTENT SNAPSHOT``, with the binlog position that snapshot is
   consistent with in its footer (MariaDB's ``binlog_snapshot_position``);
3. reads the binlog from the oldest position a table holds every change up to (the lake,
   not the server, says where: a MySQL server keeps no position for a reader), to its
   current end, at most ``max_changes_per_run`` row changes, never splitting a transaction
   (an XID event ends one); a transaction's changes of a table become versions unless its
   commit is at or before the table's ``through_lsn``;
4. publishes each table's batch, then the position record, last.

An ``ALTER TABLE`` of a ``cdc`` table, or a table map whose columns are not the lake's,
follows the table's ``schema_contract`` (:meth:`BinlogCapture._catalog_change`, decided as
the PostgreSQL reader decides a ``Relation`` message). A ``TRUNCATE``, ``DROP TABLE`` or
``RENAME TABLE`` stops the table as a TRUNCATE stops it in PostgreSQL
(:class:`~totes.contracts.errors.CaptureStopped` after the other tables landed). The binlog
keeps no row for the reader: a server that purged the file the lake's position is in has
lost changes, and the read says which tables to reingest.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa

from totes.contracts.cdc import CDC_FIELDS, CdcFooter
from totes.contracts.config import TablePlan
from totes.contracts.errors import CdcNotReady, SourceSchemaError
from totes.contracts.quarantine import UNREADABLE, with_unreadable
from totes.contracts.source_schema import SourceColumn
from totes.contracts.stage_results import CaptureResult
from totes.ingest.capture import _Capture, _Table, _Transaction
from totes.utils import mysql_binlog
from totes.utils.ledger import Ledger
from totes.utils.mysql_catalog import arrow_type as catalog_arrow_type
from totes.utils.mysql_catalog import table_columns
from totes.utils.mysql_reader import MySQLReader, rows_batch
from totes.utils.pgoutput import Commit as LogCommit

log = logging.getLogger(__name__)


class BinlogCapture(_Capture):
    """One read of a MySQL source's binlog for every table of the plan (see the module
    docstring)."""

    base: Optional[str] = None  # the binlog files' base name, for messages
    conn = None  # the read's session on the source (its catalog, for schema changes)

    def run(self, ledger: Optional[Ledger]) -> CaptureResult:
        started = time.monotonic()
        name = self.plan.slot
        names = {t.table: t.primary_key for t in self.plan.tables}
        doing = f"reading the binlog of the {self.source.describe()}"
        with self.source.session(f"totes-capture-{name}", doing) as session, \
                contextlib.ExitStack() as stack:
            conn = self.conn = session.conn
            problems = mysql_binlog.readiness(conn, names)
            if problems:
                raise CdcNotReady(f"change data capture of {', '.join(names)} is not ready in "
                                  f"the {self.source.describe()}: " + "; ".join(problems))
            upto, self.base = mysql_binlog.head(conn)
            logs = mysql_binlog.binary_logs(conn)
            position_key, position = self._position()
            for table_plan in self.plan.tables:
                session.doing = f"preparing table {table_plan.table} for change data capture"
                self.tables[table_plan.table] = self._prepare(conn, table_plan, position)
            session.doing = doing
            logs = mysql_binlog.binary_logs(conn)  # a copy may have taken long: again
            start = min(t.through for t in self.tables.values())
            index, _ = mysql_binlog.decode(start)
            if index not in logs:
                raise CdcNotReady(
                    f"the binlog file the lake's position is in ({self._text(start)}) is no "
                    f"longer on the {self.source.describe()} (purged by expire_logs_days or "
                    "binlog_expire_logs_seconds, or by PURGE BINARY LOGS): changes after it "
                    "are lost. Take new initial copies with `totes ingest --table "
                    f"{' --table '.join(names)} --reingest`, and keep binlogs longer than "
                    "the time between runs")
            (database,), = conn.run("SELECT DATABASE()")
            read_end = self._read_binlog(stack, logs[index][0], start, upto, str(database))
            through = min([read_end] + [t.limit for t in self.tables.values()
                                        if t.limit is not None])
            keys = self._publish(stack, through, read_end)
            behind = mysql_binlog.behind_bytes(mysql_binlog.binary_logs(conn), through)
        record = self._commit_position(position, through, read_end, keys)
        seconds = round(time.monotonic() - started, 3)
        results = [self._result(t, read_end).model_copy(update={"seconds": seconds})
                   for t in self.tables.values()]
        if ledger is not None:
            for result in results:
                self._record(ledger, result)
        log.info("read the binlog of %s through %s: %d transactions, %d changes; %d bytes "
                 "behind its end", name, self._text(through), self.transactions,
                 self.changes, behind)
        return CaptureResult(
            slot=name, tables=results, position=record or position_key,
            through_lsn=self._text(through), transactions=self.transactions,
            changes=self.changes,
            stopped={n: t.stopped for n, t in self.tables.items() if t.stopped},
            retained_wal_bytes=None, warning=None, seconds=seconds)

    # ---- hooks of the shared reader -----------------------------------------------------
    def _begin_copy(self, conn, copy: TablePlan):
        reader = MySQLReader()
        inspected = reader.inspect(conn, copy)
        reader.begin(conn)
        return reader, inspected, CdcFooter(through_lsn=mysql_binlog.snapshot_position(conn))

    def _text(self, position: int) -> str:
        return mysql_binlog.position_text(position, self.base)

    def _position_fields(self, through: int) -> dict:
        return {"binlog": self._text(through)}

    def _versions_batch(self, table: _Table) -> pa.RecordBatch:
        values = [row[0] for row in table.rows]
        if table.casting is None:
            batch = rows_batch(values, with_unreadable(table.schema), self.pool)
        else:  # read in the source's types, then cast to the lake's (data_type: discard_value)
            decision, read_as = table.casting
            batch = decision.apply(rows_batch(values, with_unreadable(read_as), self.pool))
        extra = [pa.array([r[1] for r in table.rows], pa.string()),
                 pa.array([r[2] for r in table.rows], pa.int64()),
                 pa.array([r[3] for r in table.rows], pa.timestamp("us", "UTC"))]
        return pa.RecordBatch.from_arrays([*batch.columns, *extra],
                                          schema=pa.schema([*batch.schema, *CDC_FIELDS]))

    # ---- the log ------------------------------------------------------------------------
    def _read_binlog(self, stack, file_name: str, start: int, upto: int,
                     database: str) -> int:
        """Read the binlog from ``start`` (in ``file_name``); returns how far it is read
        (every change up to it is decided)."""
        names = [t for t, table in self.tables.items() if not table.stopped]
        last_end, previous_end = None, start
        transaction: Optional[_Transaction] = None
        bounded = False
        reading = mysql_binlog.events(
            self.source.params, start, file_name, database, list(self.tables),
            mysql_binlog.reader_server_id(self.plan.slot))
        with contextlib.closing(reading):  # type: ignore[type-var]
            for event in reading:
                if isinstance(event, mysql_binlog.RowChange):
                    if transaction is None:
                        transaction = _Transaction(0, _NO_TIME)  # its time: the commit's
                    self._row(event, transaction)
                elif isinstance(event, mysql_binlog.TableColumns):
                    self._table_map(event, previous_end, transaction, stack)
                elif isinstance(event, mysql_binlog.Commit):
                    if transaction is not None:
                        self._commit(transaction, LogCommit(event.position, event.position,
                                                            event.commit_time), stack)
                    last_end = previous_end = event.position
                    transaction = None
                    if self.changes >= self.plan.max_changes_per_run:
                        bounded = True
                        break
                elif isinstance(event, mysql_binlog.Statement):
                    self._statement(event, database, names, previous_end)
                    last_end = previous_end = event.position
        read_end = max(last_end or start, start) if bounded else max(upto, last_end or 0, start)
        for table in self.tables.values():  # altered, and no change of its rows since
            if table.altered is None or table.stopped:
                continue
            if bounded:  # the catalog may be past what was read: the next read decides it
                table.limit, table.altered = max(table.through, table.altered[1]), None
            else:
                self._catalog_change(table, None, read_end, None, stack)
        return read_end

    def _statement(self, statement: mysql_binlog.Statement, database: str, names: list[str],
                   previous_end: int) -> None:
        kind, tables = mysql_binlog.statement_tables(statement, database, names)
        for name in tables:
            table = self.tables[name]
            if table.stopped or statement.position <= table.through:
                continue
            if kind == "ALTER TABLE" and not _ROWS_OR_NAME.search(statement.sql):
                # decided at the table's next table map (or at the read's end)
                table.altered = table.altered or (statement.time or _NO_TIME, previous_end)
                continue
            if kind == "TRUNCATE":
                why = ("the source table was truncated (TRUNCATE): its rows are gone without "
                       "a delete each. Take a new initial copy with `totes ingest --table "
                       f"{name} --reingest` (the warehouse keeps the versions it has; rows "
                       "gone from the source can then be found by totes reconcile)")
            else:  # DROP, RENAME, CREATE OR REPLACE, an ALTER of its rows or name
                why = (f"its shape changed in the source ({kind}: "
                       f"{' '.join(statement.sql.split())[:200]}); the lake keeps the shape "
                       f"it had. Run `totes ingest --table {name} --reingest` to take a new "
                       "initial copy in the new shape (the versions before it stay in the "
                       "lake)")
            self._stop(table, previous_end, None, why)

    def _table_map(self, event: mysql_binlog.TableColumns, previous_end: int,
                   transaction: Optional[_Transaction], stack) -> None:
        """A table map: after an ``ALTER TABLE`` of the table, or when its columns are not
        those the lake holds or the contract left out, the schema change is decided
        (:meth:`_catalog_change`) before the rows it maps."""
        table = self.tables[event.table]
        if table.stopped or previous_end < table.through:
            return  # (the transaction it opens ends at or before what the table holds)
        known = {f.name for f in table.schema if f.name != UNREADABLE} | \
            set(table.record.discarded if table.record is not None else ())
        first, table.mapped = not table.mapped, True
        if table.altered is None and set(event.columns) == known:
            if first:  # a cast the contract made in an earlier read applies to this one's
                self._catalog_change(table, list(event.columns), previous_end, transaction,
                                     stack, probe=True)
            return
        self._catalog_change(table, list(event.columns), previous_end, transaction, stack)

    def _catalog_change(self, table: _Table, names: Optional[list], previous_end: int,
                        transaction: Optional[_Transaction], stack, probe: bool = False) -> None:
        """Decide a schema change of ``table`` by its contract (the shared
        :meth:`~totes.ingest.capture._Capture._schema_change`): its columns are ``names``
        (a table map's; None: the source's, at the end of a read that saw an ``ALTER TABLE``
        and no row of the table after it), their types the source catalog's now (a binlog
        table map carries no type a lake type can be read from), so two type changes of one
        column between reads are recorded as one. ``probe``: only take up the casts of the
        schema the lake holds, changing and stopping nothing (the catalog may already show an
        ALTER TABLE further on in the binlog)."""
        # The batch before the change ends before the first ALTER TABLE read (no change of
        # the table's rows lies between it and this table map), so that a read killed
        # after publishing that batch reads the ALTER TABLE again.
        moment, previous_end = table.altered or (None, previous_end)
        table.altered = None
        name = table.plan.table
        reingest = (f"Run `totes ingest --table {name} --reingest` to take a new initial copy "
                    "in the new shape (the versions before it stay in the lake)")
        source, unholdable = [], {}
        for column, data_type, column_type, precision, nullable in \
                table_columns(self.conn, name):
            try:
                kind = catalog_arrow_type(data_type, column_type, precision, name, column)
            except SourceSchemaError as exc:
                kind, unholdable[column] = pa.null(), str(exc)
            source.append(SourceColumn(column, kind, column_type, nullable))
        if probe and (not source or unholdable):
            return
        if not source:
            return self._stop(table, previous_end, transaction,
                              "it is no longer in the source's catalog (renamed or dropped). "
                              + reingest)
        if names is not None:
            # A column of the binlog's table map that the catalog no longer has was dropped
            # by a later ALTER TABLE (the catalog is the source's now): the lake's type.
            by_name = {c.name: c for c in source}
            record = table.record
            for n in names:
                if n not in by_name and n in table.schema.names:
                    known = record.column(n) if record is not None else None
                    by_name[n] = SourceColumn(n, table.schema.field(n).type,
                                              known.source_type if known else None,
                                              known.nullable if known else None)
            gone = [n for n in names if n not in by_name]
            if gone and probe:
                return
            if gone:
                return self._stop(
                    table, previous_end, transaction,
                    f"its columns changed in the source ({', '.join(gone)} in the binlog, "
                    "neither in the source's catalog nor in the lake): several changes "
                    f"between two reads. {reingest}")
            source = [by_name[n] for n in names]
        cannot = [unholdable[c.name] for c in source if c.name in unholdable]
        if cannot:
            return self._stop(table, previous_end, transaction, f"{cannot[0]}. {reingest}")
        self._schema_change(table, source, previous_end, transaction, stack,
                            moment if moment not in (None, _NO_TIME) else None, probe=probe)

    def _row(self, change: mysql_binlog.RowChange, transaction: _Transaction) -> None:
        table = self.tables[change.table]
        if table.stopped:
            return
        self.changes += 1
        rows = transaction.changes.setdefault(change.table, {})
        names = [f.name for f in table.schema if f.name != UNREADABLE]
        key = table.plan.primary_key
        before = tuple(change.before.get(n) for n in names) if change.before else None
        after = tuple(change.after.get(n) for n in names) if change.after else None
        if change.before is not None and (change.after is None or
                                          change.before[key] != change.after[key]):
            # a delete, or an update that moved the row to another key
            self._note(rows, change.before[key], "delete", before, False)
        if change.after is not None:
            self._note(rows, change.after[key], change.operation, after, False)


_NO_TIME = datetime.fromtimestamp(0, timezone.utc)
#: An ``ALTER TABLE`` that changes rows without a row event (a partition dropped, truncated
#: or exchanged, a tablespace imported or discarded) or the table's name: it stops the table
#: as a ``TRUNCATE`` or a ``RENAME TABLE`` does, whatever the contract.
_ROWS_OR_NAME = re.compile(
    r"\b(?:DROP|TRUNCATE|EXCHANGE)\s+PARTITION\b|\b(?:IMPORT|DISCARD)\s+(?:PARTITION\s+.*?)?"
    r"TABLESPACE\b|\bRENAME\s+(?!(?:COLUMN|INDEX|KEY|CONSTRAINT)\b)", re.IGNORECASE | re.DOTALL)
