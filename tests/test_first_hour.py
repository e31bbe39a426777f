"""What a newcomer meets first: ``totes check``, early failure on a bad warehouse, ``--json``
everywhere, help that shows flags as flags, "did you mean" for mistyped names, a warning for a
configured table no rule reads, ``report`` that does not reconcile against the wrong source,
tables that fit 80 columns."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from support import query, url_of
from totes.cli import app
from totes.contracts.config import PipelineConfig
from totes.ingest.plan import plan
from totes.local.runner import run_pipeline


@pytest.fixture
def cli(resources, monkeypatch, tmp_path):
    """``totes`` pointed at the test's databases and directories by flags."""
    for name in ("TOTES_SOURCE_URL", "TOTES_WAREHOUSE_URL", "TOTES_LAKE", "TOTES_PROCESSED",
                 "TOTES_CONFIG", "TOTES_SOURCE_SECRET", "TOTES_WAREHOUSE_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOTES_HOME", str(tmp_path / "home"))
    flags = {"source": ["--source-url", url_of(resources.source)],
             "warehouse": ["--warehouse-url", url_of(resources.warehouse)],
             "lake": ["--lake", resources.lake.uri],
             "processed": ["--processed", resources.processed.uri]}

    def invoke(command: list[str], *parts: str, **replace) -> object:
        chosen = [f for part in parts for f in replace.get(part, flags[part])]
        return CliRunner().invoke(app, command + chosen)
    return invoke


def test_check_says_ok_for_each_part_then_what_to_fix(cli, resources, tmp_path):
    good = cli(["check", "--json"], "source", "warehouse", "lake", "processed")

    assert good.exit_code == 0, good.output
    found = json.loads(good.stdout)
    assert [(c["check"], c["ok"]) for c in found["checks"]] == [
        ("configuration", True), ("source", True), ("warehouse", True), ("lake", True),
        ("processed", True), ("ledger", True)]
    assert "11 tables readable" in found["checks"][1]["detail"]
    assert "may create the star schema in schema public" in found["checks"][2]["detail"]

    (tmp_path / "a-file").write_text("not a directory")
    wrong = url_of(resources.warehouse).replace(resources.warehouse.params["database"],
                                                "no_such_warehouse")
    broken = {"warehouse": ["--warehouse-url", wrong],
              "lake": ["--lake", str(tmp_path / "a-file" / "lake")]}
    bad = cli(["check"], "source", "warehouse", "lake", "processed", **broken)
    bad_json = cli(["check", "--json"], "source", "warehouse", "lake", "processed", **broken)

    assert bad.exit_code == bad_json.exit_code == 1
    assert "check (2 problems" in bad.output and bad.output.count("FAIL") == 2
    checks = {c["check"]: c for c in json.loads(bad_json.stdout)["checks"]}
    assert [name for name, c in checks.items() if not c["ok"]] == ["warehouse", "lake"]
    assert checks["warehouse"]["error"] == "DatabaseRejected"
    assert 'database "no_such_warehouse" does not exist' in checks["warehouse"]["detail"]
    assert checks["lake"]["error"] == "ConfigError"
    assert checks["lake"]["detail"].startswith(f"lake directory {tmp_path}/a-file/lake")


def test_a_bad_warehouse_stops_a_run_before_anything_is_ingested(cli, resources):
    wrong = url_of(resources.warehouse).replace(resources.warehouse.params["database"],
                                                "no_such_warehouse")
    failed = cli(["run"], "source", "warehouse", "lake", "processed",
                 warehouse=["--warehouse-url", wrong])

    assert failed.exit_code == 1
    assert "DatabaseRejected" in failed.output
    assert resources.lake.folders() == []  # nothing ingested


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_command_takes_json_and_its_help_shows_flags_as_flags():
    from typer.main import get_command

    commands = list(_commands(get_command(app)))
    assert len(commands) >= 18
    for command in commands:
        shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
        assert shown.exit_code == 0, command
        assert "--json" in shown.output, f"totes {' '.join(command)} has no --json"
        assert "<bool>" not in shown.output and "list[str]" not in shown.output, command


def test_mistyped_names_get_the_closest_one(cli):
    stage = cli(["history", "--stage", "ingst"])
    table = cli(["run", "--table", "sales_ordr"], "source", "warehouse")

    assert stage.exit_code == table.exit_code == 1
    assert "stage ingst is not a stage: did you mean ingest?" in stage.output
    assert "table sales_ordr is not in" in table.output
    assert "did you mean sales_order?" in " ".join(table.output.split())


def test_a_configured_table_no_rule_reads_is_warned_about():
    config = PipelineConfig.model_validate({"tables": {"widgets": {"primary_key": "widget_id"},
                                                       "payment": {}}})
    planned = plan(config, None)
    assert planned.warnings == ["table widgets is configured, but no rule of the star schema "
                                "reads it: it lands in the lake and the raw layer "
                                "(raw.widgets), in no star-schema table"]
    config = PipelineConfig.model_validate({"tables": {"widgets": {"raw": False}}})
    assert plan(config, None).warnings == [
        "table widgets is configured, but no rule of the star schema reads it: it lands in "
        "the lake only, never in the warehouse (raw: false)"]


def test_report_without_its_source_does_not_reconcile_against_another(cli, resources,
                                                                      tmp_path):
    run_pipeline(resources)
    made = cli(["report", "--output", str(tmp_path / "r.html"), "--json"], "warehouse")

    assert made.exit_code == 0, made.output
    assert "reconciliation skipped: the warehouse was given without its source" in made.output
    assert (tmp_path / "r.html").read_text().count("reconciliation skipped") == 1


def test_wide_tables_fit_80_columns(cli, resources, monkeypatch):
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE design ALTER COLUMN design_name DROP NOT NULL")
    query(resources.source, "UPDATE design SET design_name = NULL, last_updated = now() "
                            "WHERE design_id = 2")
    run_pipeline(resources)
    monkeypatch.setenv("COLUMNS", "80")

    for command, parts in ((["status"], ("source", "warehouse", "lake", "processed")),
                           (["quarantine"], ("warehouse", "lake", "processed")),
                           (["history"], ())):
        shown = cli(command, *parts)
        assert shown.exit_code in (0, 65), shown.output
        wide = [line for line in shown.stdout.splitlines() if len(line) > 80]
        assert wide == [], f"totes {command[0]}: {wide[:2]}"
    assert "design design_id=2" in cli(["quarantine"], "warehouse", "lake",
                                       "processed").stdout
