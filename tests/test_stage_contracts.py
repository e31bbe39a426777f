"""The seams between stages, on a real PostgreSQL: batches transformed but not loaded, loaded
out of order, partly, or again; microsecond timestamps; a warehouse of the first release."""
from __future__ import annotations

from datetime import datetime, time

import pytest

from support import fact_versions, query, snapshot
from test_end_to_end import fingerprint
from totes.ingest.plan import plan
from totes.load.warehouse import WAREHOUSE_SCHEMA_VERSION, create_warehouse, load
from totes.local.runner import ingest_all, run_pipeline
from totes.transform.run import transform
from totes.utils.config_file import load_config


def ingest_and_transform(resources) -> str:
    """One batch transformed and committed, not loaded; returns its manifest key."""
    planned = plan(load_config(resources.config_path), resources.source)
    ingest_all(resources.source, resources.lake, planned)
    manifest = transform(resources.lake, resources.processed).manifest
    assert manifest is not None
    return manifest


def rename_staff(resources, staff_id: int, last_name: str) -> None:
    query(resources.source, "UPDATE staff SET last_name = :n, last_updated = "
          "(SELECT max(last_updated) FROM staff) + interval '1 day' WHERE staff_id = :s",
          n=last_name, s=staff_id)


def staff_names(resources) -> dict:
    return dict(query(resources.warehouse, "SELECT staff_id, last_name FROM dim_staff"))


def loaded_batches(resources) -> list:
    return [key for key, in query(resources.warehouse, "SELECT manifest_key FROM "
                                                       "totes.loaded_batch ORDER BY 1")]


def test_a_load_of_one_batch_leaves_the_older_pending_batch_for_the_next_load(resources):
    first = run_pipeline(resources).transform.manifest
    rename_staff(resources, 1, "Middle")
    rename_staff(resources, 2, "Only-in-B3")
    b3 = ingest_and_transform(resources)
    rename_staff(resources, 1, "Newest")
    b4 = ingest_and_transform(resources)

    assert load(resources.processed, resources.warehouse, [b4]).batches == [b4]
    catch_up = load(resources.processed, resources.warehouse)

    assert catch_up.batches == [b3]  # B3 was still pending: not lost behind B4
    assert loaded_batches(resources) == sorted([first, b3, b4])
    names = staff_names(resources)
    assert names[2] == "Only-in-B3"  # B3's change reached the warehouse
    assert names[1] == "Newest"      # and B3, loaded after B4, did not roll B4 back
    assert load(resources.processed, resources.warehouse).batches == []


def test_reloading_an_older_batch_changes_nothing(resources):
    b1 = run_pipeline(resources).transform.manifest
    rename_staff(resources, 1, "Renamed")
    run_pipeline(resources)
    before = fingerprint(resources.warehouse)

    again = load(resources.processed, resources.warehouse, [b1])

    assert {t.table: t.updated for t in again.tables}["dim_staff"] == 0
    assert sum(t.inserted + t.updated for t in again.tables) == 0
    assert staff_names(resources)[1] == "Renamed"
    assert fingerprint(resources.warehouse) == before


def test_a_dimension_row_changes_with_either_of_its_sources(resources):
    run_pipeline(resources)
    (staff_updated, department_id), = query(
        resources.source, "SELECT last_updated, department_id FROM staff WHERE staff_id = 1")
    query(resources.source, "UPDATE department SET location = 'Moved', last_updated = "
          "'2025-01-01 00:00:00' WHERE department_id = :d", d=department_id)
    run_pipeline(resources)
    (own, reference, location), = query(
        resources.warehouse, "SELECT source_last_updated, reference_last_updated, location "
                             "FROM dim_staff WHERE staff_id = 1")
    # The version is (the staff row's, its department's): the department's change is newer.
    assert (own, reference, location) == (staff_updated, datetime(2025, 1, 1), "Moved")

    # A move to a department last changed long ago is still a newer version of the staff row.
    (other,), = query(resources.source, "SELECT department_id FROM department WHERE "
                      "department_id <> :d ORDER BY last_updated LIMIT 1", d=department_id)
    query(resources.source, "UPDATE staff SET department_id = :o, last_updated = "
          "'2025-01-02 00:00:00' WHERE staff_id = 1", o=other)
    run_pipeline(resources)
    (moved_to,), = query(resources.warehouse, "SELECT department_name FROM dim_staff "
                                              "WHERE staff_id = 1")
    (expected,), = query(resources.source, "SELECT department_name FROM department "
                                           "WHERE department_id = :o", o=other)
    assert moved_to == expected


def test_microsecond_timestamps_keep_their_microseconds_in_the_facts(resources):
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN last_updated "
                            "TYPE timestamp(6)")
    order = snapshot("sales_order")["sales_order_id"][0].as_py()
    for moment in ("2024-11-16 10:00:00.123456", "2024-11-16 10:00:00.123789"):
        # Two versions within one millisecond: both are versions, both are kept.
        query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, "
              "last_updated = CAST(:t AS timestamp) WHERE sales_order_id = :o", t=moment,
              o=order)
        run_pipeline(resources)

    times = sorted(t for i, d, t in query(
        resources.warehouse, "SELECT sales_order_id, last_updated_date, last_updated_time "
        "FROM fact_sales_order WHERE sales_order_id = :o", o=order) if d.day == 16)
    assert times == [time(10, 0, 0, 123456), time(10, 0, 0, 123789)]
    versions = fact_versions(resources.warehouse, "fact_sales_order", "sales_order_id")
    assert len(versions) == len(set(versions)) == snapshot("sales_order").num_rows + 2


