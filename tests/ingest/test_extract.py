"""Ingest on a real PostgreSQL: streaming, watermarks, S3 (moto server) against local."""
from __future__ import annotations

import os

import boto3
import pyarrow as pa
import pytest

from support import query, snapshot
from totes.contracts.config import TablePlan
from totes.contracts.errors import SourceSchemaError
from totes.contracts.watermark import HIGH_WATERMARK_KEY
from totes.ingest.extract import ingest_table
from totes.utils.footers import read_high_watermark
from totes.utils.lake import Lake


def make_big_table(source, rows: int) -> None:
    conn = source.connect()
    try:
        conn.run("CREATE TABLE big (big_id int PRIMARY KEY, label text, amount numeric(10,2), "
                 "last_updated timestamp(3) NOT NULL)")
        conn.run("INSERT INTO big SELECT i, repeat('x', 40) || i, i / 100.0, "
                 "timestamp '2024-01-01' + i * interval '1 second' "
                 "FROM generate_series(1, :n) i", n=rows)
    finally:
        conn.close()


def test_a_large_table_streams_in_row_groups_with_bounded_memory(empty_source, tmp_path):
    make_big_table(empty_source, 300_000)
    small = ingest_table(TablePlan(table="big", primary_key="big_id", record_batch_bytes=1 << 18),
                         empty_source, Lake(str(tmp_path / "small")))
    whole = ingest_table(TablePlan(table="big", primary_key="big_id", record_batch_bytes=1 << 28),
                         empty_source, Lake(str(tmp_path / "whole")))

    assert small.rows == whole.rows == 300_000
    assert small.row_groups >= 40 and whole.row_groups == 1
    small_lake = Lake(str(tmp_path / "small"))
    assert small_lake.metadata(small.key).num_row_groups == small.row_groups
    # Memory follows the batch, not the table: a fraction of what one batch of everything takes.
    assert small.peak_arrow_bytes * 5 < whole.peak_arrow_bytes
    assert small.peak_arrow_bytes < 16 << 20
    assert small_lake.read_table(small.key).equals(
        Lake(str(tmp_path / "whole")).read_table(whole.key))


@pytest.mark.parametrize("reader", ["adbc", "pg8000"])
def test_a_large_extract_lands_as_bounded_batches_each_with_its_watermark(
        empty_source, tmp_path, monkeypatch, reader):
    monkeypatch.setenv("TOTES_BULK_READER", reader)
    make_big_table(empty_source, 300_000)
    plan = TablePlan(table="big", primary_key="big_id", record_batch_bytes=1 << 18,
                     max_batch_rows=100_000)
    lake = Lake(str(tmp_path / "bounded"))
    result = ingest_table(plan, empty_source, lake)

    assert result.rows == 300_000 and len(result.keys) >= 3 and result.key == result.keys[-1]
    assert lake.keys_after("big", None) == result.keys
    files = [lake.metadata(key) for key in result.keys]
    block = max(f.row_group(i).num_rows for f in files for i in range(f.num_row_groups))
    assert all(f.num_rows <= 100_000 + block for f in files)
    assert sum(f.num_rows for f in files) == result.rows
    assert result.bytes == sum(os.path.getsize(lake.path(key)) for key in result.keys)
    # Each batch starts where the one before ends: its low watermark is that one's high.
    lows = [read_footer_watermark(lake, key, b"totes.low_watermark") for key in result.keys]
    highs = [read_footer_watermark(lake, key, HIGH_WATERMARK_KEY) for key in result.keys]
    assert lows[0] is None and lows[1:] == highs[:-1]
    assert highs[-1] == {"timestamp": "2024-01-04 11:20:00.000000",
                         "primary_key": 300_000}
    ids = pa.concat_arrays([lake.read_table(k)["big_id"].combine_chunks() for k in result.keys])
    assert ids.to_pylist() == list(range(1, 300_001))  # every row once, in watermark order
    assert ingest_table(plan, empty_source, lake).rows == 0


def test_an_extract_stopped_between_bounded_batches_resumes_after_the_last(
        empty_source, tmp_path, monkeypatch):
    from totes.contracts.errors import StorageUnavailable

    make_big_table(empty_source, 300_000)
    plan = TablePlan(table="big", primary_key="big_id", record_batch_bytes=1 << 18,
                     max_batch_rows=100_000)
    lake = Lake(str(tmp_path / "lake"))
    publish, published = lake.publish, []

    def publish_twice(staged, key):  # the disk or the bucket fails at the third batch
        if len(published) == 2:
            raise StorageUnavailable(f"publishing {key}: the bucket is unreachable")
        published.append(key)
        return publish(staged, key)

    monkeypatch.setattr(lake, "publish", publish_twice)
    with pytest.raises(StorageUnavailable):
        ingest_table(plan, empty_source, lake)
    assert lake.keys_after("big", None) == published  # the two batches stand
    monkeypatch.setattr(lake, "publish", publish)
    rest = ingest_table(plan, empty_source, lake)

    assert rest.low_watermark.primary_key == \
        lake.read_table(published[-1])["big_id"][-1].as_py()
    ids = pa.concat_arrays([lake.read_table(k)["big_id"].combine_chunks()
                            for k in lake.keys_after("big", None)])
    assert ids.to_pylist() == list(range(1, 300_001))  # none lost, none twice


