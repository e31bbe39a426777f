"""Bad input and injected faults, on a real PostgreSQL: each gets a clear error that names the
table, key or setting, and writes nothing (lake, processed area and warehouse compared)."""
from __future__ import annotations

import os
import time

import pytest

from support import CONFIG, query, snapshot
from test_end_to_end import fingerprint
from totes.contracts.config import TablePlan, parse_config
from totes.contracts.errors import (ConfigError, DatabaseUnavailable, LakeError, PermissionDenied,
                                    SourceSchemaError)
from totes.utils import postgres_reader
from totes.ingest.extract import ingest_table
from totes.ingest.plan import plan
from totes.load.warehouse import load
from totes.local.runner import Resources, run_pipeline
from totes.transform.run import transform
from totes.utils.config_file import load_config
from totes.utils.lake import Lake


def files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root)
                  for f in names)


def test_a_warehouse_that_is_the_source_is_refused(resources, monkeypatch):
    same = Resources(resources.source, type(resources.source)("warehouse",
                     dict(resources.source.params)), resources.lake, resources.processed,
                     CONFIG)
    with pytest.raises(ConfigError, match="the warehouse is the source database .* point the "
                                          "warehouse at another database"):
        run_pipeline(same)
    assert files(resources.lake.root) == []  # refused before anything was extracted

    # Reached by another name (as a Lambda reaches it): load sees the source's tables.
    run_pipeline(resources)
    with pytest.raises(ConfigError, match="holds the ToteSys source tables .*it looks like the "
                                          "source"):
        load(resources.processed, resources.source)
    assert query(resources.source, "SELECT count(*) FROM pg_namespace "
                                   "WHERE nspname = 'totes'") == [[0]]
    monkeypatch.setenv("TOTES_ALLOW_SHARED_DATABASE", "1")
    assert load(resources.processed, resources.source).batches  # a deliberate choice


def test_a_lake_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="lake directory .*file/lake: Not a directory"):
        Lake(str(tmp_path / "file" / "lake"))


def test_a_garbage_lake_file_and_a_foreign_manifest_are_named_and_write_nothing(resources):
    run_pipeline(resources)
    garbage = "currency/2030/01/01/000000000000.parquet"
    resources.lake.put_bytes(garbage, b"PAR1 this is not parquet")
    before = files(resources.processed.root), fingerprint(resources.warehouse)
    with pytest.raises(LakeError, match=f"{garbage} as Parquet"):
        ingest_table(TablePlan(table="currency", primary_key="currency_id"),
                     resources.source, resources.lake)
    with pytest.raises(LakeError, match=f"{garbage} as Parquet"):
        transform(resources.lake, resources.processed)
    assert (files(resources.processed.root), fingerprint(resources.warehouse)) == before

    other = Lake(str(resources.processed.root) + "-foreign")
    other.put_bytes("_manifests/2030/01/01/000000000000.json", b'{"rows": "not ours"}')
    with pytest.raises(LakeError, match="000000000000.json is not a batch manifest: batch_time"):
        load(other, resources.warehouse)
    assert fingerprint(resources.warehouse) == before[1]


def test_huge_text_values_go_through_any_record_batch_size(empty_source, tmp_path):
    query(empty_source, "CREATE TABLE notes (notes_id int PRIMARY KEY, body text, "
                        "last_updated timestamp(3) NOT NULL)")
    query(empty_source, "INSERT INTO notes SELECT i, repeat(chr(64 + i), (5 + i) << 20), "
                        "timestamp '2024-01-01' + i * interval '1 second' "
                        "FROM generate_series(1, 3) i")
    lake = Lake(str(tmp_path))
    result = ingest_table(TablePlan(table="notes", primary_key="notes_id",
                                    record_batch_bytes=1 << 20), empty_source, lake)
    rows = lake.read_table(result.key)
    assert result.rows == 3
    assert [len(b) for b in rows["body"].to_pylist()] == [6 << 20, 7 << 20, 8 << 20]
    assert rows["body"][2].as_py() == "C" * (8 << 20)


