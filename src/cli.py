"""The ``totes`` command: everything a person runs locally. It parses flags, calls the stages
and renders their results; where things are is resolved by :mod:`totes.local.workspace`, how
results look by :mod:`totes.local.render`.

Exit codes: 0 success, 1 an error a retry cannot fix, 75 a transient error (retry later),
2 a usage error, 65 the run landed but set row versions aside (quarantined, or fact rows
held for a missing dimension row: ``totes quarantine`` lists them). With ``--json``, an
error is also printed on standard output as
``{"error": {"type": ..., "message": ..., "retryable": ..., "exit_code": ...}}``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import List, Optional, overload

import typer
from rich.markup import escape
from typer.core import TyperGroup

from totes.contracts.config import Mode
from totes.contracts.errors import ConfigError, TotesError, unknown_names
from totes.contracts.stage_results import counted
from totes.utils.ledger import ALL_TABLES, STAGES
from totes.local import render
from totes.local.embedded import EmbeddedPostgres
from totes.local.workspace import Workspace, home_dir


EXIT_TERMINAL, EXIT_TRANSIENT = 1, 75
#: sysexits.h EX_DATAERR: the input data was incorrect. The run landed; some rows are held.
EXIT_ROWS_HELD = 65
_state = {"verbose": False, "json": False}


def _honest_metavars(params: list) -> list:
    """``params`` with no value type shown for a flag, ``NAME...`` for a repeatable option."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif getattr(param, "multiple", False) and param.metavar is None:
            param.metavar = f"{(param.name or 'value').upper()}..."
    return params


class _Commands(TyperGroup):
    """The dispatcher of every command: a pipeline error raised by any of them is handled
    here, once (as dlt's CLI does at its dispatcher): one red line on standard error (with
    ``--json`` also a JSON document on standard output) and the exit code its type gives."""

    def get_command(self, ctx, cmd_name):
        """The command, its help made honest: a flag shows no value type (Typer prints
        ``--json <bool>``, though ``--json true`` is an error), a repeatable option shows
        ``TABLE...`` rather than ``<list[str]>``."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _honest_metavars(command.get_params(ctx))
        return command

    def get_params(self, ctx):
        return _honest_metavars(super().get_params(ctx))

    def invoke(self, ctx):  # typer's own (vendored) click.Context
        try:
            return super().invoke(ctx)
        except TotesError as exc:
            code = EXIT_TRANSIENT if exc.retryable else EXIT_TERMINAL
            render.stderr().print(f"[bold red]error:[/] {type(exc).__name__}: "
                                  f"{escape(str(exc))}", soft_wrap=True)  # one line to grep
            if _state["json"]:
                print(json.dumps({"error": {**exc.to_dict(), "exit_code": code}}, default=str))
            raise typer.Exit(code) from None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  rich_markup_mode="markdown",
                  pretty_exceptions_enable=False,
                  help="Incremental ETL of the ToteSys database into a star-schema warehouse.")
embedded_app = typer.Typer(cls=_Commands, no_args_is_help=True, rich_markup_mode="markdown",
                           help="The embedded PostgreSQL server.")
app.add_typer(embedded_app, name="embedded")
cdc_app = typer.Typer(cls=_Commands, no_args_is_help=True, rich_markup_mode="markdown",
                      help="Change data capture (tables whose extract_type is cdc): the "
                      "source's publication and slot.")
app.add_typer(cdc_app, name="cdc")


def _set_verbose(value: bool) -> bool:
    if value and not _state["verbose"]:
        _state["verbose"] = True
        logging.getLogger().setLevel(logging.INFO)
    return value


def _set_json(value: bool) -> bool:
    _state["json"] = bool(value)
    return value


def _show_version(value: bool) -> None:
    if value:
        print(f"totes {metadata.version('totes')}")
        raise typer.Exit()


# Each flag falls back to its variable (read through totes.utils.settings, in the workspace).
SourceUrl = typer.Option(None, "--source-url", show_default=False,
                         help="Source database URL [default: $TOTES_SOURCE_URL, else "
                              "$TOTES_SOURCE_SECRET, else embedded]")
WarehouseUrl = typer.Option(None, "--warehouse-url", show_default=False,
                            help="Warehouse database URL [default: $TOTES_WAREHOUSE_URL, else "
                                 "$TOTES_WAREHOUSE_SECRET, else embedded]")
LakeUri = typer.Option(None, "--lake", show_default=False,
                       help="Ingest lake: directory or s3://bucket/prefix "
                            "[default: $TOTES_LAKE, else $TOTES_HOME/lake]")
ProcessedUri = typer.Option(None, "--processed", show_default=False,
                            help="Processed area: directory or s3://bucket/prefix "
                                 "[default: $TOTES_PROCESSED, else $TOTES_HOME/processed]")
ConfigFile = typer.Option(None, "--config", show_default=False,
                          help="Pipeline configuration (YAML) [default: $TOTES_CONFIG, else "
                               "config/pipeline.yaml of the project directory]")
JsonOutput = typer.Option(False, "--json", callback=_set_json,
                          help="Print the result (or the error) as JSON")
Verbose = typer.Option(False, "--verbose", "-v", callback=_set_verbose,
                       help="Log each step (also accepted before the command)")


class _Progress:
    """Progress lines on standard error; in verbose mode the log says the same, so the
    lines are left to it."""

    def __init__(self):
        self.console = render.stderr()

    def line(self, text: str) -> None:
        if not _state["verbose"]:
            self.console.print(text)

    def status(self, text: str):
        return self.console.status(text)


def _print_json(document) -> None:
    print(json.dumps(document, default=str, indent=2))


@overload
def _parse_time(value: str, flag: str) -> datetime: ...


@overload
def _parse_time(value: Optional[str], flag: str) -> Optional[datetime]: ...


def _parse_time(value: Optional[str], flag: str) -> Optional[datetime]:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a timestamp like 2024-11-01 or "
                                 "2024-11-01T12:00:00", param_hint=flag)


@app.callback()
def main_options(verbose: bool = Verbose,
                 version: bool = typer.Option(False, "--version", callback=_show_version,
                                              is_eager=True, help="Print the version")):
    """Incremental ETL of the ToteSys database into a star-schema warehouse."""
    _state["json"] = False  # until a command's --json says otherwise


def _workspace(progress: _Progress, **flags) -> Workspace:
    return Workspace(**flags, on_server_start=lambda: progress.line(
        "Starting the embedded PostgreSQL…"))


def _connect_hint(workspace: Workspace) -> None:
    if workspace.is_embedded("warehouse"):
        render.stdout().print(f"Query the warehouse with: [bold]psql "
                              f"\"{workspace.url('warehouse')}\"[/]", soft_wrap=True)


# ---- seeding ------------------------------------------------------------------------------
@app.command()
def seed(source_url: Optional[str] = SourceUrl,
         as_of: Optional[str] = typer.Option(
             None, "--as-of", help="Load the database as it was at this time (UTC)"),
         advance_to: Optional[str] = typer.Option(
             None, "--advance-to", help="Move a seeded database forward to this time (UTC)"),
         snapshot: Optional[Path] = typer.Option(
             None, "--snapshot", help="Snapshot directory [default: data/totesys-2024-11]"),
         as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Create the ToteSys schema and load the real snapshot into the source database."""
    from rich.table import Table

    from totes.local.seed import seed as run_seed

    if as_of and advance_to:
        raise typer.BadParameter("give --as-of or --advance-to, not both")
    moment = _parse_time(as_of, "--as-of") or _parse_time(advance_to, "--advance-to")

    progress = _Progress()
    source = _workspace(progress, source_url=source_url).database("source")
    with progress.status(f"Seeding the {source.describe()}…") as status:
        counts = run_seed(source, moment, snapshot, advance=advance_to is not None,
                          progress=lambda table, rows: status.update(
                              f"Seeding {table} ({rows:,} rows)…"))
    if as_json:
        return _print_json(counts)
    table = Table("table", "inserted", "updated", title="Seeded "
                  + (f"as of {moment}" if moment else "the whole snapshot"))
    for name, count in counts.items():
        table.add_row(name, f"{count['inserted']:,}", f"{count['updated']:,}")
    render.stdout().print(table)


