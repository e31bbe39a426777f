"""Lake storage: key order, newest key, keys after a key; never overwritten, on a local disk
and on S3 (moto's server); every call's errors mapped by what a retry can do."""
import os
from datetime import datetime

import boto3
import pytest

from totes.contracts.errors import ConfigError, LakeError, StorageUnavailable
from totes.utils.lake import Lake, key_time, storage_error


def put(lake, key, data=b"x"):
    lake.put_bytes(key, data)


def test_newest_key_and_keys_after_walk_the_date_hierarchy(tmp_path):
    lake = Lake(str(tmp_path))
    keys = [Lake.key_for("t", datetime(2023, 12, 31, 23, 59, 59, 999000)),
            Lake.key_for("t", datetime(2024, 1, 1)),
            Lake.key_for("t", datetime(2024, 1, 1, 0, 0, 0, 1000)),
            Lake.key_for("t", datetime(2024, 11, 15, 14, 40, 10, 123000))]
    for key in reversed(keys):
        put(lake, key)
    put(lake, "t/2024/11/15/notes.txt")  # not a batch key: ignored
    (tmp_path / "t" / "2025").mkdir()  # an empty folder: ignored

    assert keys[-1] == "t/2024/11/15/144010123000.parquet"
    assert lake.newest_key("t") == keys[-1]
    assert lake.keys_after("t", None) == keys
    assert lake.keys_after("t", keys[0]) == keys[1:]
    assert lake.keys_after("t", keys[2]) == keys[3:]
    assert lake.keys_after("t", keys[-1]) == []
    assert lake.newest_key("other") is None and lake.keys_after("other", None) == []


def test_next_key_never_reuses_or_precedes_a_key(tmp_path):
    lake = Lake(str(tmp_path))
    moment = datetime(2024, 11, 15, 14, 40, 10, 123000)
    first = lake.next_key("t", moment)
    put(lake, first)
    second = lake.next_key("t", moment)
    assert second > first and key_time(second) == datetime(2024, 11, 15, 14, 40, 10, 123001)
    put(lake, second)
    assert lake.next_key("t", datetime(2020, 1, 1)) > second


def test_a_key_is_never_overwritten(tmp_path):
    lake = Lake(str(tmp_path))
    put(lake, "t/2024/01/01/000000000000.parquet", b"first")
    with pytest.raises(LakeError, match="exists; objects are never overwritten"):
        put(lake, "t/2024/01/01/000000000000.parquet", b"second")
    assert lake.read_bytes("t/2024/01/01/000000000000.parquet") == b"first"
    assert not any((tmp_path / ".staging").iterdir())


def test_an_unsupported_uri_is_a_configuration_error():
    with pytest.raises(ConfigError, match="gs://bucket"):
        Lake("gs://bucket/lake")


# ---- S3: conditional creates and the error mapping (moto's server on loopback) -------------
def _publish(lake, key, data):
    with lake.staging_file() as staged:
        with open(staged, "wb") as out:
            out.write(data)
        return lake.publish(staged, key)


@pytest.mark.one_s3_request_at_a_time  # S3's atomic conditional create (see conftest.py)
def test_two_concurrent_publishes_of_one_key_on_s3_one_wins_and_nothing_is_overwritten(s3_lake):
    import threading

    lake = Lake(s3_lake)
    for round_number in range(20):
        key = Lake.key_for("t", datetime(2024, 1, 1, 0, 0, round_number))
        start = threading.Barrier(2)
        outcomes = {}

        def writer(name):
            data = f"{name} {round_number}".encode() * 1000
            start.wait()
            try:
                _publish(lake, key, data)
                outcomes[name] = data
            except LakeError as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [data for data in outcomes.values() if isinstance(data, bytes)]
        losers = [e for e in outcomes.values() if isinstance(e, LakeError)]
        assert len(winners) == 1 and len(losers) == 1, (round_number, outcomes)
        assert "exists; objects are never overwritten" in str(losers[0])
        assert f"s3://lake/ingest/{key}" in str(losers[0])
        assert lake.read_bytes(key) == winners[0]


