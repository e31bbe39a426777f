"""The totes command as a person runs it: the embedded default, twice, then bad input; from
another directory; with --json, -v and --version."""
import json
import os
import shutil
import subprocess  # nosec B404 (the installed totes command, fixed arguments)
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support import REPO
from totes.cli import app
from totes.local.workspace import config_path, find_project, home_dir

TOTES = str(Path(sys.executable).with_name("totes"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("TOTES_SOURCE_URL", "TOTES_WAREHOUSE_URL", "TOTES_LAKE", "TOTES_PROCESSED",
                 "TOTES_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOTES_HOME", str(tmp_path / "state"))
    yield tmp_path / "state"
    CliRunner().invoke(app, ["embedded", "stop"])


def test_run_on_the_embedded_default_seeds_loads_then_finds_nothing_new(home):
    runner = CliRunner()
    first = runner.invoke(app, ["run"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "Seeded the embedded source: 48,066 rows in 11 tables" in first.output
    assert "48,066 new row versions" in first.output
    assert "fact_payment" in first.output and "15,836" in first.output
    assert f'psql "postgresql://postgres:@/warehouse?host={home}/postgres"' in \
        first.output.replace("\n", "")
    assert len(list((home / "lake").rglob("*.parquet"))) == 11

    second = runner.invoke(app, ["run"], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert "nothing new in the source; the warehouse was up to date." in second.output
    assert "Seeded" not in second.output
    assert len(list((home / "lake").rglob("*.parquet"))) == 11

    status = runner.invoke(app, ["embedded", "status"])
    assert status.output.startswith("running")
    # A user's embedded server keeps PostgreSQL's durability (only the tests' servers drop it).
    from totes.utils.postgres import Database
    embedded = Database.from_url("warehouse",
                                 f"postgresql://postgres:@/warehouse?host={home}/postgres")
    with embedded.session("tests", "reading the embedded server's settings") as session:
        assert session.conn.run("SHOW fsync") == [["on"]]
        assert session.conn.run("SHOW synchronous_commit") == [["on"]]


def test_errors_are_one_line_with_an_exit_code(home, tmp_path):
    runner = CliRunner()
    (tmp_path / "bad.yaml").write_text("tables:\n  payment: {watermark_colum: x}\n")
    bad_config = runner.invoke(app, ["plan", "--config", str(tmp_path / "bad.yaml"),
                                     "--no-check-source"])
    assert bad_config.exit_code == 1
    assert "tables.payment.watermark_colum: extra inputs are not permitted" in \
        bad_config.output.replace("\n", " ")

    unreachable = runner.invoke(app, ["ingest", "--source-url",
                                      "postgresql://etl:hunter2@127.0.0.1:9/totesys"])
    assert unreachable.exit_code == 75
    assert "DatabaseUnavailable: cannot reach the source database totesys" in \
        unreachable.output.replace("\n", " ")
    assert "hunter2" not in unreachable.output

    bad_time = runner.invoke(app, ["seed", "--as-of", "yesterday"])
    assert bad_time.exit_code == 2


def test_with_json_an_error_is_one_document_on_stdout(home):
    result = CliRunner().invoke(app, ["ingest", "--json", "--source-url",
                                      "postgresql://etl:hunter2@127.0.0.1:9/totesys"])
    assert result.exit_code == 75
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "DatabaseUnavailable" and error["retryable"] is True
    assert error["exit_code"] == 75
    assert error["message"].startswith("cannot reach the source database totesys at "
                                       "127.0.0.1:9: Connection refused. Check that the server")
    assert "timeout is" not in error["message"] and "hunter2" not in result.output

    bad_batch = CliRunner().invoke(app, ["load", "--json", "--batch", "nope"])
    assert bad_batch.exit_code == 1
    assert json.loads(bad_batch.stdout)["error"]["type"] == "ConfigError"


def test_a_bad_configuration_fails_before_any_server_starts(home, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "bad.yaml").write_text("tables:\n  payment: {extract: sideways}\n")
    for arguments in (["run", "--config", "missing.yaml"], ["run", "--config", "bad.yaml"]):
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 1, result.output
        assert "ConfigError" in result.output
    assert not (home / "postgres").exists()  # no server was started, no state was made
    assert not (elsewhere / ".totes").exists()


def test_the_project_directory_is_found_from_any_folder_inside_it(tmp_path, monkeypatch):
    from totes.utils.settings import Settings

    for variable in ("TOTES_HOME", "TOTES_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "pipeline.yaml", project / "config")
    deep = project / "notebooks" / "2024"
    deep.mkdir(parents=True)

    assert find_project(deep) == project
    assert home_dir(Settings(), find_project(deep)) == project / ".totes"
    assert home_dir(Settings(home=str(tmp_path / "h")), project) == tmp_path / "h"
    assert config_path(None, Settings(), project) == project / "config" / "pipeline.yaml"
    assert config_path(None, Settings(config="/etc/t.yaml"), project) == Path("/etc/t.yaml")
    assert config_path("mine.yaml", Settings(config="/etc/t.yaml"), project) == \
        Path("mine.yaml")
    # Outside any project, the checkout totes is installed from is the project.
    assert find_project(tmp_path) == REPO


def test_version_and_verbose_after_the_command(home):
    version = subprocess.run([TOTES, "--version"], capture_output=True, text=True,
                             check=True)  # nosec B603
    assert version.stdout.startswith("totes 0.")
    env = dict(os.environ, TOTES_HOME=str(home))
    first = subprocess.run([TOTES, "run", "-v"], capture_output=True, text=True, env=env,
                           cwd=REPO)  # nosec B603
    assert first.returncode == 0, first.stderr
    assert "INFO totes.ingest.extract: ingested currency (incremental): 3 rows" in first.stderr
    # The log says what the progress lines would: each table is reported once.
    assert first.stderr.count("ingested currency") == 1


def test_replay_prints_what_each_run_moved_on_its_own_databases(home):
    runner = CliRunner()
    result = runner.invoke(app, ["replay", "--from", "2024-11-01", "--to", "2024-11-03",
                                 "--step", "1d"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 runs replayed." in result.output
    rows = [line.strip() for line in result.stdout.splitlines()
            if line.strip().startswith("2024-11-0")]
    assert [row.split()[:2] for row in rows] == [["2024-11-01", "00:00"], ["2024-11-02", "00:00"],
                                                 ["2024-11-03", "00:00"]]
    assert all(len(row.split()) == 9 for row in rows)  # one line each: nothing wrapped
    header = next(line for line in result.stdout.splitlines() if "run as of" in line)
    assert header.split() == ["run", "as", "of", "rows", "moved", "sales_order",
                              "purchase_order", "payment", "other", "tables", "fact", "rows",
                              "added", "seconds"]
    assert "Query the replay's warehouse with: psql" in result.stdout
    assert "replay_warehouse" in result.stdout
    assert (home / "replay" / "lake").is_dir()
    assert not (home / "lake").exists()  # what `totes run` builds is left alone

    bad_step = runner.invoke(app, ["replay", "--from", "2024-11-01", "--to", "2024-11-02",
                                   "--step", "fortnightly"])
    assert bad_step.exit_code == 1
    assert "step 'fortnightly': use a positive number and d, h, m or s" in bad_step.output


def test_a_run_that_quarantines_rows_exits_65_and_totes_quarantine_lists_them(home):
    from support import query
    from totes.utils.postgres import Database

    runner = CliRunner()
    assert runner.invoke(app, ["run"]).exit_code == 0
    source = Database.from_url("source", f"postgresql://postgres:@/totesys?host={home}/postgres")
    query(source, "INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, "
                  "counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, "
                  "agreed_payment_date, agreed_delivery_location_id) VALUES ('2024-11-16', "
                  "'2024-11-16', 1, 1, 1, 1, 1.00, 1, '20/11/2024', '2024-11-21', 1)")

    held = runner.invoke(app, ["run"])
    assert held.exit_code == 65, held.output
    assert "Quarantined 1 row version that breaks a rule (sales_order 1)" in held.stderr
    listing = runner.invoke(app, ["quarantine", "--json"])
    assert listing.exit_code == 0
    report = json.loads(listing.stdout)
    assert report["counts"] == {"held": 1}
    assert report["entries"][0]["message"] == ("sales_order row sales_order_id=11188: "
                                               "agreed_delivery_date '20/11/2024' is not a "
                                               "YYYY-MM-DD date")
    assert runner.invoke(app, ["run"]).exit_code == 0  # held, but nothing new set aside
    retried = runner.invoke(app, ["quarantine", "--retry"])
    assert retried.exit_code == 65 and "1 row version still breaks a rule" in retried.stderr


def test_status_and_history_after_runs_a_failure_and_a_backfill(home):
    runner = CliRunner()
    assert runner.invoke(app, ["run"]).exit_code == 0
    bad = runner.invoke(app, ["ingest", "--table", "payment", "--from", "soon", "--to",
                              "2024-11-03"])
    assert bad.exit_code == 1 and "--from 'soon' is not a timestamp" in bad.output
    backfill = runner.invoke(app, ["ingest", "--table", "payment", "--from", "2024-11-01",
                                   "--to", "2024-11-03", "--json"])
    assert backfill.exit_code == 0, backfill.output
    [result] = json.loads(backfill.stdout)
    assert result["mode"] == "backfill" and result["rows"] > 0
    assert runner.invoke(app, ["run"]).exit_code == 0

    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    tables = {t["table"]: t for t in report["tables"]}
    assert set(tables) == {"address", "counterparty", "currency", "department", "design",
                           "staff", "payment_type", "sales_order", "purchase_order",
                           "transaction", "payment"}
    payment = tables["payment"]
    assert payment["last_failure"]["error_type"] == "ConfigError"
    assert payment["last_success"]["status"] == "succeeded"
    assert payment["lag"] == 0 and payment["lag_unit"] == "seconds"
    assert payment["high_watermark"]["primary_key"] == 15836
    assert report["pending_batches"] == 0
    assert report["last_load"]["status"] == "succeeded"
    human = runner.invoke(app, ["status"])
    assert "batches not loaded: 0" in human.stdout and "ConfigError" in human.stdout

    history = runner.invoke(app, ["history", "--table", "payment", "--json"])
    records = json.loads(history.stdout)
    assert [r["status"] for r in records][:3] == ["succeeded", "succeeded", "failed"]
    assert records[1]["mode"] == "backfill" and records[1]["details"]["range"] == {
        "from": "2024-11-01", "to": "2024-11-03"}
    listing = runner.invoke(app, ["history", "--limit", "3"])
    assert listing.exit_code == 0 and "load" in listing.stdout


def test_run_can_be_limited_to_some_tables(home):
    runner = CliRunner()
    limited = runner.invoke(app, ["run", "--table", "currency", "--table", "design", "--json"])
    assert limited.exit_code == 0, limited.output
    result = json.loads(limited.stdout)
    assert [r["table"] for r in result["ingest"]] == ["currency", "design"]
    assert len(result["plan"]["left_out"]) == 9
    assert {t["table"] for t in result["transform"]["tables"]} == {"dim_currency", "dim_design"}
    unknown = runner.invoke(app, ["run", "--table", "refund"])
    assert unknown.exit_code == 1 and "table refund is not in " in \
        unknown.output

    # status and history read the pipeline file --config names (its tables, not the default's)
    import yaml

    document = yaml.safe_load(open(REPO / "config" / "pipeline.yaml").read())
    document["tables"] = {t: document["tables"][t] for t in ("currency", "design")}
    other = home / "other.yaml"
    other.write_text(yaml.safe_dump(document))
    status = runner.invoke(app, ["status", "--config", str(other), "--no-source", "--json"])
    assert status.exit_code == 0, status.output
    assert [t["table"] for t in json.loads(status.stdout)["tables"]] == ["currency", "design"]
    history = runner.invoke(app, ["history", "--config", str(other), "--table", "design",
                                  "--json"])
    assert [r["table"] for r in json.loads(history.stdout)] == ["design"]
    refused = runner.invoke(app, ["history", "--config", str(other), "--table", "payment"])
    assert refused.exit_code == 1 and f"in {other}" in refused.output
