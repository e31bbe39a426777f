"""How the command line shows stage results to a person: Rich tables on standard output,
progress and errors on standard error. ``--json`` output does not come through here."""
from __future__ import annotations

import logging
import re
import sys
from datetime import datetime, timezone

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from typing import Optional

from totes.contracts.source_schema import SchemaChange
from totes.contracts.stage_results import (IngestResult, LoadResult, RunResult,
                                           TransformResult, counted)
from totes.utils import settings

#: Width of tables when standard output is not a terminal (a pipe, a file, a CI log), so
#: that they do not wrap at Rich's default of 80 columns.
PIPED_WIDTH = 200
FACT_SOURCES = ("sales_order", "purchase_order", "payment")


#: Characters a terminal acts on instead of showing: C0 controls but newline and tab, DEL and
#: C1 controls (ESC starts the sequences that retitle, clear or rewrite a terminal; BEL rings
#: it; CR overwrites the line), and the Unicode bidirectional overrides and isolates, which
#: reorder what is shown ("Trojan Source", CVE-2021-42574).
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every character a terminal would act on (:data:`_INVISIBLE`) written
    as its Python escape: ``Evil\\x1b]0;PWNED\\x07``. Source values, keys and error
    messages reach a terminal only through this (:class:`VisibleConsole`,
    :class:`VisibleFormatter`)."""
    return _INVISIBLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class VisibleConsole(Console):
    """A Rich console that shows control characters instead of sending them: every string
    it renders (a message, a table cell, a title) passes through :func:`visible` before it
    is measured or parsed for markup. Rich's own styles are added after, untouched."""

    def render_str(self, text: str, **options) -> Text:
        return super().render_str(visible(text), **options)


