"""The processed area's contract: a manifest commits a batch; keys in batch order; a bad key, a
missing batch or a broken document is named."""
from datetime import datetime

import pytest

from totes.contracts.errors import ConfigError, LakeError
from totes.contracts.manifest import Manifest
from totes.contracts.stage_results import TableOutput
from totes.utils.lake import Lake
from totes.utils.manifests import commit, latest_manifest, manifests_after, read_manifest


def manifest(n: int) -> Manifest:
    return Manifest(batch_time=f"2024-11-0{n} 00:00:00.000000",
                    lake={"payment": f"payment/2024/11/0{n}/000000000000.parquet"},
                    state={}, source_files={"payment": [f"payment/2024/11/0{n}/000000000000."
                                                        "parquet"]},
                    outputs=[TableOutput(table="fact_payment", rows=n,
                                         key=f"fact_payment/2024/11/0{n}/000000000000.parquet")])


def test_commits_read_back_in_batch_order(tmp_path):
    processed = Lake(str(tmp_path))
    assert latest_manifest(processed) == (None, None)
    keys = [commit(processed, manifest(n), datetime(2024, 11, n)) for n in (1, 2, 3)]

    assert keys == sorted(keys) and keys[0] == "_manifests/2024/11/01/000000000000.json"
    assert read_manifest(processed, keys[1]) == manifest(2)
    assert latest_manifest(processed) == (keys[2], manifest(3))
    assert manifests_after(processed, None) == keys
    assert manifests_after(processed, keys[0]) == keys[1:]
    assert manifests_after(processed, keys[2]) == []
    assert manifest(2).output("fact_payment").rows == 2
    assert manifest(2).output("dim_date") is None
    # A batch committed with an older data time still gets a key after the newest.
    later = commit(processed, manifest(1), datetime(2024, 11, 1))
    assert later > keys[2] and manifests_after(processed, keys[2]) == [later]


def test_a_bad_key_a_missing_batch_and_a_broken_manifest_are_named(tmp_path):
    processed = Lake(str(tmp_path))
    with pytest.raises(ConfigError, match="'fact_payment/x.parquet' is not a batch manifest key"):
        read_manifest(processed, "fact_payment/x.parquet")
    with pytest.raises(LakeError, match="no batch _manifests/2024/01/01/000000000000.json in"):
        read_manifest(processed, "_manifests/2024/01/01/000000000000.json")
    processed.put_bytes("_manifests/2024/01/02/000000000000.json", b'{"batch_time": "x"}')
    with pytest.raises(LakeError, match="is not a batch manifest: lake: field required"):
        read_manifest(processed, "_manifests/2024/01/02/000000000000.json")
    processed.put_bytes("_manifests/2024/01/03/000000000000.json", b"{not json")
    with pytest.raises(LakeError, match="is not a batch manifest"):
        read_manifest(processed, "_manifests/2024/01/03/000000000000.json")
