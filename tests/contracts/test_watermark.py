"""The lake's watermark contract: footer round trip, the newest batch's high watermark,
malformed footers, and the key's moment."""
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from totes.contracts.errors import LakeError
from totes.contracts.watermark import HIGH_WATERMARK_KEY, Watermark, footer_metadata
from totes.utils.footers import read_footer, read_high_watermark
from totes.utils.lake import Lake


def write_batch(lake: Lake, key: str, metadata: dict) -> None:
    table = pa.table({"id": [1, 2]}).replace_schema_metadata(metadata)
    with lake.staging_file() as staged:
        pq.write_table(table, staged)
        lake.publish(staged, key)


def test_the_footer_round_trips_high_and_low(tmp_path):
    lake = Lake(str(tmp_path))
    low = Watermark(timestamp="2024-11-01 00:00:00.000000", primary_key=7)
    high = Watermark(timestamp="2024-11-15 14:40:10.123000", primary_key=11187)
    write_batch(lake, "sales_order/2024/11/01/000000000000.parquet", footer_metadata(low, None))
    write_batch(lake, "sales_order/2024/11/15/144010123000.parquet", footer_metadata(high, low))

    newer = read_footer(lake, "sales_order/2024/11/15/144010123000.parquet")
    assert (newer.high, newer.low, newer.mode, newer.range) == (high, low, "incremental", None)
    older = read_footer(lake, "sales_order/2024/11/01/000000000000.parquet")
    assert (older.high, older.low) == (low, None)
    assert read_high_watermark(lake, "sales_order") == high  # the newest key's
    assert read_high_watermark(lake, "payment") is None  # no batch: extract everything


def test_the_of_last_row_and_moment_rules():
    batch = pa.record_batch({"payment_id": pa.array([3, 9], pa.int32()),
                             "last_updated": pa.array([datetime(2024, 1, 1),
                                                       datetime(2024, 1, 2, 3, 4, 5, 6)],
                                                      pa.timestamp("us"))})
    mark = Watermark.of_last_row(batch, "last_updated", "payment_id")
    assert mark == Watermark(timestamp="2024-01-02 03:04:05.000006", primary_key=9)
    assert mark.moment() == datetime(2024, 1, 2, 3, 4, 5, 6)
    with_offset = Watermark(timestamp="2024-01-02 05:04:05.000006+02:00", primary_key=9)
    assert with_offset.moment() == datetime(2024, 1, 2, 3, 4, 5, 6)  # named in UTC
    assert footer_metadata(mark, None)[HIGH_WATERMARK_KEY] == \
        '{"timestamp":"2024-01-02 03:04:05.000006","primary_key":9}'


@pytest.mark.parametrize("metadata, message", [
    ({}, "has no totes.high_watermark metadata; it was not written by ingest"),
    ({b"totes.high_watermark": b"{\"timestamp\": 1}"}, "has a malformed watermark"),
    ({b"totes.high_watermark": b"not json"}, "has a malformed watermark"),
])
def test_a_file_without_a_proper_watermark_is_named(tmp_path, metadata, message):
    lake = Lake(str(tmp_path))
    write_batch(lake, "t/2024/01/01/000000000000.parquet", metadata)
    with pytest.raises(LakeError, match=message) as error:
        read_high_watermark(lake, "t")
    assert "t/2024/01/01/000000000000.parquet" in str(error.value)
