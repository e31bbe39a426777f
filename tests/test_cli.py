"""The totes command as a person runs it: the embedded default, twice, then a bad flag."""
import pytest
from typer.testing import CliRunner

from support import REPO
from totes.cli import app


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
    assert "nothing new in the source" in second.output
    assert "Seeded" not in second.output
    assert len(list((home / "lake").rglob("*.parquet"))) == 11

    status = runner.invoke(app, ["embedded", "status"])
    assert status.output.startswith("running")


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


def test_replay_prints_what_each_run_moved_on_its_own_databases(home):
    runner = CliRunner()
    result = runner.invoke(app, ["replay", "--from", "2024-11-01", "--to", "2024-11-03",
                                 "--step", "1d"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 runs replayed." in result.output
    lines = {line.split()[0] + " " + line.split()[1]: line for line in result.output.splitlines()
             if line.strip().startswith("2024-11-0")}
    assert set(lines) >= {"2024-11-01 00:00", "2024-11-02 00:00", "2024-11-03 00:00"}
    assert (home / "replay" / "lake").is_dir()
    assert not (home / "lake").exists()  # what `totes run` builds is left alone

    bad_step = runner.invoke(app, ["replay", "--from", "2024-11-01", "--to", "2024-11-02",
                                   "--step", "fortnightly"])
    assert bad_step.exit_code == 1
    assert "step 'fortnightly': use a positive number and d, h, m or s" in bad_step.output
