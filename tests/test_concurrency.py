"""Runs that overlap, and runs killed midway, as the totes command runs them (separate
processes sharing one lake, processed area, warehouse and ledger): every row version lands in
the lake exactly once, the warehouse is exact, the ledger says what happened."""
from __future__ import annotations

import os
import signal
import subprocess  # nosec B404 (the installed totes command, fixed arguments)
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from support import CONFIG, fact_versions, query
from totes.contracts.source_tables import SOURCE_TABLES
from totes.local.runner import Resources, run_pipeline
from totes.local.seed import seed
from totes.utils.lake import Lake
from totes.utils.ledger import SqliteLedger

TOTES = str(Path(sys.executable).with_name("totes"))
FACTS = {"sales_order": "fact_sales_order", "purchase_order": "fact_purchase_order",
         "payment": "fact_payment"}


def url(database) -> str:
    folder, _, name = database.params["unix_sock"].rpartition("/")
    return (f"postgresql://{database.params['user']}:@/{database.params['database']}"
            f"?host={folder}&port={name.rsplit('.', 1)[1]}")


def command(resources, tmp_path, *extra) -> tuple[list[str], dict]:
    env = dict(os.environ, TOTES_HOME=str(tmp_path / "home"), TOTES_LEASE_SECONDS="2",
               TOTES_LEDGER=f"sqlite://{tmp_path}/ledger.sqlite3")
    return ([TOTES, "run", "--source-url", url(resources.source), "--warehouse-url",
             url(resources.warehouse), "--lake", resources.lake.root, "--processed",
             resources.processed.root, "--config", CONFIG, *extra], env)


def lake_versions(lake: Lake, table: str) -> Counter:
    found = Counter()
    pk = SOURCE_TABLES[table].primary_key
    for key in lake.keys_after(table, None):
        rows = lake.read_table(key, columns=[pk, "last_updated"])
        found.update(zip(rows[pk].to_pylist(), rows["last_updated"].to_pylist()))
    return found


def source_versions(source, table: str) -> set:
    pk = SOURCE_TABLES[table].primary_key
    return {(i, t) for i, t in query(source, f"SELECT {pk}, last_updated FROM {table}")}


def assert_exact(resources) -> None:
    """Each current source version once in the lake; the facts hold every lake version once."""
    for table in SOURCE_TABLES:
        in_lake = lake_versions(resources.lake, table)
        assert max(in_lake.values()) == 1, f"{table}: a version landed twice"
        assert source_versions(resources.source, table) <= set(in_lake), table
    for table, fact in FACTS.items():
        facts = fact_versions(resources.warehouse, fact, f"{table}_id")
        assert len(facts) == len(set(facts)), f"{fact} holds a version twice"
        assert set(facts) == set(lake_versions(resources.lake, table)), fact


def test_three_runs_started_at_once_land_every_row_version_once(resources, tmp_path):
    argv, env = command(resources, tmp_path, "--json")
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,  # nosec B603
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=300) for run in runs]
    # 65: a run's load held fact rows whose dimension rows another run was still bringing;
    # a later load of the three released them (checked below: nothing is left held).
    assert {run.returncode for run in runs} <= {0, 65}, [err for _, err in outputs]
    assert query(resources.warehouse, "SELECT (SELECT count(*) FROM totes.held_fact_sales_order)"
                 " + (SELECT count(*) FROM totes.held_fact_payment) + (SELECT count(*) FROM "
                 "totes.held_fact_purchase_order)") == [[0]]

    assert_exact(resources)
    for table in SOURCE_TABLES:
        assert len(resources.lake.keys_after(table, None)) == 1, table  # one batch each
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    records = ledger.history("ingest", limit=1000)
    by_table = {t: [r for r in records if r.table == t] for t in SOURCE_TABLES}
    for table, found in by_table.items():
        assert sorted(r.status for r in found if r.status != "skipped") == \
            ["succeeded"] * len([r for r in found if r.status != "skipped"])
        assert sum(r.rows for r in found if r.status == "succeeded") == \
            len(source_versions(resources.source, table)), table
        assert len({r.run_id for r in found}) == 3  # each run recorded each table
    skipped = [(r.run_id, r.table, r.details["lease_holder"]) for r in records
               if r.status == "skipped"]
    print(f"{len(skipped)} tables skipped because another run held them: {skipped[:5]}")


