"""A damaged processed file: load (or the next transform) fails naming it and the command
that rebuilds its batch from the lake; ``totes transform --rebuild`` writes the batch's files
again from the same inputs, checked against the manifest's counts, and the pipeline goes on
with every version once."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from support import query, snapshot, url_of
from totes.cli import app
from totes.contracts.errors import LakeError
from totes.local.runner import retry_quarantine, run_pipeline
from totes.reconcile.reconcile import reconcile
from totes.transform.rebuild import rebuild
from totes.utils.manifests import latest_manifest, read_repairs


def _truncate(resources, key: str) -> None:
    path = resources.processed.path(key)
    with open(path, "rb") as whole:
        head = whole.read(100)
    with open(path, "wb") as cut:  # as a disk that filled up mid-copy leaves it
        cut.write(head)


@pytest.fixture
def cli(resources, monkeypatch, tmp_path):
    monkeypatch.setenv("TOTES_SOURCE_URL", url_of(resources.source))
    monkeypatch.setenv("TOTES_WAREHOUSE_URL", url_of(resources.warehouse))
    monkeypatch.setenv("TOTES_LAKE", resources.lake.uri)
    monkeypatch.setenv("TOTES_PROCESSED", resources.processed.uri)
    monkeypatch.setenv("TOTES_HOME", str(tmp_path / "home"))
    return lambda *arguments: CliRunner().invoke(app, list(arguments))


def test_a_truncated_fact_file_is_rebuilt_from_the_lake_and_loads_once(resources, cli):
    run_pipeline(resources)
    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated "
                            "= now() WHERE sales_order_id IN (20, 21)")
    query(resources.source, "UPDATE staff SET last_name = 'Renamed', last_updated = now() "
                            "WHERE staff_id = 3")
    assert cli("ingest").exit_code == 0
    assert cli("transform").exit_code == 0
    batch, manifest = latest_manifest(resources.processed)
    damaged = manifest.output("fact_sales_order").key
    _truncate(resources, damaged)

    failed = cli("load")

    assert failed.exit_code == 1
    said = " ".join(failed.output.split())
    assert f"error: LakeError: reading {resources.processed.describe(damaged)} as Parquet" \
        in said
    assert f"`totes transform --rebuild {batch}` writes its files again" in said

    rebuilt = cli("transform", "--rebuild", damaged, "--json")  # the file the error named

    assert rebuilt.exit_code == 0, rebuilt.output
    result = json.loads(rebuilt.output)
    assert result["batch"] == batch and result["rows"]["fact_sales_order"] == 2
    assert set(result["replaced"]) == {o.key for o in manifest.outputs} | {
        manifest.state["staff"]}
    [repair] = read_repairs(resources.processed)
    assert repair.batch == batch and repair.replaced[damaged] == result["replaced"][damaged]

    loaded = cli("load", "--json")
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.output)["batches"] == [batch]
    assert query(resources.warehouse, "SELECT sales_order_id, count(*) FROM fact_sales_order "
                 "WHERE sales_order_id IN (20, 21) GROUP BY 1 ORDER BY 1") == [[20, 2], [21, 2]]
    assert query(resources.warehouse, "SELECT last_name FROM dim_staff WHERE staff_id = 3") \
        == [["Renamed"]]
    assert reconcile(resources.source, resources.warehouse).equal
    assert cli("load", "--json").exit_code == 0  # nothing left: the batch loaded once


def test_a_damaged_state_file_stops_the_next_transform_until_its_batch_is_rebuilt(
        resources, cli):
    run_pipeline(resources)
    _, manifest = latest_manifest(resources.processed)
    damaged = manifest.state["department"]
    _truncate(resources, damaged)
    query(resources.source, "UPDATE department SET location = 'Leeds', last_updated = now() "
                            "WHERE department_id = (SELECT department_id FROM staff "
                            "WHERE staff_id = 1)")

    failed = cli("run")

    assert failed.exit_code == 1
    said = " ".join(failed.output.split())
    assert f"It is the reference state of the last batch: `totes transform --rebuild " \
           f"{damaged}`" in said

    assert cli("transform", "--rebuild", damaged).exit_code == 0
    again = cli("run")
    assert again.exit_code == 0, again.output
    assert "source and warehouse agree" in again.output
    moved = [i for i, in query(resources.source, "SELECT staff_id FROM staff WHERE "
                               "department_id = (SELECT department_id FROM staff WHERE "
                               "staff_id = 1) ORDER BY 1")]
    assert moved and query(resources.warehouse, "SELECT staff_id, location FROM dim_staff "
                           "WHERE staff_id = ANY(CAST(:ids AS int[])) ORDER BY 1",
                           ids=moved) == [[i, "Leeds"] for i in moved]


def test_a_retry_batch_is_rebuilt_from_its_own_record_of_what_it_retried(resources):
    run_pipeline(resources)
    query(resources.source, "INSERT INTO currency (currency_code, last_updated) VALUES "
                            "('ZZZ', '2024-11-16')")
    run_pipeline(resources)
    retried, _ = retry_quarantine(resources.lake, resources.processed, resources.warehouse)
    assert retried.source_files == 0 and retried.quarantined == {"currency": 1}
    _, manifest = latest_manifest(resources.processed)
    assert list(manifest.retried) == ["currency"]
    _truncate(resources, manifest.quarantine[-1])

    result = rebuild(resources.lake, resources.processed, retried.manifest)

    assert result.rows["_quarantine/currency"] == 1
    _, repaired = latest_manifest(resources.processed)
    assert resources.processed.read_table(repaired.quarantine[-1]).num_rows == 1


def test_a_batch_whose_lake_file_is_gone_is_not_rebuilt(resources):
    run_pipeline(resources)
    batch, manifest = latest_manifest(resources.processed)
    lake_key = manifest.source_files["payment"][0]
    resources.lake.fs.delete_file(resources.lake.path(lake_key))

    with pytest.raises(LakeError, match=f"{lake_key}.*no such object"):
        rebuild(resources.lake, resources.processed, batch)
    assert read_repairs(resources.processed) == []
    assert snapshot("payment").num_rows  # (the snapshot itself is untouched)


def test_a_repair_reaches_the_batches_after_it_and_can_be_repeated(resources):
    """Batch C, committed after batch A's state file was rebuilt, carries A's own key (read
    through the repair), so C can be rebuilt itself, and a second rebuild of A reaches C."""
    run_pipeline(resources)
    first, manifest = latest_manifest(resources.processed)
    address = manifest.state["address"]
    _truncate(resources, address)
    rebuild(resources.lake, resources.processed, address)
    query(resources.source, "UPDATE department SET location = 'Leeds', last_updated = now() "
                            "WHERE department_id = 1")
    later = run_pipeline(resources)
    raw = json.loads(resources.processed.read_bytes(later.transform.manifest))
    assert raw["state"]["address"] == address and "retried" not in raw

    assert rebuild(resources.lake, resources.processed, later.transform.manifest).replaced
    _, repaired = latest_manifest(resources.processed)
    _truncate(resources, repaired.state["address"])
    again = rebuild(resources.lake, resources.processed, first)
    _, now = latest_manifest(resources.processed)
    assert now.state["address"] == again.replaced[address]
    query(resources.source, "UPDATE staff SET last_name = 'Moved', last_updated = now() "
                            "WHERE staff_id = 2")
    assert run_pipeline(resources).reconcile.equal