def test_a_large_file_goes_up_in_parts_and_is_still_never_overwritten(s3_lake, monkeypatch):
    from totes.utils import lake as lake_module

    monkeypatch.setattr(lake_module, "MULTIPART_PART_BYTES", 5 << 20)  # S3's smallest part
    lake = Lake(s3_lake)
    first, second = os.urandom(11 << 20), os.urandom(11 << 20)
    assert _publish(lake, "t/2024/01/01/000000000000.parquet", first) == len(first)
    with pytest.raises(LakeError, match="exists; objects are never overwritten"):
        _publish(lake, "t/2024/01/01/000000000000.parquet", second)
    assert lake.read_bytes("t/2024/01/01/000000000000.parquet") == first
    s3 = boto3.client("s3")
    assert s3.list_multipart_uploads(Bucket="lake").get("Uploads", []) == []  # aborted


def test_a_store_that_cannot_be_reached_is_transient_for_every_call(s3_lake, s3_server):
    lake = Lake(s3_lake)
    key = "t/2024/01/01/000000000000.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    with lake.staging_file() as staged:
        pq.write_table(pa.table({"x": [1]}), staged)
        lake.publish(staged, key)
    assert lake.metadata(key).num_rows == 1
    s3_server.stop()  # a network blip: nothing answers on the endpoint any more

    calls = {"open a Parquet file": lambda: lake.metadata(key),
             "read an object": lambda: lake.read_bytes(key),
             "list keys": lambda: lake.newest_key("t"),
             "write an object": lambda: _publish(lake, "t/2024/01/02/000000000000.parquet",
                                                 b"x")}
    for what, call in calls.items():
        with pytest.raises(StorageUnavailable) as error:
            call()
        assert error.value.retryable, what
        assert "s3://lake/ingest/t" in str(error.value), what


def test_a_missing_or_corrupt_object_is_terminal_and_named(tmp_path):
    lake = Lake(str(tmp_path))
    with pytest.raises(LakeError, match="t/2024/01/01/000000000000.parquet as Parquet: no such"):
        lake.metadata("t/2024/01/01/000000000000.parquet")
    put(lake, "t/2024/01/01/000000000000.parquet", b"not parquet at all")
    with pytest.raises(LakeError, match="as Parquet: .*magic bytes") as error:
        lake.metadata("t/2024/01/01/000000000000.parquet")
    assert not error.value.retryable
    with pytest.raises(LakeError, match="is not a batch key"):
        key_time("t/notes.txt")


def test_the_error_mapping_follows_what_a_retry_can_do():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code, status):
        return ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    cases = {
        client_error("SlowDown", 503): StorageUnavailable,
        client_error("InternalError", 500): StorageUnavailable,
        EndpointConnectionError(endpoint_url="http://s3"): StorageUnavailable,
        OSError("AWS Error NETWORK_CONNECTION during GetObject"): StorageUnavailable,
        client_error("AccessDenied", 403): LakeError,
        client_error("NoSuchBucket", 404): LakeError,
        OSError("AWS Error ACCESS_DENIED during HeadObject"): LakeError,
        FileNotFoundError("gone"): LakeError,
    }
    for exc, kind in cases.items():
        assert type(storage_error(exc, "reading s3://lake/x")) is kind, exc
    bug = TypeError("a bug")
    assert storage_error(bug, "reading") is bug  # not a storage error: unchanged


def test_parquet_files_use_a_dictionary_for_text_columns_only(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from totes.utils.lake import parquet_writer

    rows = pa.table({"id": pa.array(range(50_000), pa.int32()),
                     "amount": pa.array([i / 100 for i in range(50_000)], pa.float64()),
                     "code": pa.array(["GBP", "USD", "EUR", "GBP"] * 12_500)})
    path = str(tmp_path / "rows.parquet")
    with parquet_writer(path, rows.schema) as writer:
        writer.write_table(rows)
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(group.num_columns)}
    assert "RLE_DICTIONARY" in encodings["code"]
    assert "RLE_DICTIONARY" not in encodings["id"] and "RLE_DICTIONARY" not in \
        encodings["amount"]
    assert group.column(0).compression == "ZSTD"
    assert pq.read_table(path).equals(rows)