def test_runs_killed_at_any_point_then_rerun_lose_and_double_nothing(tmp_path, empty_source,
                                                                     warehouse):
    resources = Resources(empty_source, warehouse, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG,
                          SqliteLedger(str(tmp_path / "ledger.sqlite3")))
    moment = datetime(2024, 11, 1)
    seed(empty_source, moment)
    killed = []
    # Each run is killed once the ledger shows it inside a stage (then a little later, to
    # land on other lines of it); the last one after a fixed time, wherever it is.
    for stage, delay in (("ingest", 0.0), ("ingest", 0.05), ("transform", 0.0),
                         ("load", 0.0), ("load", 0.03), (None, 1.5)):
        moment += timedelta(days=1)
        seed(empty_source, moment, advance=True)
        argv, env = command(resources, tmp_path)
        seen = {r.run_id for r in resources.ledger.history(limit=1000)}
        run = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,  # nosec B603
                               stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while stage and run.poll() is None and time.monotonic() < deadline and not any(
                r.stage == stage and r.status == "running" and r.run_id not in seen
                for r in resources.ledger.history(stage=stage, limit=50)):
            time.sleep(0.005)
        time.sleep(delay)
        run.send_signal(signal.SIGKILL)
        run.wait()
        killed.append(run.pid)
    time.sleep(2.5)  # the killed runs' leases expire
    os.environ["TOTES_LEASE_SECONDS"] = "2"
    try:
        run_pipeline(resources)
    finally:
        del os.environ["TOTES_LEASE_SECONDS"]

    assert_exact(resources)
    records = resources.ledger.resolved(resources.ledger.history(limit=1000))
    assert not [r for r in records if r.status == "running"]
    abandoned = [r for r in records if r.status == "abandoned"]
    assert abandoned, "a run killed midway leaves its records abandoned"
    print(f"{len(abandoned)} records abandoned by killed runs: "
          f"{sorted({(r.stage, r.table) for r in abandoned})}")


def test_the_first_run_after_a_crash_takes_over_the_dead_runs_leases(
        tmp_path, seeded_source, warehouse, monkeypatch):
    """A run killed during ingest holds its leases for ten minutes here: the next run does not
    wait for them, skips nothing, and completes the work (its holder is provably dead: the
    same boot, no process with its PID and start time)."""
    resources = Resources(seeded_source, warehouse, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG,
                          SqliteLedger(str(tmp_path / "ledger.sqlite3")))
    argv, env = command(resources, tmp_path)
    env["TOTES_LEASE_SECONDS"] = "600"
    run = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,  # nosec B603
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline and not any(
            r.status == "running" for r in resources.ledger.history(stage="ingest", limit=50)):
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.wait()
    held = [r for r in resources.ledger.history(stage="ingest", limit=50)
            if r.status == "running"]
    assert held, "the run was killed inside ingest, holding leases"

    monkeypatch.setenv("TOTES_LEASE_SECONDS", "600")
    result = run_pipeline(resources)

    assert [r.table for r in result.ingest if r.skipped] == []
    assert result.transform.skipped is None and result.load.skipped is None
    assert_exact(resources)
    statuses = {r.status for r in resources.ledger.resolved(
        resources.ledger.history(stage="ingest", limit=100)) if r.run_id == held[0].run_id}
    assert "abandoned" in statuses and "running" not in statuses


def test_a_lease_holder_is_dead_only_on_this_boot_without_its_process():
    from totes.utils.ledger import dead, this_process

    me = this_process()
    assert me is not None and not dead(me)  # alive
    boot, space, pid, started = me.split(":")
    assert dead(f"{boot}:{space}:{pid}:{int(started) + 1}")  # the PID reused by another one
    assert dead(f"{boot}:{space}:999999999:1")  # no such process
    assert not dead(f"another-boot:{space}:{pid}:{started}")  # another machine, or rebooted
    assert not dead(f"{boot}:4026599999:999999999:1")  # another container: its PIDs are not ours
    assert not dead(f"{boot}:{pid}:{started}")  # an older release's record: it expires
    assert not dead(None) and not dead("garbage")
