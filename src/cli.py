"""The ``totes`` command: everything a person runs locally.

Settings come from flags, else environment variables (``TOTES_SOURCE_URL``,
``TOTES_WAREHOUSE_URL``, ``TOTES_LAKE``, ``TOTES_PROCESSED``, ``TOTES_CONFIG``,
``TOTES_HOME``), else the embedded default: a PostgreSQL server under ``TOTES_HOME``
(``./.totes``) with databases ``totesys`` and ``warehouse``, and the lake and processed area
as directories beside it.

Exit codes: 0 success, 1 an error a retry cannot fix, 75 a transient error (retry later).
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from totes.local.embedded import SOURCE_DATABASE, WAREHOUSE_DATABASE, EmbeddedPostgres, \
    default_state_dir
from totes.utils.config import DEFAULT_CONFIG_PATH
from totes.utils.db import Database
from totes.utils.errors import TotesError
from totes.utils.lake import Lake

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Incremental ETL of the ToteSys database into a star-schema warehouse.")
embedded_app = typer.Typer(no_args_is_help=True, help="The embedded PostgreSQL server.")
app.add_typer(embedded_app, name="embedded")
console = Console(stderr=True)
out = Console()

SourceUrl = typer.Option(None, "--source-url", envvar="TOTES_SOURCE_URL",
                         help="Source database URL [default: embedded]", show_default=False)
WarehouseUrl = typer.Option(None, "--warehouse-url", envvar="TOTES_WAREHOUSE_URL",
                            help="Warehouse database URL [default: embedded]",
                            show_default=False)
LakeUri = typer.Option(None, "--lake", envvar="TOTES_LAKE",
                       help="Ingest lake: directory or s3://bucket/prefix "
                            "[default: $TOTES_HOME/lake]", show_default=False)
ProcessedUri = typer.Option(None, "--processed", envvar="TOTES_PROCESSED",
                            help="Processed area: directory or s3://bucket/prefix "
                                 "[default: $TOTES_HOME/processed]", show_default=False)
ConfigFile = typer.Option(DEFAULT_CONFIG_PATH, "--config", envvar="TOTES_CONFIG",
                          help="Pipeline configuration (YAML)")
JsonOutput = typer.Option(False, "--json", help="Print the stage outputs as JSON")


class _Settings:
    """Flags and variables resolved lazily: the embedded server starts only when needed."""

    def __init__(self, source_url=None, warehouse_url=None, lake=None, processed=None,
                 config=DEFAULT_CONFIG_PATH):
        self.state_dir = default_state_dir()
        self.embedded = EmbeddedPostgres(self.state_dir)
        self._urls = {"source": source_url, "warehouse": warehouse_url}
        self._embedded_urls: Optional[dict] = None
        self.lake_uri = lake or str(self.state_dir / "lake")
        self.processed_uri = processed or str(self.state_dir / "processed")
        self.config = config

    def is_embedded(self, role: str) -> bool:
        return not self._urls[role]

    def url(self, role: str) -> str:
        if self._urls[role]:
            return self._urls[role]
        if self._embedded_urls is None:
            with console.status("Starting the embedded PostgreSQL…"):
                self._embedded_urls = self.embedded.start()
        return self._embedded_urls[SOURCE_DATABASE if role == "source" else WAREHOUSE_DATABASE]

    def database(self, role: str) -> Database:
        return Database.from_url(role, self.url(role))

    def lake(self) -> Lake:
        return Lake(self.lake_uri)

    def processed(self) -> Lake:
        return Lake(self.processed_uri)


def _guard(work: Callable[[], None]) -> None:
    """Run ``work``; a pipeline error becomes one red line and an exit code."""
    try:
        work()
    except TotesError as exc:
        console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(75 if exc.retryable else 1)


def _parse_time(value: Optional[str], flag: str) -> Optional[datetime]:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a timestamp like 2024-11-01 or "
                                 "2024-11-01T12:00:00", param_hint=flag)


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v",
                                              help="Log each step")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)


# ---- seeding ------------------------------------------------------------------------------
def _seed_embedded_if_empty(settings: _Settings) -> None:
    """First use of the embedded source: load the ToteSys snapshot into it."""
    from totes.local.seed import seed

    if not settings.is_embedded("source"):
        return
    source = settings.database("source")
    with source.session("totes-check", f"looking for tables in the {source.describe()}") \
            as session:
        (tables,), = session.conn.run(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    if tables == 0:
        with console.status("Seeding the embedded source with the ToteSys snapshot "
                            "(first use)…"):
            counts = seed(source)
        console.print(f"Seeded the embedded source: "
                      f"{sum(c['inserted'] for c in counts.values()):,} rows in "
                      f"{len(counts)} tables")


@app.command()
def seed(source_url: Optional[str] = SourceUrl,
         as_of: Optional[str] = typer.Option(
             None, "--as-of", help="Load the database as it was at this time (UTC)"),
         advance_to: Optional[str] = typer.Option(
             None, "--advance-to", help="Move a seeded database forward to this time (UTC)"),
         snapshot: Optional[Path] = typer.Option(
             None, "--snapshot", help="Snapshot directory [default: data/totesys-2024-11]")):
    """Create the ToteSys schema and load the real snapshot into the source database."""
    from totes.local.seed import seed as run_seed

    if as_of and advance_to:
        raise typer.BadParameter("give --as-of or --advance-to, not both")
    moment = _parse_time(as_of, "--as-of") or _parse_time(advance_to, "--advance-to")

    def work():
        settings = _Settings(source_url=source_url)
        source = settings.database("source")
        with console.status(f"Seeding the {source.describe()}…") as status:
            counts = run_seed(source, moment, snapshot, advance=advance_to is not None,
                              progress=lambda table, rows: status.update(
                                  f"Seeding {table} ({rows:,} rows)…"))
        table = Table("table", "inserted", "updated", title="Seeded "
                      + (f"as of {moment}" if moment else "the whole snapshot"))
        for name, count in counts.items():
            table.add_row(name, f"{count['inserted']:,}", f"{count['updated']:,}")
        out.print(table)
    _guard(work)


# ---- the stages ---------------------------------------------------------------------------
def _resources(settings: _Settings):
    from totes.local.runner import Resources

    return Resources(settings.database("source"), settings.database("warehouse"),
                     settings.lake(), settings.processed(), settings.config)


def _print_json(document) -> None:
    out.print_json(json.dumps(document, default=str))


def _ingest_table(results: list[dict]) -> Table:
    table = Table("table", "rows", "files", "seconds", "high watermark", title="ingest")
    for r in results:
        high = r["high_watermark"]
        table.add_row(r["table"], f"{r['rows']:,}", "1" if r["key"] else "0",
                      f"{r['seconds']:.2f}",
                      f"{high['timestamp'][:23]} #{high['primary_key']}" if high else "-")
    return table


def _transform_table(result: dict) -> Table:
    table = Table("warehouse table", "rows", "files", title=f"transform "
                  f"({result['source_files']} lake files, {result['seconds']:.2f} s)")
    for r in result["tables"]:
        table.add_row(r["table"], f"{r['rows']:,}", "1")
    if not result["tables"]:
        table.add_row("(nothing new)", "0", "0")
    return table


def _load_table(result: dict) -> Table:
    table = Table("warehouse table", "rows", "inserted", "updated",
                  title=f"load ({len(result['batches'])} batches, {result['seconds']:.2f} s)")
    for r in result["tables"]:
        table.add_row(r["table"], f"{r['rows']:,}", f"{r['inserted']:,}", f"{r['updated']:,}")
    if not result["tables"]:
        table.add_row("(nothing new)", "0", "0", "0")
    return table


def _connect_hint(settings: _Settings) -> None:
    if settings.is_embedded("warehouse"):
        out.print(f"Query the warehouse with: [bold]psql \"{settings.url('warehouse')}\"[/]",
                  highlight=False, soft_wrap=True)


@app.command()
def run(source_url: Optional[str] = SourceUrl, warehouse_url: Optional[str] = WarehouseUrl,
        lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
        config: str = ConfigFile, as_json: bool = JsonOutput):
    """Run the main job once: plan → ingest → transform → load."""
    from totes.local.runner import run_pipeline

    def work():
        settings = _Settings(source_url, warehouse_url, lake, processed, config)
        _seed_embedded_if_empty(settings)
        resources = _resources(settings)
        with console.status("plan…") as status:
            done: list[str] = []

            def on_table(result):
                done.append(result["table"])
                console.print(f"  ingested {result['table']}: {result['rows']:,} rows",
                              highlight=False)

            def on_stage(stage, output):
                following = {"plan": "ingest", "ingest": "transform", "transform": "load"}
                console.print(f"[green]✓[/] {stage}", highlight=False)
                if stage in following:
                    status.update(f"{following[stage]}…")

            outputs = run_pipeline(resources, on_stage, on_table)
        if as_json:
            _print_json(outputs)
            return
        out.print(_ingest_table(outputs["ingest"]))
        out.print(_transform_table(outputs["transform"]))
        out.print(_load_table(outputs["load"]))
        moved = sum(r["rows"] for r in outputs["ingest"])
        out.print(f"Run finished in {outputs['seconds']:.1f} s: "
                  + (f"{moved:,} new row versions." if moved else "nothing new in the source."))
        _connect_hint(settings)
    _guard(work)


@app.command()
def plan(source_url: Optional[str] = SourceUrl, config: str = ConfigFile,
         check_source: bool = typer.Option(True, help="Check tables against the source")):
    """Print the per-table payloads the configuration resolves to (the Map state's input)."""
    from totes.ingest.plan import plan as run_plan
    from totes.utils.config import load_config

    def work():
        settings = _Settings(source_url=source_url, config=config)
        source = settings.database("source") if check_source else None
        _print_json(run_plan(load_config(config), source))
    _guard(work)


@app.command()
def ingest(source_url: Optional[str] = SourceUrl, lake: Optional[str] = LakeUri,
           config: str = ConfigFile,
           table: Optional[List[str]] = typer.Option(None, "--table",
                                                     help="Only this table (repeatable)"),
           as_json: bool = JsonOutput):
    """Run the ingest stage: new row versions of every table into the lake."""
    from totes.ingest.plan import plan as run_plan
    from totes.local.runner import ingest_all
    from totes.utils.config import load_config

    def work():
        settings = _Settings(source_url=source_url, lake=lake, config=config)
        source = settings.database("source")
        payload = run_plan(load_config(config), source)
        if table:
            unknown = set(table) - {t["table"] for t in payload["tables"]}
            if unknown:
                raise typer.BadParameter(f"not in {config}: {', '.join(sorted(unknown))}",
                                         param_hint="--table")
            payload["tables"] = [t for t in payload["tables"] if t["table"] in table]
        with console.status("ingest…"):
            results = ingest_all(source, settings.lake(), payload)
        _print_json(results) if as_json else out.print(_ingest_table(results))
    _guard(work)


@app.command()
def transform(lake: Optional[str] = LakeUri, processed: Optional[str] = ProcessedUri,
              as_json: bool = JsonOutput):
    """Run the transform stage: new lake files into the star schema's processed files."""
    from totes.transform.run import transform as run_transform

    def work():
        settings = _Settings(lake=lake, processed=processed)
        with console.status("transform…"):
            result = run_transform(settings.lake(), settings.processed())
        _print_json(result) if as_json else out.print(_transform_table(result))
    _guard(work)


@app.command()
def load(warehouse_url: Optional[str] = WarehouseUrl, processed: Optional[str] = ProcessedUri,
         batch: Optional[List[str]] = typer.Option(
             None, "--batch", help="Load this manifest key again (repeatable) "
                                   "[default: every batch not loaded yet]"),
         as_json: bool = JsonOutput):
    """Run the load stage: processed batches into the warehouse, in one transaction."""
    from totes.load.warehouse import load as run_load

    def work():
        settings = _Settings(warehouse_url=warehouse_url, processed=processed)
        with console.status("load…"):
            result = run_load(settings.processed(), settings.database("warehouse"), batch or None)
        if as_json:
            _print_json(result)
        else:
            out.print(_load_table(result))
            _connect_hint(settings)
    _guard(work)


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
               None, "--lake", help="[default: $TOTES_HOME/replay/lake, emptied]"),
           processed: Optional[str] = typer.Option(
               None, "--processed", help="[default: $TOTES_HOME/replay/processed, emptied]"),
           config: str = ConfigFile):
    """Replay the real history: seed as of --from, then advance --step and run, to --to.

    By default it uses its own embedded databases and directories, recreated each time, so
    it never touches what `totes run` built.
    """
    from totes.local.replay import parse_step, replay as run_replay
    from totes.local.runner import Resources

    first, last = _parse_time(start, "--from"), _parse_time(end, "--to")

    def work():
        interval = parse_step(step)
        settings = _Settings(source_url, warehouse_url, lake, processed, config)
        defaults = _fresh_replay_state(settings, source_url, warehouse_url, lake, processed)
        resources = Resources(
            Database.from_url("source", source_url or defaults["replay_totesys"]),
            Database.from_url("warehouse", warehouse_url or defaults["replay_warehouse"]),
            Lake(lake or str(settings.state_dir / "replay" / "lake")),
            Lake(processed or str(settings.state_dir / "replay" / "processed")), config)
        table = Table(title=f"replay {first} → {last}, every {step}", box=box.SIMPLE_HEAD,
                      pad_edge=False)
        table.add_column("run as of", no_wrap=True)
        for header in ("moved", "sales", "purchase", "payment", "other", "facts+", "s"):
            table.add_column(header, justify="right", min_width=len(header))

        def on_run(moment, outputs):
            moved = {r["table"]: r["rows"] for r in outputs["ingest"] if r["rows"]}
            facts = sum(t["inserted"] for t in outputs["load"]["tables"]
                        if t["table"].startswith("fact_"))
            main = [moved.get(name, 0) for name in ("sales_order", "purchase_order", "payment")]
            other = sum(moved.values()) - sum(main)
            table.add_row(f"{moment:%Y-%m-%d %H:%M}", f"{sum(moved.values()):,}",
                          *[f"{n:,}" for n in main], f"{other:,}", f"{facts:,}",
                          f"{outputs['seconds']:.1f}")
            detail = ", ".join(f"{name} {rows:,}" for name, rows in moved.items())
            console.print(f"  {moment:%Y-%m-%d %H:%M}: {detail or 'nothing new'}",
                          highlight=False)

        runs = run_replay(resources, first, last, interval, on_run)
        out.print(table)
        out.print(f"{len(runs)} runs replayed.")
    _guard(work)