# ---- the stages ---------------------------------------------------------------------------
@app.command()
def run(source_url: Optional[str] = SourceUrl, warehouse_url: Optional[str] = WarehouseUrl,
        lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
        config: Optional[str] = ConfigFile,
        table: Optional[List[str]] = typer.Option(
            None, "--table", help="Only ingest this table (repeatable); transform and load "
                                  "take all pending work"),
        check: bool = typer.Option(True, "--reconcile/--no-reconcile", help="Reconcile source "
                                   "and warehouse after a load that loaded a batch (the facts "
                                   "on the ids it loaded)"),
        as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Run the main job once: plan → ingest → transform → load."""
    from totes.local.runner import run_pipeline

    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, warehouse_url=warehouse_url,
                           lake=lake, processed=processed, config=config)
    configured = workspace.config().tables  # a bad configuration fails before any server
    unknown = [t for t in table or () if t not in configured]  # starts, a bad --table too
    if unknown:
        raise unknown_names("table", unknown, configured, f"in {workspace.config_path}")
    with progress.status("Looking at the source…"):
        counts = workspace.seed_embedded_if_empty()
    if counts is not None:
        seeded = counted(sum(c['inserted'] for c in counts.values()), "row")
        progress.line(f"Seeded the embedded source: {seeded} in "
                      f"{counted(len(counts), 'table')}")
    resources = workspace.resources()
    following = {"plan": "ingest", "ingest": "transform", "transform": "load",
                 "load": "reconcile"}
    with progress.status("plan…") as status:
        def on_stage(stage, output):
            progress.line(f"[green]✓[/] {stage}")
            if stage in following:
                status.update(f"{following[stage]}…")

        result = run_pipeline(resources, on_stage, lambda r: progress.line(
            f"  ingested {r.table}: {counted(r.rows, 'row')}"), tables=table or None,
            reconcile=check)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        console = render.stdout()
        console.print(render.ingest_table(result.ingest))
        console.print(render.transform_table(result.transform))
        console.print(render.load_table(result.load))
        console.print(render.run_summary(result), soft_wrap=True)
        if result.reconcile is not None:
            style = "green" if result.reconcile.equal else "red"
            console.print(f"[{style}]{escape(result.reconcile.summary())}[/]", soft_wrap=True)
            if not result.reconcile.equal:
                console.print(render.differences_table(result.reconcile))
        for line in (render.source_warnings(result.ingest, tuple(result.plan.warnings))
                     + render.held_back(result.transform, result.load)):
            progress.console.print(f"[yellow]{escape(line)}[/]")
        _connect_hint(workspace)
    _exit_if_held(result.transform.quarantined_rows + result.load.held_rows)


def _exit_if_held(newly_held: int) -> None:
    if newly_held:
        raise typer.Exit(EXIT_ROWS_HELD)


@app.command()
def check(source_url: Optional[str] = SourceUrl, warehouse_url: Optional[str] = WarehouseUrl,
          lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
          config: Optional[str] = ConfigFile, as_json: bool = JsonOutput,
          verbose: bool = Verbose):
    """Check everything a run needs: the configuration, the source (tables, columns,
    privileges, change data capture), the warehouse (privileges, schema), the lake, the
    processed area and the ledger; each says ok or what to fix. Exit 0 when all pass; 75
    when only a server or store did not answer; 1 otherwise."""
    from totes.local.check import check_everything

    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, warehouse_url=warehouse_url,
                           lake=lake, processed=processed, config=config)
    with progress.status("Checking…"):
        result = check_everything(workspace)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        render.stdout().print(render.check_table(result))
    if not result.ok:
        raise typer.Exit(EXIT_TRANSIENT if result.retryable else EXIT_TERMINAL)


@app.command()
def plan(source_url: Optional[str] = SourceUrl, warehouse_url: Optional[str] = WarehouseUrl,
         config: Optional[str] = ConfigFile,
         check_source: bool = typer.Option(True, help="Check tables against the source"),
         check_warehouse: bool = typer.Option(
             True, help="Check that the warehouse role can create the star schema in "
             "TOTES_WAREHOUSE_SCHEMA and owns its tables"),
         as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Print the per-table payloads the configuration resolves to (the Map state's input),
    after checking the source's tables and the warehouse's privileges. The output is JSON
    with or without --json."""
    from totes.ingest.plan import plan as run_plan
    from totes.load.warehouse import check_warehouse as check_privileges

    workspace = _workspace(_Progress(), source_url=source_url, warehouse_url=warehouse_url,
                           config=config)
    resolved = workspace.config()
    source = workspace.database("source") if check_source else None
    if check_warehouse:
        check_privileges(workspace.database("warehouse"))
    _print_json(run_plan(resolved, source).model_dump(mode="json"))


@app.command()
def ingest(source_url: Optional[str] = SourceUrl, lake: Optional[str] = LakeUri,
           config: Optional[str] = ConfigFile,
           table: Optional[List[str]] = typer.Option(None, "--table",
                                                     help="Only this table (repeatable)"),
           reingest: bool = typer.Option(False, "--reingest", help="Extract the tables from "
                                         "the beginning, whatever the lake holds"),
           low: Optional[str] = typer.Option(None, "--from", help="Backfill: the row versions "
                                             "whose watermark is at or after this value"),
           high: Optional[str] = typer.Option(None, "--to", help="Backfill: … and before this "
                                              "value"),
           engine: str = typer.Option("python", "--engine", help="python: this process (parts "
                                      "in threads); spark: a local Spark whose executors read "
                                      "the parts, as the Glue job does"),
           as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Run the ingest stage: new row versions of every table into the lake (or, with
    --reingest or --from/--to, a reingest or a backfill of the --table given)."""
    from totes.ingest.plan import plan as run_plan
    from totes.local.runner import ingest_all
    from totes.utils.ledger import new_run_id

    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, lake=lake, config=config)
    resolved = workspace.config()
    unknown = [t for t in table or () if t not in resolved.tables]
    if unknown:
        raise unknown_names("table", unknown, resolved.tables, f"in {workspace.config_path}")
    mode = _mode(reingest, low, high, table)
    source = workspace.database("source")
    request = [name if mode is None else {"table": name, "mode": mode, "from": low, "to": high}
               for name in table or ()]
    planned = run_plan(resolved, source, run_id=new_run_id(), tables=request or None)
    _check_engine(engine)
    with progress.status("ingest…"):
        if engine == "spark":
            results = _ingest_on_spark(workspace, planned.tables)
        else:
            results = ingest_all(source, workspace.lake(), planned,
                                 ledger=workspace.ledger())
    if as_json:
        return _print_json([r.model_dump(mode="json") for r in results])
    render.stdout().print(render.ingest_table(results))
    for line in render.source_warnings(results, tuple(planned.warnings)):
        progress.console.print(f"[yellow]{escape(line)}[/]")


def _check_engine(engine: str) -> None:
    """Raises ConfigError unless ``engine`` is ``python`` or ``spark``."""
    if engine not in ("python", "spark"):
        raise ConfigError(f"--engine {engine!r}: use python or spark")


@contextlib.contextmanager
def _local_spark():
    """A local Spark session for the block, stopped after it."""
    from totes.utils.spark import spark_session

    spark = spark_session()
    try:
        yield spark
    finally:
        spark.stop()


def _database_ref(workspace, role: str):
    """How Spark executors find the workspace's ``role`` database: its secret, else its
    URL."""
    from totes.utils.spark import DatabaseRef

    secret = workspace.secret(role)
    return DatabaseRef(secret_id=secret, role=role) if secret else \
        DatabaseRef(url=workspace.url(role), role=role)


def _ingest_on_spark(workspace, plans) -> list:
    """Each table through :func:`totes.ingest.spark_extract.extract_on_spark`, on one local
    Spark session."""
    from totes.ingest.spark_extract import SourceRef, extract_on_spark

    with _local_spark() as spark:
        ref = _database_ref(workspace, "source")
        source = SourceRef(url=ref.url, secret_id=ref.secret_id)
        return [extract_on_spark(spark, plan, source, workspace.lake_uri, workspace.ledger())
                for plan in plans]


def _mode(reingest: bool, low: Optional[str], high: Optional[str],
          tables: Optional[List[str]]) -> Optional[Mode]:
    """The mode the flags ask for (None: each table's own).

    Raises:
        ConfigError: --reingest with --from/--to, one bound without the other, or a mode
            without --table.
    """
    if reingest and (low is not None or high is not None):
        raise ConfigError("--reingest extracts everything; --from/--to make a backfill: give "
                          "one or the other")
    if (low is None) != (high is None):
        raise ConfigError("a backfill needs both --from and --to (the range is [from, to))")
    mode: Optional[Mode] = "reingest" if reingest else "backfill" if low is not None else None
    if mode is not None and not tables:
        raise ConfigError(f"a {mode} needs --table: name the tables to {mode}")
    return mode


@app.command()
def transform(lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
              rebuild: Optional[str] = typer.Option(
                  None, "--rebuild", metavar="KEY",
                  help="Rebuild one committed batch from the lake instead: KEY is its "
                  "manifest key or any file of it that an error named (a damaged processed "
                  "file); the batch keeps its place, the next load takes it"),
              engine: str = typer.Option("python", "--engine", help="python: this process; "
                                         "spark: a local Spark whose tasks build the facts, "
                                         "as the Glue job does"),
              as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Run the transform stage: new lake files into the star schema's processed files."""
    from totes.transform.run import transform as run_transform

    _check_engine(engine)

    progress = _Progress()
    workspace = _workspace(progress, lake=lake, processed=processed)
    if rebuild is not None:
        from totes.transform.rebuild import rebuild as rebuild_batch

        with progress.status(f"rebuilding the batch of {rebuild} from the lake…"):
            rebuilt = rebuild_batch(workspace.lake(), workspace.processed(), rebuild,
                                    ledger=workspace.ledger(), reason="totes transform --rebuild")
        if as_json:
            _print_json(rebuilt.model_dump(mode="json"))
        else:
            render.stdout().print(render.rebuild_table(rebuilt))
            render.stdout().print(f"Rebuilt batch {escape(rebuilt.batch)} from the lake "
                                  f"({counted(len(rebuilt.replaced), 'file')}, repair "
                                  f"{escape(rebuilt.repair)}); `totes load` takes it.")
        return
    with progress.status("transform…"):
        if engine == "spark":
            from totes.transform.spark_transform import transform_on_spark

            with _local_spark() as spark:
                result = transform_on_spark(spark, workspace.lake_uri,
                                            workspace.processed().uri, workspace.ledger())
        else:
            result = run_transform(workspace.lake(), workspace.processed(),
                                   ledger=workspace.ledger())
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        render.stdout().print(render.transform_table(result))
        for line in render.held_back(result, None):
            progress.console.print(f"[yellow]{escape(line)}[/]")
    _exit_if_held(result.quarantined_rows)


@app.command()
def load(warehouse_url: Optional[str] = WarehouseUrl, processed: Optional[str] = ProcessedUri,
         lake: Optional[str] = LakeUri, batch: Optional[List[str]] = typer.Option(
             None, "--batch", help="Load this manifest key (again) (repeatable) "
                                   "[default: every batch not loaded yet]"),
         engine: str = typer.Option("python", "--engine", help="python: this process; "
                                    "spark: a local Spark whose tasks copy the fact rows into "
                                    "the warehouse, as the Glue job does"),
         as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Run the load stage: processed batches into the warehouse, in one transaction (with
    the lake batches of the raw layer's tables not loaded yet)."""
    from totes.contracts.config import raw_tables
    from totes.load.warehouse import load as run_load

    _check_engine(engine)
    if engine == "spark" and batch:
        raise ConfigError("--batch loads chosen batches in this process: leave out "
                          "--engine spark")
    progress = _Progress()
    workspace = _workspace(progress, warehouse_url=warehouse_url, processed=processed,
                           lake=lake)
    with progress.status("load…"):
        if engine == "spark":
            from totes.load.spark_load import load_on_spark

            with _local_spark() as spark:
                result = load_on_spark(spark, workspace.processed().uri,
                                       _database_ref(workspace, "warehouse"),
                                       workspace.ledger(), lake_uri=workspace.lake_uri,
                                       raw_tables=raw_tables(workspace.config()))
        else:
            result = run_load(workspace.processed(), workspace.database("warehouse"),
                              batch or None, ledger=workspace.ledger(),
                              lake=workspace.lake(),
                              raw_tables=raw_tables(workspace.config()))
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        render.stdout().print(render.load_table(result))
        for line in render.held_back(None, result):
            progress.console.print(f"[yellow]{escape(line)}[/]")
        _connect_hint(workspace)
    _exit_if_held(result.held_rows)


@app.command()
def quarantine(warehouse_url: Optional[str] = WarehouseUrl,
               processed: Optional[str] = ProcessedUri, lake: Optional[str] = LakeUri,
               retry: bool = typer.Option(False, "--retry", help="Put the held row versions "
                                          "through the rules again, then load"),
               everything: bool = typer.Option(False, "--all", help="Also list the versions "
                                               "superseded or released"),
               limit: int = typer.Option(100, "--limit", min=1, help="At most this many rows "
                                         "per table"),
               as_json: bool = JsonOutput, verbose: bool = Verbose):
    """List the row versions held back: quarantined by transform (they broke a rule) and fact
    rows load holds until their dimension row arrives. Exit 0; with --retry, 65 if rows are
    still held afterwards."""
    from totes.load.quarantine import quarantine_report
    from totes.local.runner import retry_quarantine

    progress = _Progress()
    workspace = _workspace(progress, warehouse_url=warehouse_url, processed=processed,
                           lake=lake)
    warehouse = workspace.database("warehouse")
    retried = None
    if retry:
        with progress.status("retrying the quarantine…"):
            retried = retry_quarantine(workspace.lake(), workspace.processed(), warehouse,
                                       workspace.ledger())
    report = quarantine_report(workspace.processed(), warehouse, limit, everything)
    if as_json:
        document = report.model_dump(mode="json")
        if retried:
            document["retry"] = {"transform": retried[0].model_dump(mode="json"),
                                 "load": retried[1].model_dump(mode="json")}
        _print_json(document)
    else:
        if retried:
            for line in render.retried(*retried):
                progress.console.print(escape(line))
        console = render.stdout()
        console.print(render.quarantine_table(report, console.width))
    still_held = report.counts.get("held", 0) + report.counts.get("waiting", 0)
    if retry and still_held:
        raise typer.Exit(EXIT_ROWS_HELD)


@app.command()
def reconcile(source_url: Optional[str] = SourceUrl,
              warehouse_url: Optional[str] = WarehouseUrl,
              limit: int = typer.Option(20, "--limit", min=1, help="List at most this many "
                                        "differences per table (the totals count all)"),
              as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Compare the source with the warehouse: rows, values after the transform's rules, and
    money sums per currency. Rows changed after the last load are pending, not differences.
    Exit 0 when they agree, 1 with the differences listed."""
    from totes.reconcile.reconcile import reconcile as reconcile_warehouse

    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, warehouse_url=warehouse_url)
    source, warehouse = workspace.database("source"), workspace.database("warehouse")
    with progress.status("Reconciling the source and the warehouse…"):
        result = reconcile_warehouse(source, warehouse, limit)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        console = render.stdout()
        console.print(render.reconcile_table(result, console.width))
        if not result.equal:
            console.print(render.differences_table(result))
        console.print(escape(result.summary()), soft_wrap=True)
    if not result.equal:
        raise typer.Exit(EXIT_TERMINAL)


@app.command()
def rebuild(source_url: Optional[str] = SourceUrl, warehouse_url: Optional[str] = WarehouseUrl,
            lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
            config: Optional[str] = ConfigFile,
            table: Optional[str] = typer.Option(
                None, "--table", metavar="SOURCE_TABLE",
                help="Only the star tables derived from this source table (its fact, the "
                "dimensions whose rule reads it) [default: the whole star schema, and the "
                "processed area]"),
            check: bool = typer.Option(True, "--reconcile/--no-reconcile", help="Reconcile "
                                       "the rebuilt schema with the source before the swap "
                                       "(a difference stops it)"),
            as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Derive the star schema again from every lake batch into new schemas, reconcile it,
    and swap it in in one transaction (after a rule change, or a lost processed area). The
    replaced tables stay in <schema>_previous until the next rebuild."""
    from totes.local.rebuild import derived_tables, rebuild_warehouse
    from totes.utils import settings

    derived_tables(table)  # an unknown table fails before any server starts
    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, warehouse_url=warehouse_url,
                           lake=lake, processed=processed, config=config)
    resources = workspace.resources()
    steps = [0]
    following = {"transform": "load", "load": "transform", "reconcile": "swap",
                 "swap": "moving the processed area"}
    with progress.status("rebuilding from the lake: transform…") as status:
        def on_stage(stage, output):
            if stage == "load":
                steps[0] += 1
                progress.line(f"[green]✓[/] transform and load, step {steps[0]}")
            elif stage != "transform":
                progress.line(f"[green]✓[/] {stage}")
            status.update(f"rebuilding from the lake: {following[stage]}…")

        result = rebuild_warehouse(resources, table, reconcile=check, on_stage=on_stage)
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    console = render.stdout()
    console.print(render.load_table(result.load))
    if result.reconcile is not None:
        console.print(f"[green]{escape(result.reconcile.summary())}[/]", soft_wrap=True)
    star = settings.current().warehouse_schema
    console.print(
        f"Rebuilt {counted(len(result.tables), 'table')} of schema {escape(star)} from "
        f"{counted(result.transform.source_files, 'lake file')} and swapped "
        f"{counted(len(result.swapped), 'relation')} in, in "
        f"{result.seconds:.1f} s; the replaced ones are in schema "
        f"{escape(str(result.previous['star']))}"
        + (f", the replaced processed area in {escape(str(result.previous['processed']))}"
           if result.previous["processed"] else "") + ".", soft_wrap=True)


@app.command()
def report(warehouse_url: Optional[str] = WarehouseUrl,
           source_url: Optional[str] = SourceUrl,
           output: Path = typer.Option(Path("report.html"), "--output", "-o",
                                       help="Where to write the HTML file"),
           check: bool = typer.Option(True, "--reconcile/--no-reconcile", help="Reconcile "
                                      "source and warehouse for the report's health section"),
           as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Write one self-contained HTML report of the warehouse (sales, purchases, payments) and
    of the pipeline's health; it opens without a network."""
    from totes.local.report import write_report

    progress = _Progress()
    workspace = _workspace(progress, warehouse_url=warehouse_url, source_url=source_url)
    warehouse = workspace.database("warehouse")
    summary = None
    if check and workspace.is_embedded("source") and not workspace.is_embedded("warehouse"):
        # The embedded source is not the source of a warehouse given by URL: comparing them
        # would fail on tables that do not exist, or report differences that are not.
        summary = ("reconciliation skipped: the warehouse was given without its source "
                   "(--source-url or TOTES_SOURCE_URL)")
        progress.line(f"[yellow]{summary}[/]")
    elif check:
        from totes.reconcile.reconcile import reconcile as reconcile_warehouse

        with progress.status("Reconciling the source and the warehouse…"):
            summary = reconcile_warehouse(workspace.database("source"), warehouse).summary()
    with progress.status("Writing the report…"):
        result = write_report(warehouse, str(output), workspace.ledger(), summary)
    if as_json:
        return _print_json(result.to_json())
    render.stdout().print(f"Wrote {escape(result.path)} ({result.bytes / 1e6:.1f} MB, "
                          f"{len(result.charts)} charts); open it in a browser.")
    for table in result.raw:
        render.stdout().print(f"raw layer: {escape(table['relation'])}: "
                              f"{table['versions']:,} row versions, {table['current']:,} "
                              "current rows")


@app.command()
def status(source_url: Optional[str] = SourceUrl, warehouse_url: Optional[str] = WarehouseUrl,
           lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
           config: Optional[str] = ConfigFile,
           check_source: bool = typer.Option(True, "--source/--no-source",
                                             help="Read the source's newest rows for the lag"),
           as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Per table: mode, last success, lag behind the source, pending work, last failure.
    Exit 0; 75 (a retry may help) or 1 when the source, the slot or the warehouse could not
    be read (the rest is still shown)."""
    from totes.local.status import pipeline_status

    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, warehouse_url=warehouse_url,
                           lake=lake, processed=processed, config=config)
    resolved = workspace.config()
    result = pipeline_status(resolved, workspace.ledger(), workspace.lake(),
                             workspace.processed(), workspace.database("warehouse"),
                             workspace.database("source") if check_source else None)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    else:
        console = render.stdout()
        console.print(render.status_table(result, console.width))
        schemas = render.schema_table(result)
        if schemas is not None:
            console.print(schemas)
        for note in result.notes:
            progress.console.print(f"[yellow]{escape(note)}[/]")
    if result.unreadable:  # the status is incomplete: a script must not read it as healthy
        if not as_json:
            progress.console.print(f"[bold red]status incomplete:[/] not read: "
                                   f"{escape(', '.join(result.unreadable))}")
        raise typer.Exit(EXIT_TRANSIENT if result.retryable else EXIT_TERMINAL)


@app.command()
def history(table: Optional[str] = typer.Option(None, "--table", help="Only this table"),
            stage: Optional[str] = typer.Option(None, "--stage",
                                                help="Only ingest, transform or load"),
            limit: int = typer.Option(20, "--limit", min=1, help="At most this many records"),
            config: Optional[str] = ConfigFile, as_json: bool = JsonOutput,
            verbose: bool = Verbose):
    """The ledger's records, newest first: every stage run with its result.

    With --json, each record has `metrics`: the values its stage's function publishes to
    CloudWatch, with the same names and units (docs/observability.md).
    """
    from totes.contracts import metrics

    workspace = _workspace(_Progress(), config=config)
    if stage is not None and stage not in STAGES:
        raise unknown_names("stage", [stage], STAGES, "a stage")
    if table is not None and table not in (known := [*workspace.config().tables, ALL_TABLES]):
        raise unknown_names("table", [table], known, f"in {workspace.config_path}")
    ledger = workspace.ledger()
    records = ledger.resolved(ledger.history(stage, table, limit))
    if as_json:
        return _print_json([{**document, "metrics": metrics.as_json(metrics.of_record(document))}
                            for document in (r.model_dump(mode="json") for r in records)])
    console = render.stdout()
    console.print(render.history_table(records, console.width))


@app.command()
def replay(start: str = typer.Option(..., "--from", help="Seed the source as of this time"),
           end: str = typer.Option(..., "--to", help="Last run time"),
           step: str = typer.Option("1d", "--step", help="Time between runs: 1d, 6h, 15m"),
           source_url: Optional[str] = typer.Option(
               None, "--source-url", help="Source to replay into [default: embedded "
               "replay_totesys, recreated]"),
           warehouse_url: Optional[str] = typer.Option(
               None, "--warehouse-url", help="Warehouse [default: embedded replay_warehouse, "
               "recreated]"),
           lake: Optional[str] = typer.Option(
               None, "--lake", help="Ingest lake of the replay: directory or "
               "s3://bucket/prefix [default: $TOTES_HOME/replay/lake, emptied]"),
           processed: Optional[str] = typer.Option(
               None, "--processed", help="Processed area of the replay: directory or "
               "s3://bucket/prefix [default: $TOTES_HOME/replay/processed, emptied]"),
           config: Optional[str] = ConfigFile, as_json: bool = JsonOutput,
           verbose: bool = Verbose):
    """Replay the real history: seed as of --from, then advance --step and run, to --to.

    By default it uses its own embedded databases and directories, recreated each time, so
    it never touches what `totes run` built.
    """
    from totes.local.replay import parse_step, replay as run_replay

    first, last = _parse_time(start, "--from"), _parse_time(end, "--to")

    interval = parse_step(step)
    progress = _Progress()
    workspace = _workspace(progress, source_url=source_url, warehouse_url=warehouse_url,
                           lake=lake, processed=processed, config=config,
                           from_environment=False)
    resources = workspace.replay_resources()
    table = render.replay_table(f"replay {first} → {last}, every {step}")
    runs = run_replay(resources, first, last, interval,
                      lambda moment, result: progress.line(
                          render.replay_row(table, moment, result)))
    if as_json:
        return _print_json({"runs": [{"at": moment.isoformat(sep=" "),
                                      **result.model_dump(mode="json")}
                                     for moment, result in runs],
                            "lake": resources.lake.uri, "processed": resources.processed.uri,
                            "warehouse_url": _url_of(resources.warehouse)})
    console = render.stdout()
    console.print(table)
    console.print(f"{counted(len(runs), 'run')} replayed. Lake {resources.lake.uri}, "
                  f"processed area {resources.processed.uri}.")
    console.print(f"Query the replay's warehouse with: [bold]psql "
                  f"\"{_url_of(resources.warehouse)}\"[/]", soft_wrap=True)


def _url_of(database) -> str:
    """A psql URL of ``database`` without its password."""
    params = database.params
    if "unix_sock" in params:
        folder, _, name = params["unix_sock"].rpartition("/")
        port = name.rsplit(".", 1)[1]
        return f"postgresql://{params['user']}@/{params['database']}?host={folder}&port={port}"
    return f"postgresql://{params['user']}@{params['host']}:{params['port']}/" \
           f"{params['database']}"


# ---- change data capture ------------------------------------------------------------------
def _capture_plan(workspace: Workspace, tables: Optional[List[str]]):
    """The capture plan of the configuration's cdc tables (or of ``tables``, which need not
    be cdc yet: ``totes cdc init --table T`` prepares T before the configuration says so).

    Raises:
        ConfigError: no cdc table, or a table that is not configured.
    """
    from totes.contracts.config import CapturePlan, resolve_tables

    resolved = workspace.config()
    plans = resolve_tables(resolved)
    configured = {p.table: p for p in plans}
    unknown = [t for t in tables or () if t not in configured]
    if unknown:
        raise unknown_names("table", unknown, configured, f"in {workspace.config_path}")
    chosen = [configured[t] for t in tables] if tables else \
        [p for p in plans if p.extract_type == "cdc"]
    if not chosen:
        raise ConfigError(f"{workspace.config_path} has no table whose extract_type is cdc: "
                          "give --table, or set extract_type: cdc on a table")
    return CapturePlan(slot=resolved.cdc.slot, publication=resolved.cdc.publication,
                       max_changes_per_run=resolved.cdc.max_changes_per_run, tables=chosen)


@cdc_app.command("init")
def cdc_init(source_url: Optional[str] = SourceUrl, config: Optional[str] = ConfigFile,
             table: Optional[List[str]] = typer.Option(
                 None, "--table", help="Prepare this table (repeatable) [default: every cdc "
                 "table of the configuration]"),
             sql: bool = typer.Option(False, "--sql", help="Print the statements for a DBA "
                                      "instead of running them"),
             as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Create the publication (or add the tables it lacks) and the replication slot that
    change data capture reads; prints what it ran (with --sql, what to run)."""
    from totes.ingest.capture import init_source

    workspace = _workspace(_Progress(), source_url=source_url, config=config)
    plan = _capture_plan(workspace, table)
    source = workspace.database("source")
    statements = init_source(plan, source, apply=not sql)
    mysql = getattr(source, "engine", "postgresql") == "mysql"
    if as_json:
        return _print_json({"slot": plan.slot, "publication": plan.publication,
                            "statements": statements, "applied": not sql and not mysql})
    console = render.stdout()
    if mysql:  # server settings and grants: printed for a DBA, never run
        if not statements:
            console.print(f"The binlog of the {source.describe()} is ready for "
                          f"{', '.join(t.table for t in plan.tables)}: nothing to do.")
        else:
            console.print("A DBA must run (the role cannot set these itself):")
        for statement in statements:
            console.print(f"{statement};", soft_wrap=True)
        return
    if not statements:
        console.print(f"Publication {plan.publication} and slot {plan.slot} are ready for "
                      f"{', '.join(t.table for t in plan.tables)}: nothing to do.")
    for statement in statements:
        console.print(f"{statement};" if sql else f"ran: {escape(statement)}", soft_wrap=True)


@cdc_app.command("drop")
def cdc_drop(source_url: Optional[str] = SourceUrl, config: Optional[str] = ConfigFile,
             as_json: bool = JsonOutput, verbose: bool = Verbose):
    """Drop the replication slot and the publication (the lake keeps every batch). An
    abandoned slot keeps WAL on the source for ever: drop it when capture ends."""
    from totes.contracts.config import CapturePlan
    from totes.ingest.capture import drop_source

    workspace = _workspace(_Progress(), source_url=source_url, config=config)
    resolved = workspace.config()
    plan = CapturePlan(slot=resolved.cdc.slot, publication=resolved.cdc.publication,
                       tables=[])
    source = workspace.database("source")
    statements = drop_source(plan, source)
    if as_json:
        return _print_json({"slot": plan.slot, "publication": plan.publication,
                            "statements": statements})
    console = render.stdout()
    if getattr(source, "engine", "postgresql") == "mysql":
        console.print(f"Nothing to drop: the binlog reader holds nothing on the "
                      f"{source.describe()} (the server expires binlogs by its own settings).")
        return
    if not statements:
        console.print(f"No slot {plan.slot} and no publication {plan.publication}: nothing "
                      "to drop.")
    for statement in statements:
        console.print(f"ran: {escape(statement)}", soft_wrap=True)


# ---- the embedded server ------------------------------------------------------------------
@embedded_app.command("start")
def embedded_start(as_json: bool = JsonOutput):
    """Start the embedded server (if needed) and print the database URLs."""
    urls = EmbeddedPostgres(home_dir()).start()
    if as_json:
        return _print_json({"running": True, "urls": urls})
    for name, url in urls.items():
        render.stdout().print(f"{name}: {url}", soft_wrap=True)


@embedded_app.command("stop")
def embedded_stop(as_json: bool = JsonOutput):
    """Stop the embedded server."""
    stopped = EmbeddedPostgres(home_dir()).stop()
    if as_json:
        return _print_json({"running": False, "stopped": stopped})
    render.stdout().print("stopped" if stopped else "not running")


@embedded_app.command("status")
def embedded_status(as_json: bool = JsonOutput):
    """Say whether the embedded server is running, and where its data lives."""
    server = EmbeddedPostgres(home_dir())
    if as_json:
        return _print_json({"running": server.is_running(), "data_dir": str(server.data_dir)})
    render.stdout().print(f"{'running' if server.is_running() else 'stopped'}: "
                          f"{server.data_dir}")


def main() -> None:
    """Console entry point (``totes``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(render.VisibleFormatter("%(asctime)s %(levelname)s %(name)s: "
                                                 "%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    sys.exit(app())
