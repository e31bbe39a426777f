"""Storage that fails under a stage: a lake remounted read-only, a full processed area. Every
stage maps the fault the same way (StorageUnavailable: the run exits 75, the ledger records
the type, a retry after the fault is gone completes the work exactly). The faults are real:
tmpfs mounts, remounted read-only or too small (skipped where this process may not mount)."""
from __future__ import annotations

import shutil
import subprocess  # nosec B404 (mount and umount, fixed arguments)
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support import query, snapshot, url_of
from totes.cli import EXIT_TRANSIENT, app
from totes.utils.ledger import ledger_from_uri


def _mount(target: Path, *options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)],
                   check=True, capture_output=True)  # nosec B603 B607


@pytest.fixture
def tmpfs(tmp_path):
    """A factory of tmpfs mounts under ``tmp_path``: ``tmpfs("lake", "size=64m")``."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the storage faults need real tmpfs mounts")
    mounted: list[Path] = []

    def make(name: str, *options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        try:
            _mount(target, *options)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"this process may not mount a tmpfs ({exc.stderr.decode().strip()}): "
                        "the storage faults need real mounts (root, or CAP_SYS_ADMIN)")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)  # nosec B603 B607


def _remount(target: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(("remount",) + options), str(target)], check=True,
                   capture_output=True)  # nosec B603 B607


@pytest.fixture
def run(seeded_source, warehouse, tmp_path, monkeypatch):
    """``run(lake, processed)``: ``totes run`` on the seeded source and the warehouse, with a
    ledger outside the mounts; returns the CLI's result."""
    ledger = tmp_path / "ledger.sqlite3"
    monkeypatch.setenv("TOTES_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TOTES_LEDGER", f"sqlite:///{ledger}")

    def invoke(lake: Path, processed: Path, command: str = "run"):
        flags = ["--lake", str(lake)] + (["--processed", str(processed), "--warehouse-url",
                                          url_of(warehouse)] if command == "run" else [])
        return CliRunner().invoke(app, [command, "--source-url", url_of(seeded_source),
                                        *flags])
    invoke.ledger = ledger_from_uri(f"sqlite:///{ledger}")
    return invoke


def test_a_lake_remounted_read_only_is_storage_unavailable_and_the_retry_completes(
        tmpfs, run, seeded_source, warehouse, tmp_path):
    lake = tmpfs("lake", "size=64m")
    processed = tmp_path / "processed"
    assert run(lake, processed).exit_code == 0
    query(seeded_source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
                         "now() WHERE sales_order_id = 20")
    _remount(lake, "ro")

    ingested = run(lake, processed, "ingest")  # the stage itself, as mid-run
    checked = run(lake, processed)  # a run: its checks find it before anything starts

    assert ingested.exit_code == EXIT_TRANSIENT, ingested.output
    assert "error: StorageUnavailable: writing the staging file of sales_order" in \
        ingested.output and "Read-only file system" in ingested.output
    [record] = run.ledger.history("ingest", "sales_order", limit=1)
    assert (record.status, record.error_type) == ("failed", "StorageUnavailable")
    assert checked.exit_code == EXIT_TRANSIENT
    assert f"error: StorageUnavailable: the lake {lake} is on a read-only filesystem" in \
        checked.output

    _remount(lake, "rw")
    again = run(lake, processed)
    assert again.exit_code == 0, again.output
    assert query(warehouse, "SELECT units_sold FROM fact_sales_order_current WHERE "
                            "sales_order_id = 20") == query(
        seeded_source, "SELECT units_sold FROM sales_order WHERE sales_order_id = 20")
    assert query(warehouse, "SELECT count(*) FROM fact_sales_order WHERE sales_order_id = 20"
                 ) == [[2]]  # the first version and the new one, each once


def test_a_full_processed_area_is_storage_unavailable_and_the_retry_completes(
        tmpfs, run, seeded_source, warehouse, tmp_path):
    processed = tmpfs("processed", "size=256k")

    failed = run(tmp_path / "lake", processed)

    assert failed.exit_code == EXIT_TRANSIENT, failed.output
    assert "error: StorageUnavailable: writing the staged" in failed.output
    assert "No space left on device" in failed.output
    [record] = run.ledger.history("transform", None, limit=1)
    assert (record.status, record.error_type) == ("failed", "StorageUnavailable")
    assert list(processed.glob("**/*.parquet")) == []  # nothing published, no staging left
    assert list(processed.glob(".staging/*")) == []

    _remount(processed, "size=64m")
    again = run(tmp_path / "lake", processed)
    assert again.exit_code == 0, again.output
    assert "source and warehouse agree" in again.output
    assert query(warehouse, "SELECT count(*) FROM fact_sales_order") == [
        [snapshot("sales_order").num_rows]]