class VisibleFormatter(logging.Formatter):
    """The log's formatter: a record's message and traceback through :func:`visible`."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


def _width(stream) -> Optional[int]:
    """None (the terminal's own width) on a terminal; else ``COLUMNS``, or
    :data:`PIPED_WIDTH`."""
    return None if stream.isatty() else settings.current().columns or PIPED_WIDTH


def stdout() -> Console:
    """A console on standard output; as wide as the terminal, or ``COLUMNS``, or
    :data:`PIPED_WIDTH`."""
    return VisibleConsole(width=_width(sys.stdout), highlight=False)


def stderr() -> Console:
    return VisibleConsole(stderr=True, width=_width(sys.stderr), highlight=False)


def value(text: object) -> str:
    """A source value (or any text from outside) as a table cell or inside a markup
    string: shown as it is, never read as Rich markup (``[/]`` in a design name is text)."""
    return escape(str(text))


def ingest_table(results: list[IngestResult]) -> Table:
    table = Table("table", "mode", "rows", "files", "seconds", "high watermark", "note",
                  title="ingest")
    for r in results:
        high = r.high_watermark
        note = f"skipped: {r.skipped}" if r.skipped else \
            f"stopped: {r.stopped}" if r.stopped else \
            f"range [{r.range['from']}, {r.range['to']})" if r.range else \
            f"{counted(r.vanished_rows, 'row')} gone from the source" if r.vanished_rows else \
            _changes(r) if r.changes is not None else \
            _deletes(r.delete_detection) if r.delete_detection is not None else \
            value(f"schema v{r.schema_version}: "
                  + "; ".join(describe_change(c) for c in r.schema_changes)) \
            if r.schema_changes else ""
        table.add_row(r.table, r.mode, f"{r.rows:,}", "1" if r.key else "0",
                      f"{r.seconds:.2f}", _mark(high.model_dump()) if high else "-", note)
    return table


def _deletes(found: dict) -> str:
    """``1 delete found (11,187 keys compared)`` of a table with ``delete_detection: keys``."""
    deleted = found["deleted"]
    return (f"{counted(deleted, 'delete') if deleted else 'no delete'} found "
            f"({found['source_keys']:,} keys compared)")


def _changes(result: IngestResult) -> str:
    """``3 updates, 1 delete through 0/16B0A40`` of a cdc table's ingest."""
    changes = result.changes or {}
    counted = [f"{n:,} {kind}{'s' if n != 1 else ''}" for kind, n in
               (("insert", changes.get("insert", 0)), ("update", changes.get("update", 0)),
                ("delete", changes.get("delete", 0))) if n]
    return f"{', '.join(counted) or 'no change'} through {result.through_lsn}"


def transform_table(result: TransformResult) -> Table:
    table = Table("warehouse table", "rows", "files", title=f"transform "
                  f"({counted(result.source_files, 'lake file')}, {result.seconds:.2f} s)")
    for r in result.tables:
        table.add_row(r.table, f"{r.rows:,}", "1")
    if not result.tables:
        table.add_row("(nothing new)", "0", "0")
    return table


def check_table(result) -> Table:
    """``totes check``: one row per part, ok or what to fix."""
    failed = sum(not c.ok for c in result.checks)
    verdict = "all ok" if not failed else counted(failed, "problem")
    table = Table("check", "", "detail", title=f"check ({verdict}, {result.seconds:.2f} s)",
                  show_lines=True)
    table.columns[2].overflow = "fold"  # a long path wraps, it is never cut short
    for c in result.checks:
        table.add_row(c.check, "[green]ok[/]" if c.ok else "[bold red]FAIL[/]",
                      value(c.detail if c.ok else f"{c.error}: {c.detail}"))
    return table


def rebuild_table(result) -> Table:
    """``totes transform --rebuild``: each file of the batch, its rebuilt file and rows."""
    table = Table("file", "rebuilt as", "rows", title=f"rebuild of {result.batch} "
                  f"({result.seconds:.2f} s)")
    rows_of = {new: n for name, n in result.rows.items() for new in result.replaced.values()
               if new.startswith(f"{name}/")}
    for old, new in result.replaced.items():
        table.add_row(value(old), value(new), f"{rows_of.get(new, 0):,}")
    return table


def load_table(result: LoadResult) -> Table:
    table = Table("warehouse table", "rows", "inserted", "updated",
                  title=f"load ({counted(len(result.batches), 'batch', 'batches')}, "
                        f"{result.seconds:.2f} s)")
    for r in result.tables:
        table.add_row(r.table, f"{r.rows:,}", f"{r.inserted:,}", f"{r.updated:,}")
    for raw in result.raw:  # the raw layer: row versions from the lake, never updated
        table.add_row(raw.relation or raw.table, f"{raw.rows:,}", f"{raw.inserted:,}", "0")
    if not result.tables and not result.raw:
        table.add_row("(nothing new)", "0", "0", "0")
    return table


def run_summary(result: RunResult) -> str:
    """``Run finished in 2.1 s: 12 new row versions from the source; 1 batch loaded (14 rows
    inserted, 2 updated).`` Each figure says what moved: a run that found nothing new in the
    source but loaded pending batches (a fresh warehouse) says so."""
    moved = sum(r.rows for r in result.ingest)
    source = f"{counted(moved, 'new row version')} from the source" if moved else \
        "nothing new in the source"
    load = result.load
    inserted = sum(t.inserted for t in load.tables)
    updated = sum(t.updated for t in load.tables)
    if load.batches:
        warehouse = (f"{counted(len(load.batches), 'batch', 'batches')} loaded "
                     f"({counted(inserted, 'row')} inserted, {updated:,} updated)")
    elif inserted:  # released held rows only
        warehouse = f"{counted(inserted, 'held row')} released into the warehouse"
    elif load.raw:
        warehouse = "no batch of the star schema loaded"
    else:
        warehouse = "the warehouse was up to date" if not moved else "nothing loaded"
    if load.raw:
        versions = sum(t.inserted for t in load.raw)
        warehouse += (f"; raw layer: {counted(versions, 'row version')} inserted into "
                      f"{', '.join(t.relation or t.table for t in load.raw)}")
    return f"Run finished in {result.seconds:.1f} s: {source}; {warehouse}."


def replay_table(title: str) -> Table:
    """The table ``totes replay`` fills, one row per run (see :func:`replay_row`)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="rows moved: row versions ingested, all tables; sales_order, "
                          "purchase_order, payment: of those, per fact source; other "
                          "tables: the dimensions' sources; fact rows added: rows inserted "
                          "into the three fact tables; seconds: the run's duration",
                  caption_justify="left")
    table.add_column("run as of", no_wrap=True)
    for header in ("rows moved", *FACT_SOURCES, "other tables", "fact rows added", "seconds"):
        table.add_column(header, justify="right")
    return table


def replay_row(table: Table, moment: datetime, result: RunResult) -> str:
    """Add one run to ``table``; returns the progress line naming what it moved."""
    moved = {r.table: r.rows for r in result.ingest if r.rows}
    facts = sum(t.inserted for t in result.load.tables if t.table.startswith("fact_"))
    main = [moved.get(name, 0) for name in FACT_SOURCES]
    other = sum(moved.values()) - sum(main)
    table.add_row(f"{moment:%Y-%m-%d %H:%M}", f"{sum(moved.values()):,}",
                  *[f"{n:,}" for n in main], f"{other:,}", f"{facts:,}",
                  f"{result.seconds:.1f}")
    detail = ", ".join(f"{name} {rows:,}" for name, rows in moved.items())
    return f"  {moment:%Y-%m-%d %H:%M}: {detail or 'nothing new'}"


def source_warnings(results: list[IngestResult], advice: tuple = ()) -> list[str]:
    """Lines naming old open source transactions that held an extract back (and plan's
    ``advice``)."""
    lines = list(advice)
    for r in results:
        if r.held_back_by is not None:
            b = r.held_back_by
            lines.append(f"{r.table}: rows changed after {r.cutoff} wait for a transaction "
                         f"open for {b.transaction_age_seconds:,.0f} s (pid {b.pid}, role "
                         f"{b.role}, {b.state or 'state unknown'}"
                         f"{', ' + b.application_name if b.application_name else ''}).")
    return lines


def held_back(transform: Optional[TransformResult], load: Optional[LoadResult]) -> list[str]:
    """Lines saying what a run set aside, for standard error (empty when nothing was)."""
    lines = []
    if transform is not None and transform.quarantined_rows:
        detail = ", ".join(f"{t} {n:,}" for t, n in transform.quarantined.items())
        verb = "breaks" if transform.quarantined_rows == 1 else "break"
        lines.append(f"Quarantined {counted(transform.quarantined_rows, 'row version')} that "
                     f"{verb} a rule ({detail}); the rest of the batch landed. See: totes "
                     "quarantine")
    if load is not None and load.held_rows:
        detail = ", ".join(f"{t} {n:,}" for t, n in load.held.items())
        lines.append(f"Held {counted(load.held_rows, 'fact row')} whose dimension row is "
                     f"missing ({detail}); the next load inserts them once it arrives.")
    if transform is not None and transform.skipped:
        lines.append(f"Transform skipped: {transform.skipped}; the next run takes its work.")
    if load is not None and load.skipped:
        lines.append(f"Load skipped: {load.skipped}; the next run takes its work.")
    if load is not None and load.released:
        detail = ", ".join(f"{t} {n:,}" for t, n in load.released.items())
        lines.append(f"Released held fact rows whose dimension rows arrived: {detail}.")
    return lines


def retried(transform: TransformResult, load: LoadResult) -> list[str]:
    """What ``totes quarantine --retry`` did."""
    if transform.manifest is None:
        return ["Nothing was held in quarantine to retry."] + held_back(None, load)
    passed = sum(t.rows for t in transform.tables)
    still = counted(transform.quarantined_rows, "row version")
    return [f"Retried the quarantine in batch {transform.manifest}: "
            f"{counted(passed, 'row')} written, {still} still "
            f"{'breaks' if transform.quarantined_rows == 1 else 'break'} a rule."] \
        + held_back(None, load)


#: Below this many columns, the wide tables (status, history, quarantine) take a compact
#: layout: fewer columns, and what remains wraps rather than being cut.
COMPACT_BELOW = 130


def _compact(width: Optional[int]) -> bool:
    return width is not None and width < COMPACT_BELOW


def quarantine_table(report, width: Optional[int] = None) -> Table:
    """The rows ``totes quarantine`` lists, one per held row version; on a console narrower
    than :data:`COMPACT_BELOW`, two lines per version (what and where, then the message)."""
    if _compact(width):
        counts = ", ".join(f"{status} {n:,}" for status, n in sorted(report.counts.items()))
        grid = Table.grid(padding=(0, 1))
        grid.title = f"quarantine ({counts or 'empty'})"
        grid.add_column()
        for e in report.entries:
            grid.add_row(f"[bold]{value(e.table)} {value(e.key_column)}={value(e.row_id)}[/] "
                         f"{value(e.version[:23])} {e.rule} [italic]{e.status}[/] ({e.stage})")
            grid.add_row(f"  {value(e.message.split(': ', 1)[-1])}")
        if not report.entries:
            grid.add_row("(nothing held)")
        return grid
    counts = ", ".join(f"{status} {n:,}" for status, n in sorted(report.counts.items()))
    table = Table("stage", "table", "row", "version", "rule", "status", "message",
                  title=f"quarantine ({counts or 'empty'})", caption="held: broke a rule, "
                  "waits for a fix in the source or a retry; waiting: a fact row whose "
                  "dimension row has not arrived; superseded/released: resolved (--all)",
                  caption_justify="left")
    for e in report.entries:
        table.add_row(e.stage, e.table, value(f"{e.key_column}={e.row_id}"),
                      value(e.version[:26]), e.rule, e.status,
                      value(e.message.split(": ", 1)[-1]))
    if not report.entries:
        table.add_row("-", "(nothing held)", "", "", "", "", "")
    return table


def _when(iso: Optional[str]) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _short_when(iso: Optional[str]) -> str:
    """``14:02:11`` today (UTC), else ``2026-11-30 14:02``."""
    if not iso:
        return "-"
    today = datetime.now(timezone.utc).date().isoformat()
    return iso[11:19] if iso.startswith(today) else iso[:16].replace("T", " ")


def _mark(mark: Optional[dict]) -> str:
    if not mark:
        return "-"
    value = mark.get("timestamp", mark.get("integer"))
    return f"{str(value)[:23]} #{mark.get('primary_key')}"


def _lag(status) -> str:
    if status.lag_unit == "everything":
        return "all (nothing extracted)"
    if status.lag is None:
        return "-"
    if status.lag_unit == "rows":
        return f"{status.lag:,.0f} ids"
    seconds = status.lag
    return f"{seconds:,.0f} s" if seconds < 3600 else f"{seconds / 3600:,.1f} h"


def status_table(result, width: Optional[int] = None) -> Table:
    """``totes status``: one row per table, the pipeline's pending batches in the title; on a
    console narrower than :data:`COMPACT_BELOW`, without the watermark and the batch's time."""
    pending = "?" if result.pending_batches is None else f"{result.pending_batches:,}"
    loaded = result.last_load
    if _compact(width):
        table = Table("table", "mode", "last ok", "last batch", "lag", "waiting", "problem",
                      box=box.SIMPLE_HEAD, pad_edge=False,
                      title=f"status (batches not loaded: {pending}; last load: "
                            f"{_short_when(loaded.ended_at) if loaded else '-'}"
                            f"{' ' + loaded.status if loaded else ''})")
        table.columns[0].no_wrap = True
        for s in result.tables:
            ok, bad, batch = s.last_success, s.last_failure, s.last_batch
            table.add_row(s.table, s.mode, _short_when(ok.ended_at) if ok else "-",
                          counted(batch.rows, "row") if batch else "-", _lag(s),
                          f"{s.pending_lake_files:,}",
                          f"running: {s.running}" if s.running else
                          f"{_short_when(bad.ended_at)} {bad.error_type}" if bad else "")
        if result.slot is not None:
            table.caption = slot_line(result.slot)
            table.caption_justify = "left"
        return table
    table = Table("table", "mode", "last success", "last batch", "high watermark", "lag",
                  "untransformed", "running", "last failure",
                  title=f"status (batches not loaded: {pending}; last load: "
                        f"{_when(loaded.ended_at) if loaded else '-'}"
                        f"{' ' + loaded.status if loaded else ''})")
    for s in result.tables:
        ok, bad, batch = s.last_success, s.last_failure, s.last_batch
        table.add_row(s.table, s.mode, _short_when(ok.ended_at) if ok else "-",
                      f"{batch.rows:,} rows at {_short_when(batch.ended_at)}"
                      + (f" ({batch.mode})" if batch.mode != "incremental" else "")
                      if batch else "-", _mark(s.high_watermark), _lag(s),
                      f"{s.pending_lake_files:,} files", s.running or "",
                      f"{_short_when(bad.ended_at)} {bad.error_type}" if bad else "")
    if result.slot is not None:
        table.caption = slot_line(result.slot)
        table.caption_justify = "left"
    return table


def describe_change(change: dict) -> str:
    """``units_sold integer → bigint (widened)`` of one schema change record."""
    return SchemaChange.model_validate(change).describe()


def schema_table(result) -> Optional[Table]:
    """``totes status``' schema versions: one row per table whose source schema changed
    (version, when, what); None when none did."""
    changed = [s for s in result.tables if s.schema_change is not None]
    if not changed:
        return None
    table = Table("table", "schema version", "changed", "last change", title="source schemas")
    for s in changed:
        change = s.schema_change
        table.add_row(s.table, str(s.schema_version or "-"), _short_when(change["at"]),
                      value("; ".join(describe_change(c) for c in change["changes"])))
    return table


def _schema_note(record) -> str:
    """``schema v2: units_sold integer → bigint (widened)`` of an ingest record that brought
    a schema change; empty otherwise."""
    changes = record.details.get("schema_changes") if record.details else None
    if not changes:
        return ""
    return value(f"schema v{record.details.get('schema_version')}: "
                 + "; ".join(describe_change(c) for c in changes))


def slot_line(slot) -> str:
    """``slot totes: retains 12.3 MB of WAL (alert above 1.0 GB); oldest unread change
    3.2 min old; the lake holds every change through 0/16B0A40``."""
    if not slot.exists:
        return f"slot {slot.slot}: does not exist (totes cdc init creates it)"
    if slot.binlog_behind_bytes is not None:  # a MySQL source: the binlog's reader
        return (f"binlog reader {slot.slot}: the lake holds every change through "
                f"{slot.lake_through or 'nothing yet'}; the binlog ends at "
                f"{slot.confirmed_through}, {_bytes(slot.binlog_behind_bytes)} ahead")
    age = slot.oldest_change_age_seconds
    waiting = "no unread change" if age is None else \
        f"oldest unread change {_duration(age)} old"
    warning = " — OVER THE LIMIT: resume the runs, or totes cdc drop" if slot.over_limit \
        else ""
    return (f"slot {slot.slot}: retains {_bytes(slot.retained_wal_bytes or 0)} of WAL (alert "
            f"above {_bytes(slot.limit_bytes)}){warning}; {waiting}; the lake holds every "
            f"change through {slot.lake_through}")


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def history_table(records, width: Optional[int] = None) -> Table:
    """``totes history``: one row per stage run, newest first; on a console narrower than
    :data:`COMPACT_BELOW`, without mode, seconds, key and run."""
    if _compact(width):
        table = Table("started", "stage", "table", "status", "rows", "error",
                      box=box.SIMPLE_HEAD, pad_edge=False, title="history")
        for r in records:
            table.add_row(_short_when(r.started_at), r.stage, r.table, r.status,
                          f"{r.rows:,}" if r.rows >= 0 else "-",
                          value(f"{r.error_type}: {r.error_message}"[:120]) if r.error_type
                          else (r.details.get("lease_holder", "") and
                                f"lease held by {r.details['lease_holder']}")
                          or _schema_note(r))
        if not records:
            table.add_row("-", "(no runs recorded)", "", "", "", "")
        return table
    table = Table("started", "stage", "table", "mode", "status", "rows", "seconds", "key",
                  "run", "error", title="history")
    for r in records:
        table.add_row(_when(r.started_at), r.stage, r.table, r.mode or "", r.status,
                      f"{r.rows:,}" if r.rows >= 0 else "-",
                      f"{r.seconds:.2f}" if r.seconds is not None else "-",
                      r.key or "", r.run_id,
                      value(f"{r.error_type}: {r.error_message}"[:80]) if r.error_type else
                      (r.details.get("lease_holder", "") and
                       f"lease held by {r.details['lease_holder']}") or _schema_note(r))
    if not records:
        table.add_row("-", "(no runs recorded)", "", "", "", "", "", "", "", "")
    return table


def reconcile_table(result, width: Optional[int] = None) -> Table:
    """One row per warehouse table that ``totes reconcile`` compared; on a console narrower
    than :data:`COMPACT_BELOW`, without the source table's name and borders."""
    caption = ("pending: changed in the source after the last load; held: a fact row waiting "
               "for its dimension row; quarantined: breaks a rule")
    title = f"reconcile ({result.seconds:.2f} s)"
    if _compact(width):
        table = Table("table", "source", "warehouse", "pending", "held", "quarantined",
                      "diffs", box=box.SIMPLE_HEAD, pad_edge=False, title=title,
                      caption=caption, caption_justify="left")
        table.columns[0].no_wrap = True
    else:
        table = Table("warehouse table", "source table", "source rows", "warehouse rows",
                      "pending", "held", "quarantined", "differences", title=title,
                      caption=caption, caption_justify="left")
    for t in result.tables:
        scope = "" if t.scoped_keys is None else f" ({t.scoped_keys:,} ids loaded)"
        names = [t.table + scope] if _compact(width) else [t.table + scope, t.source_table]
        table.add_row(*names, f"{t.source_rows:,}", f"{t.warehouse_rows:,}",
                      f"{t.pending:,}", f"{t.held:,}", f"{t.quarantined:,}",
                      f"[red]{t.differences:,}[/]" if t.differences else "0")
    return table


def differences_table(result) -> Table:
    """The differences ``totes reconcile`` listed, and the sums that differ."""
    table = Table("table", "key", "column", "source", "warehouse", "problem",
                  title="differences")
    for t in result.tables:
        for d in t.listed:
            key = ", ".join(f"{k}={v}" for k, v in d.key.items())
            table.add_row(d.table, value(key), d.column or "-", value(d.source or "-"),
                          value(d.warehouse or "-"), value(d.problem))
        if t.differences > len(t.listed):
            table.add_row(t.table, f"… {t.differences - len(t.listed):,} more", "", "", "", "")
    for s in result.sums:
        if not s.equal:
            table.add_row(s.table, value(f"currency {s.currency}"), f"sum({s.column})",
                          value(s.source), value(s.warehouse), "sum differs")
    return table
