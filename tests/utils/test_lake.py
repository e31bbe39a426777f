"""Lake keys: order, newest key, keys after a key, never overwritten."""
from datetime import datetime

import pytest

from totes.utils.errors import ConfigError, LakeError
from totes.utils.lake import Lake, key_time


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