def test_streaming_a_file_holds_one_row_group_not_the_whole_file(tmp_path):
    """iter_batches, which transform and load stream every fact through, holds one row
    group at a time: its Arrow memory does not grow with the file (one pyarrow reader over
    the whole file pre-buffers and keeps every row group, about the file's size)."""
    import random

    import pyarrow as pa

    from totes.utils.lake import parquet_writer

    lake = Lake(str(tmp_path))
    key = "t/2024/11/15/144010123000.parquet"
    generator = random.Random(7)  # incompressible values: the file is as large as its rows
    schema = pa.schema([("id", pa.int64()), ("value", pa.int64())])
    groups, rows_per_group = 40, 20_000
    with parquet_writer(str(tmp_path / "staged.parquet"), schema) as writer:
        for group in range(groups):
            start = group * rows_per_group
            writer.write_table(pa.table({
                "id": pa.array(range(start, start + rows_per_group), pa.int64()),
                "value": pa.array([generator.getrandbits(62) for _ in range(rows_per_group)],
                                  pa.int64())}, schema=schema))
    lake.put_bytes(key, (tmp_path / "staged.parquet").read_bytes())
    size = (tmp_path / "staged.parquet").stat().st_size
    assert size > 5_000_000

    pool = pa.default_memory_pool()
    before, peak, sizes = pool.bytes_allocated(), 0, []
    for batch in lake.iter_batches(key, 65_536):
        peak = max(peak, pool.bytes_allocated() - before)
        sizes.append(batch.num_rows)
        del batch
    assert peak < size / 4, f"{peak:,} bytes of Arrow memory to stream a {size:,}-byte file"
    assert sum(sizes) == groups * rows_per_group
    assert max(sizes) == rows_per_group  # no batch spans two row groups


def test_removing_a_scratch_folder_whose_objects_were_deleted_is_not_an_error(s3_lake):
    """The Spark transform deletes its part files, then removes its run's scratch folder:
    on a versioned bucket the folder's keys are delete markers by then, and the folder is
    gone, which removing it again must accept (``remove_folder``: a key already gone is not
    an error)."""
    import boto3

    boto3.client("s3").put_bucket_versioning(
        Bucket="lake", VersioningConfiguration={"Status": "Enabled"})
    lake = Lake(s3_lake)
    lake.put_bytes("_spark/run-1/fact_payment/00000-a.parquet", b"part")
    lake.put_bytes("_spark/run-1/fact_payment/00001-b.parquet", b"part")
    lake.delete("_spark/run-1/fact_payment/00000-a.parquet")
    lake.delete("_spark/run-1/fact_payment/00001-b.parquet")
    lake.put_bytes("_spark/results/run-1.json", b"{}")

    lake.remove_folder("_spark/run-1")
    lake.remove_folder("_spark/run-1")  # the run's next round: already removed
    lake.remove_folder("_spark/run-2")  # never there

    assert not lake.exists("_spark/run-1/fact_payment/00000-a.parquet")
    assert lake.exists("_spark/results/run-1.json")


def test_listing_a_folder_while_another_run_creates_it_finds_it_or_nothing(tmp_path):
    """A run lists a table's folder while another run's first publish creates it (seen in
    three runs started at once): pyarrow's local listing raised FileNotFoundError for a
    folder made between its opening and its existence check. Raced 3,000 times here."""
    import threading

    lake = Lake(str(tmp_path))
    for attempt in range(3000):
        table = f"t{attempt}"
        maker = threading.Thread(target=os.makedirs, args=(tmp_path / table / "2024",))
        maker.start()
        try:
            assert lake.keys_after(table, None) == []  # LakeError: no such object, before
        finally:
            maker.join()
