"""Partitioned extraction on a real PostgreSQL: the parts together are exactly what one read
returns, in every mode, for any number of partitions; a batch is visible only once its commit
lands; a failed part leaves nothing visible, and the rerun completes the batch."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from support import query, snapshot
from test_end_to_end import fingerprint
from totes.contracts.config import TablePlan
from totes.contracts.errors import StorageUnavailable
from totes.contracts.partitions import Partition
from totes.ingest.extract import ingest_table
from totes.local.runner import Resources, run_pipeline
from totes.utils.footers import batch_files, read_footer, read_high_watermark
from totes.utils.lake import Lake
from totes.utils.postgres_reader import PostgresReader, partition_predicate


def plan(**settings) -> TablePlan:
    return TablePlan(table="sales_order", primary_key="sales_order_id", **settings)


def rows_of(lake: Lake) -> Counter:
    """Every row version the lake's sales_order batches hold (through their parts)."""
    found = Counter()
    for key in lake.keys_after("sales_order", None):
        for file in batch_files(lake, key):
            rows = lake.read_table(file)
            found.update(zip(rows["sales_order_id"].to_pylist(),
                             rows["last_updated"].to_pylist(),
                             rows["units_sold"].to_pylist()))
    return found


def change_orders(source, first: int, count: int, at: str) -> None:
    query(source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
          "CAST(:at AS timestamp) WHERE sales_order_id BETWEEN :a AND :b", at=at, a=first,
          b=first + count - 1)


@pytest.mark.parametrize("partitions", [2, 3, 7])
def test_the_parts_hold_exactly_what_one_read_holds_in_every_mode(seeded_source, tmp_path,
                                                                  partitions):
    one, parted = Lake(str(tmp_path / "one")), Lake(str(tmp_path / "parted"))
    split = {"partition_column": "sales_order_id", "num_partitions": partitions}
    steps = [("incremental", {}), ("change", (100, 40, "2024-11-16")),
             ("incremental", {}), ("reingest", {}), ("change", (5000, 10, "2024-11-17")),
             ("backfill", {"backfill_from": "2024-11-16", "backfill_to": "2024-11-17"}),
             ("incremental", {})]
    for mode, settings in steps:
        if mode == "change":
            change_orders(seeded_source, *settings)
            continue
        whole = ingest_table(plan(mode=mode, **settings), seeded_source, one)
        cut = ingest_table(plan(mode=mode, **settings, **split), seeded_source, parted)
        assert (cut.rows, cut.high_watermark) == (whole.rows, whole.high_watermark), mode
        if cut.key:
            footer = read_footer(parted, cut.key)
            assert footer.mode == mode and len(footer.parts) <= partitions
            assert parted.metadata(cut.key).num_rows == 0  # the commit holds no row
    assert rows_of(parted) == rows_of(one)
    assert read_high_watermark(parted, "sales_order") == read_high_watermark(one,
                                                                             "sales_order")


def test_a_full_snapshot_in_parts_and_a_timestamp_partition_column(seeded_source, tmp_path):
    one, parted = Lake(str(tmp_path / "one")), Lake(str(tmp_path / "parted"))
    for lake, settings in ((one, {}), (parted, {"partition_column": "created_at",
                                                "num_partitions": 4})):
        first = ingest_table(plan(extract_type="full", **settings), seeded_source, lake)
        assert first.rows == snapshot("sales_order").num_rows
    assert rows_of(parted) == rows_of(one)
    query(seeded_source, "DELETE FROM sales_order WHERE sales_order_id = 3")
    again = ingest_table(plan(extract_type="full", partition_column="created_at",
                              num_partitions=4), seeded_source, parted)
    assert again.vanished_rows == 1 and len(again.parts) == 4