def test_a_lock_held_longer_than_the_wait_is_transient_and_writes_nothing(seeded_source,
                                                                          tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("TOTES_DB_TIMEOUT_SECONDS", "1")
    lake = Lake(str(tmp_path))
    holder = seeded_source.connect("lock-holder")
    try:
        holder.run("START TRANSACTION")
        holder.run("LOCK TABLE currency IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="currency.*lock timeout.*SQLSTATE 55P03"):
            ingest_table(TablePlan(table="currency", primary_key="currency_id"), seeded_source,
                         lake)
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    assert files(lake.root) == []


def test_plan_finds_an_unreadable_table_a_renamed_column_and_a_key_that_is_not_unique(
        seeded_source):
    role = f"etl_{seeded_source.params['database'][-8:]}"
    query(seeded_source, f"CREATE ROLE {role} LOGIN")
    query(seeded_source, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    query(seeded_source, f"REVOKE SELECT ON payment FROM {role}")
    etl = type(seeded_source)("source", dict(seeded_source.params, user=role))
    with pytest.raises(PermissionDenied, match="may not read table 'payment': GRANT SELECT ON "
                                               "payment TO"):
        plan(load_config(CONFIG), etl)

    query(seeded_source, "ALTER TABLE design RENAME COLUMN design_name TO name")
    with pytest.raises(SourceSchemaError, match="table 'design' has no column design_name, "
                                                "which transform reads"):
        plan(load_config(CONFIG), seeded_source)

    not_unique = parse_config({"tables": {"payment": {"primary_key": "counterparty_id"}}})
    with pytest.raises(SourceSchemaError, match="payment.counterparty_id has no unique "
                                                "constraint or index"):
        plan(not_unique, seeded_source)


def test_a_table_given_twice_in_the_configuration_is_named(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("tables:\n  payment: {}\n  staff: {}\n  payment: {primary_key: id}\n")
    with pytest.raises(ConfigError, match="'payment' is given twice \\(first on line 2\\)"):
        load_config(path)


def test_staging_files_a_killed_run_left_are_removed(resources):
    import subprocess  # nosec B404 (a process that ends at once, for a dead pid)

    dead = subprocess.Popen(["true"])  # nosec B603 B607
    dead.wait()
    folder = resources.lake.root + "/.staging"
    os.makedirs(folder)
    names = {f"{dead.pid}-killed.partial": 5, f"{os.getpid()}-live-but-old.partial": 3600,
             "unnamed-old.partial": 3600, "unnamed-fresh.partial": 5}
    for name, age in names.items():
        with open(f"{folder}/{name}", "wb") as out:
            out.write(b"x" * 100)
        os.utime(f"{folder}/{name}", (time.time() - age, time.time() - age))
    run_pipeline(resources)
    assert sorted(os.listdir(folder)) == [f"{os.getpid()}-live-but-old.partial",
                                          "unnamed-fresh.partial"]


def test_an_old_open_transaction_that_holds_rows_back_is_named(seeded_source, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(postgres_reader, "HELD_BACK_WARNING_SECONDS", 0.5)
    idle = seeded_source.connect("forgotten-client")
    try:
        idle.run("START TRANSACTION")
        idle.run("SELECT 1")  # then idle in transaction
        time.sleep(1)
        result = ingest_table(TablePlan(table="currency", primary_key="currency_id"),
                              seeded_source, Lake(str(tmp_path)))
        (pid,), = idle.run("SELECT pg_backend_pid()")
    finally:
        idle.close()
    held = result.held_back_by
    assert (held.pid, held.state, held.application_name) == (pid, "idle in transaction",
                                                             "forgotten-client")
    assert held.role == seeded_source.params["user"] and held.transaction_age_seconds >= 1
    assert result.rows == snapshot("currency").num_rows  # older rows still come