def read_footer_watermark(lake: Lake, key: str, name: bytes):
    import json

    found = lake.metadata(key).metadata[name]
    return json.loads(found)


def test_parquet_types_follow_the_source(seeded_source, tmp_path):
    lake = Lake(str(tmp_path))
    result = ingest_table(TablePlan(table="transaction", primary_key="transaction_id"),
                          seeded_source, lake)
    schema = lake.metadata(result.key).schema.to_arrow_schema()
    assert schema.field("sales_order_id").type == pa.int32()
    assert schema.field("created_at").type == pa.timestamp("ms")
    payment = ingest_table(TablePlan(table="payment", primary_key="payment_id"),
                           seeded_source, lake)
    payment_schema = lake.metadata(payment.key).schema.to_arrow_schema()
    assert payment_schema.field("payment_amount").type == pa.decimal128(10, 2)
    assert payment_schema.field("payment_date").type == pa.string()
    assert payment_schema.field("paid").type == pa.bool_()


def test_the_high_watermark_is_the_last_row_and_names_the_key(seeded_source, tmp_path):
    lake = Lake(str(tmp_path))
    result = ingest_table(TablePlan(table="payment", primary_key="payment_id"),
                          seeded_source, lake)
    rows = snapshot("payment")
    newest = max(zip(rows["last_updated"].to_pylist(), rows["payment_id"].to_pylist()))
    assert result.high_watermark.model_dump() == {
        "timestamp": newest[0].isoformat(sep=" ", timespec="microseconds"),
        "primary_key": newest[1]}
    assert result.key == newest[0].strftime("payment/%Y/%m/%d/%H%M%S%f.parquet")
    assert read_high_watermark(lake, "payment") == result.high_watermark
    assert HIGH_WATERMARK_KEY in lake.metadata(result.key).metadata


def test_rows_after_the_watermark_are_the_next_batch(seeded_source, tmp_path):
    lake = Lake(str(tmp_path))
    plan = TablePlan(table="currency", primary_key="currency_id")
    first = ingest_table(plan, seeded_source, lake)
    high = first.high_watermark.timestamp
    # Same timestamp as the high watermark, larger key: must come in the next batch, once.
    query(seeded_source, "INSERT INTO currency (currency_code, created_at, last_updated) "
          "VALUES ('JPY', CAST(:t AS timestamp), CAST(:t AS timestamp))", t=high)
    second = ingest_table(plan, seeded_source, lake)
    third = ingest_table(plan, seeded_source, lake)

    assert second.rows == 1 and third.rows == 0 and third.key is None
    assert second.key > first.key  # same data time, yet a new key after the first
    codes = lake.read_table(second.key)["currency_code"].to_pylist()
    assert codes == ["JPY"]


def test_a_missing_table_is_named(empty_source, tmp_path):
    with pytest.raises(SourceSchemaError, match="table 'sales_order' does not exist"):
        ingest_table(TablePlan(table="sales_order", primary_key="sales_order_id"),
                     empty_source, Lake(str(tmp_path)))


def test_the_s3_lake_and_the_local_lake_get_identical_files(seeded_source, tmp_path, s3_lake):
    local, remote = Lake(str(tmp_path)), Lake(s3_lake)
    for table in ("address", "sales_order", "payment"):
        plan = TablePlan(table=table, primary_key=f"{table}_id")
        in_local = ingest_table(plan, seeded_source, local)
        in_s3 = ingest_table(plan, seeded_source, remote)
        assert in_local.key == in_s3.key
        assert remote.read_bytes(in_s3.key) == local.read_bytes(in_local.key)
        assert ingest_table(plan, seeded_source, remote).key is None

    s3_keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket="lake")["Contents"])
    local_keys = sorted(os.path.relpath(os.path.join(d, f), local.root)
                        for d, _, files in os.walk(local.root) if ".staging" not in d
                        for f in files)
    assert s3_keys == ["ingest/" + k for k in local_keys]


def test_plan_advises_an_index_for_a_large_table_without_one(empty_source):
    from totes.ingest.plan import plan
    from totes.contracts.config import parse_config

    make_big_table(empty_source, 150_000)
    query(empty_source, "ANALYZE big")
    config = parse_config({"tables": {"big": {"primary_key": "big_id"}}})
    [_, advice] = plan(config, empty_source).warnings  # the first: no rule reads big
    assert advice.startswith("big holds about 150,000 rows and no index starts with "
                             "last_updated")
    assert advice.endswith('CREATE INDEX CONCURRENTLY ON "big" ("last_updated", "big_id");')
    query(empty_source, 'CREATE INDEX ON "big" ("last_updated", "big_id")')
    assert [w for w in plan(config, empty_source).warnings if "no index" in w] == []