def _fresh_replay_state(settings: _Settings, source_url, warehouse_url, lake, processed):
    """Recreate the embedded replay databases and directories that no flag replaced."""
    import shutil

    from totes.local.embedded import recreate_databases

    wanted = [name for name, given in (("replay_totesys", source_url),
                                       ("replay_warehouse", warehouse_url)) if not given]
    urls = recreate_databases(settings.embedded, wanted) if wanted else {}
    for given, folder in ((lake, "lake"), (processed, "processed")):
        if not given:
            shutil.rmtree(settings.state_dir / "replay" / folder, ignore_errors=True)
    return urls


# ---- the embedded server ------------------------------------------------------------------
@embedded_app.command("start")
def embedded_start():
    """Start the embedded server (if needed) and print the database URLs."""
    def work():
        urls = EmbeddedPostgres(default_state_dir()).start()
        for name, url in urls.items():
            out.print(f"{name}: {url}", highlight=False, soft_wrap=True)
    _guard(work)


@embedded_app.command("stop")
def embedded_stop():
    """Stop the embedded server."""
    stopped = EmbeddedPostgres(default_state_dir()).stop()
    out.print("stopped" if stopped else "not running")


@embedded_app.command("status")
def embedded_status():
    """Say whether the embedded server is running, and where its data lives."""
    server = EmbeddedPostgres(default_state_dir())
    out.print(f"{'running' if server.is_running() else 'stopped'}: {server.data_dir}",
              highlight=False)


def main() -> None:
    """Console entry point (``totes``)."""
    sys.exit(app())