def test_more_partitions_than_rows_and_empty_partitions(empty_source, tmp_path):
    query(empty_source, "CREATE TABLE few (few_id int PRIMARY KEY, part int, "
                        "last_updated timestamp(3) NOT NULL)")
    query(empty_source, "INSERT INTO few VALUES (1, NULL, '2024-01-01'), (2, 5, '2024-01-02'),"
                        " (3, 500, '2024-01-03')")
    lake = Lake(str(tmp_path))
    few = TablePlan(table="few", primary_key="few_id", partition_column="part",
                    num_partitions=40, lower_bound="1", upper_bound="10")
    result = ingest_table(few, empty_source, lake)
    # NULL in the first partition, 5 in [5, 6), 500 in the last; 37 partitions are empty.
    assert result.rows == 3 and [p["rows"] for p in result.parts] == [1, 1, 1]
    assert [p["key"][-27:] for p in result.parts] == [
        "/part-00001-of-00040.parquet"[-27:], "/part-00005-of-00040.parquet"[-27:],
        "/part-00040-of-00040.parquet"[-27:]]
    ids = [i for file in batch_files(lake, result.key)
           for i in lake.read_table(file)["few_id"].to_pylist()]
    assert sorted(ids) == [1, 2, 3]
    schema = lake.metadata(result.parts[0]["key"]).schema.to_arrow_schema()
    conn = empty_source.connect()
    try:
        reader = PostgresReader()
        parts = reader.partitions(conn, few, schema)
        assert [(p.lower, p.upper) for p in parts[:2]] == [(None, "2"), ("2", "3")]
        assert parts[-1].upper is None and len(parts) == 40
        assert "IS NULL" in partition_predicate(parts[0], "part", "bigint")[0]
        conn.run("DELETE FROM few")
        assert reader.partitions(conn, few.model_copy(update={"lower_bound": None,
                                                              "upper_bound": None}), schema) == \
            [Partition(0, 1, None, None)]  # an empty table: one read
    finally:
        conn.close()


def test_concurrent_updates_during_a_partitioned_read_lose_and_double_nothing(seeded_source,
                                                                              tmp_path):
    lake = Lake(str(tmp_path))
    split = plan(partition_column="sales_order_id", num_partitions=4)
    stop = threading.Event()

    def writer():
        moment = 0
        while not stop.is_set():
            moment += 1
            change_orders(seeded_source, 1 + (moment * 37) % 11000, 5,
                          f"2024-11-16 00:00:{moment % 60:02d}.{moment:06d}"[:26])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ingest_table(split, seeded_source, lake)
    finally:
        stop.set()
        thread.join()
    ingest_table(split, seeded_source, lake)
    ingest_table(split, seeded_source, lake)
    versions = Counter((i, t) for i, t, _ in rows_of(lake).elements())
    assert max(versions.values()) == 1  # no version twice
    current = {(i, t) for i, t in query(seeded_source, "SELECT sales_order_id, last_updated "
                                                       "FROM sales_order")}
    assert current <= set(versions)  # every current version landed


def test_a_failed_part_leaves_nothing_visible_and_the_rerun_completes(seeded_source, tmp_path,
                                                                      monkeypatch):
    lake = Lake(str(tmp_path))
    split = plan(partition_column="sales_order_id", num_partitions=3)
    publish = Lake.publish

    def flaky(self, staged, key):
        if "part-00002" in key:
            raise StorageUnavailable(f"writing {key}: injected network error")
        return publish(self, staged, key)

    monkeypatch.setattr(Lake, "publish", flaky)
    with pytest.raises(StorageUnavailable, match="part-00002-of-00003.parquet: injected"):
        ingest_table(split, seeded_source, lake)
    assert lake.newest_key("sales_order") is None  # parts may exist, no batch is visible
    monkeypatch.setattr(Lake, "publish", publish)

    again = ingest_table(split, seeded_source, lake)
    assert again.rows == snapshot("sales_order").num_rows
    assert len(lake.keys_after("sales_order", None)) == 1
    assert sum(rows_of(lake).values()) == snapshot("sales_order").num_rows


def test_a_partitioned_table_builds_the_same_warehouse(resources, tmp_path, new_database):
    import yaml

    from support import CONFIG

    document = yaml.safe_load(open(CONFIG))
    document["tables"]["sales_order"] = {"partition_column": "sales_order_id",
                                         "num_partitions": 3}
    document["tables"]["payment"] = {"partition_column": "created_at", "num_partitions": 2}
    path = tmp_path / "parted.yaml"
    path.write_text(yaml.safe_dump(document))
    parted = Resources(resources.source, resources.warehouse, resources.lake,
                       resources.processed, str(path))
    result = run_pipeline(parted)
    assert {r.table: len(r.parts or []) for r in result.ingest if r.parts} == \
        {"sales_order": 3, "payment": 2}
    whole = Resources(resources.source, new_database("wh"), Lake(str(tmp_path / "l2")),
                      Lake(str(tmp_path / "p2")), CONFIG)
    run_pipeline(whole)
    from test_modes import content
    assert content(parted.warehouse) == content(whole.warehouse)
    assert fingerprint(parted.warehouse)["fact_sales_order"][0] == \
        snapshot("sales_order").num_rows