def test_a_warehouse_of_the_first_release_is_upgraded_in_place(resources):
    b1 = run_pipeline(resources).transform.manifest
    conn = resources.warehouse.connect()
    try:  # back to the first release's shape, keeping its rows
        conn.run("DROP TABLE totes.schema_version, totes.load_state, "
                 "totes.held_fact_sales_order, totes.held_fact_purchase_order, "
                 "totes.held_fact_payment")
        for dimension in ("dim_staff", "dim_location", "dim_design", "dim_currency",
                          "dim_counterparty", "dim_payment_type", "dim_transaction"):
            conn.run(f"ALTER TABLE {dimension} DROP COLUMN source_last_updated")
        for dimension in ("dim_staff", "dim_counterparty"):
            conn.run(f"ALTER TABLE {dimension} DROP COLUMN reference_last_updated")
        for fact in ("fact_sales_order", "fact_purchase_order", "fact_payment"):
            conn.run(f"DROP VIEW {fact}_current")  # the first release had no views
            for column in ("created_time", "last_updated_time"):
                conn.run(f"ALTER TABLE {fact} ALTER COLUMN {column} TYPE time(3)")
    finally:
        conn.close()
    rename_staff(resources, 1, "After upgrade")

    second = run_pipeline(resources)

    assert second.load.batches != [] and b1 not in second.load.batches
    assert staff_names(resources)[1] == "After upgrade"
    (precision,), = query(resources.warehouse, "SELECT datetime_precision FROM "
                          "information_schema.columns WHERE table_name = 'fact_payment' "
                          "AND column_name = 'created_time'")
    assert precision == 6
    assert query(resources.warehouse, "SELECT version FROM totes.schema_version") == \
        [[WAREHOUSE_SCHEMA_VERSION]]
    (current,), = query(resources.warehouse, "SELECT count(*) FROM fact_payment_current")
    assert current == snapshot("payment").num_rows  # the views came with the upgrade
    conn = resources.warehouse.connect()
    try:  # once upgraded, creating the warehouse again is one query and changes nothing
        before = fingerprint(resources.warehouse)
        create_warehouse(conn)
        assert fingerprint(resources.warehouse) == before
    finally:
        conn.close()


@pytest.mark.parametrize("bad_key, message", [
    ("nope", "'nope' is not a batch manifest key"),
    ("_manifests/2030/01/01/000000000000.json", "no batch _manifests/2030/01/01/"),
])
def test_loading_a_batch_that_is_not_there_is_named(resources, bad_key, message):
    from totes.contracts.errors import ConfigError, LakeError

    run_pipeline(resources)
    with pytest.raises((ConfigError, LakeError), match=message):
        load(resources.processed, resources.warehouse, [bad_key])


def test_a_bulk_load_keeps_every_key_and_loads_each_version_once(resources, monkeypatch):
    from totes.load import warehouse as warehouse_module
    from totes.local.runner import ingest_all
    from totes.ingest.extract import ingest_table

    monkeypatch.setattr(warehouse_module, "BULK_MIN_ROWS", 1)  # every fact batch in bulk
    planned = plan(load_config(resources.config_path), resources.source)
    ingest_all(resources.source, resources.lake, planned)
    sales = next(p for p in planned.tables if p.table == "sales_order")
    ingest_table(sales.with_mode("reingest"), resources.source, resources.lake)  # twice over
    transform(resources.lake, resources.processed)
    loaded = load(resources.processed, resources.warehouse)

    inserted = {t.table: t.inserted for t in loaded.tables}
    for table, fact in (("sales_order", "fact_sales_order"), ("payment", "fact_payment")):
        versions = fact_versions(resources.warehouse, fact, f"{table}_id")
        assert len(versions) == len(set(versions)) == snapshot(table).num_rows == \
            inserted[fact]
    declared = query(resources.warehouse, "SELECT conrelid::regclass::text, contype, "
                     "count(*), bool_and(convalidated) FROM pg_constraint WHERE conrelid IN "
                     "('fact_sales_order'::regclass, 'fact_payment'::regclass) GROUP BY 1, 2 "
                     "ORDER BY 1, 2")
    assert declared == [["fact_payment", "f", 7, True], ["fact_payment", "p", 1, True],
                        ["fact_payment", "u", 1, True], ["fact_sales_order", "f", 9, True],
                        ["fact_sales_order", "p", 1, True], ["fact_sales_order", "u", 1, True]]
    before = fingerprint(resources.warehouse)
    assert sum(t.inserted for t in load(resources.processed, resources.warehouse,
                                        loaded.batches).tables) == 0  # a reload: nothing
    assert fingerprint(resources.warehouse) == before
