"""Change data capture from PostgreSQL's log (extract_type: cdc): every committed version and
every delete reaches the lake once and the warehouse keeps them, on the real snapshot."""
from __future__ import annotations

import pyarrow as pa

from support import query, snapshot, versions_beyond
from totes.contracts.cdc import LSN, OPERATION
from totes.local.runner import run_pipeline
from totes.reconcile.reconcile import reconcile
from totes.utils.footers import batch_files


def lake_rows(lake, table: str) -> pa.Table:
    files = [f for key in lake.keys_after(table, None) for f in batch_files(lake, key)]
    return pa.concat_tables([lake.read_table(f) for f in files], promote_options="default")


def test_intermediate_versions_and_deletes_reach_the_warehouse_once(cdc_resources):
    resources = cdc_resources
    first = run_pipeline(resources)
    copied = {r.table: r for r in first.ingest if r.mode == "cdc_snapshot"}
    assert set(copied) == {"sales_order", "purchase_order", "payment", "transaction"}
    assert copied["sales_order"].rows == snapshot("sales_order").num_rows
    orders = snapshot("sales_order")["sales_order_id"].to_pylist()
    changed, gone = orders[0], orders[1]
    for units in (101, 102, 103):  # three commits, one last_updated: three versions
        query(resources.source, "UPDATE sales_order SET units_sold = :u WHERE "
              "sales_order_id = :o", u=units, o=changed)
    query(resources.source, "DELETE FROM payment WHERE payment_id = 1")
    query(resources.source, "DELETE FROM sales_order WHERE sales_order_id = :o", o=gone)

    second = run_pipeline(resources)

    by_table = {r.table: r for r in second.ingest if r.mode == "cdc"}
    assert by_table["sales_order"].changes == {"insert": 0, "update": 3, "delete": 1}
    assert by_table["payment"].changes == {"insert": 0, "update": 0, "delete": 1}
    # The delete of the sales order set its transaction's sales_order_id to NULL, without
    # moving last_updated: a cursor never sees that; the log does.
    assert by_table["transaction"].changes == {"insert": 0, "update": 1, "delete": 0}
    rows = lake_rows(resources.lake, "sales_order")
    stream = rows.filter(pa.compute.is_valid(rows[LSN]))
    assert sorted(stream[OPERATION].to_pylist()) == ["delete", "update", "update", "update"]
    units = query(resources.warehouse, "SELECT units_sold, is_deleted FROM fact_sales_order "
                  "WHERE sales_order_id = :o ORDER BY source_lsn", o=changed)
    assert units[-3:] == [[101, False], [102, False], [103, False]]
    deleted = query(resources.warehouse, "SELECT is_deleted, units_sold FROM fact_sales_order "
                    "WHERE sales_order_id = :o ORDER BY source_lsn", o=gone)
    original = snapshot("sales_order").filter(
        pa.compute.equal(snapshot("sales_order")["sales_order_id"], gone))["units_sold"][0]
    assert deleted == [[False, original.as_py()], [True, original.as_py()]]
    current = query(resources.warehouse, "SELECT count(*) FROM fact_sales_order_current "
                    "WHERE sales_order_id IN (:a, :b)", a=changed, b=gone)
    assert current == [[1]]
    assert query(resources.warehouse, "SELECT units_sold FROM fact_sales_order_current "
                 "WHERE sales_order_id = :o", o=changed) == [[103]]
    assert reconcile(resources.source, resources.warehouse).equal
    from totes.local.report import HEADLINES, statement  # the report counts what the source holds
    counted = dict(query(resources.warehouse, statement(HEADLINES["orders"])))
    assert counted["sales"] == snapshot("sales_order").num_rows - 1

    third = run_pipeline(resources)  # nothing new: nothing read twice
    assert all(r.rows == 0 for r in third.ingest)
    assert third.capture is not None and third.capture.position is not None


def stream_versions(lake, table: str) -> list:
    """``(id, lsn)`` of every version of ``table`` read from the log (a list: twice shows)."""
    rows = lake_rows(lake, table)
    if LSN not in rows.column_names:
        return []
    rows = rows.filter(pa.compute.is_valid(rows[LSN]))
    return list(zip(rows[f"{table}_id"].to_pylist(), rows[LSN].to_pylist()))


def copied_values(lake, table: str, key: int, column: str) -> list:
    """The values of ``column`` of row ``key`` in the table's initial copies."""
    rows = lake_rows(lake, table)
    if LSN in rows.column_names:
        rows = rows.filter(pa.compute.is_null(rows[LSN]))
    return rows.filter(pa.compute.equal(rows[f"{table}_id"], key))[column].to_pylist()


def test_a_change_while_the_initial_copy_runs_lands_once_in_its_latest_version(
        cdc_resources, monkeypatch):
    from totes.ingest import capture as capture_module

    resources = cdc_resources
    before, during = 3, 4  # payments changed before the copy's snapshot, and during the copy
    query(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id = :p",
          p=before)  # committed after the slot exists, before the copy: in both
    real = capture_module.read_into

    def copy_while_changing(reader, conn, plan, *args, **kwargs):
        if plan.table == "payment":  # the copy's snapshot is taken: this commit is not in it
            query(resources.source, "UPDATE payment SET payment_amount = 42.42 WHERE "
                  "payment_id = :p", p=during)
        return real(reader, conn, plan, *args, **kwargs)

    monkeypatch.setattr(capture_module, "read_into", copy_while_changing)
    run_pipeline(resources)
    monkeypatch.setattr(capture_module, "read_into", real)

    from decimal import Decimal
    streamed = [i for i, _ in stream_versions(resources.lake, "payment")]
    assert streamed == [during]  # the earlier change is in the copy, not read again
    assert copied_values(resources.lake, "payment", during, "payment_amount") != \
        [Decimal("42.42")]
    versions = query(resources.warehouse, "SELECT payment_id, payment_amount, paid FROM "
                     "fact_payment_current WHERE payment_id IN (:a, :b) ORDER BY 1",
                     a=before, b=during)
    source = query(resources.source, "SELECT payment_id, payment_amount, paid FROM payment "
                   "WHERE payment_id IN (:a, :b) ORDER BY 1", a=before, b=during)
    assert versions == source
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment WHERE payment_id = "
                 ":p", p=before) == [[1]]
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_read_is_bounded_and_never_splits_a_transaction(resources, with_cdc):
    resources = with_cdc(resources, tables=("payment",), max_changes_per_run=5)
    run_pipeline(resources)
    query(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id <= 12")
    for payment in (13, 14, 15):
        query(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id = :p",
              p=payment)

    first = run_pipeline(resources)  # the 12-change transaction whole, then it stops
    assert first.capture.changes == 12 and first.capture.transactions == 1
    # Then at most 5 messages a read (a begin, a change, a commit each; and a read's first
    # change of a table is preceded by the table's description): 2, then 1.
    assert [run_pipeline(resources).capture.changes for _ in range(3)] == [2, 1, 0]
    versions = stream_versions(resources.lake, "payment")
    assert sorted(i for i, _ in versions) == list(range(1, 16))
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_read_killed_at_any_step_then_rerun_loses_and_doubles_nothing(
        cdc_resources, monkeypatch):
    from totes.ingest import capture as capture_module
    from totes.utils.lake import Lake

    resources = cdc_resources
    run_pipeline(resources)

    class Killed(Exception):
        pass

    def change(step: int) -> None:
        for payment in (step, step + 100):
            query(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id = :p",
                  p=payment)
        query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1 WHERE "
              "sales_order_id = :o", o=step)

    real_publish, real_position = Lake.publish, capture_module._Capture._commit_position
    published = []

    def publish_once_then_die(self, staged, key):
        if published:
            raise Killed(key)
        published.append(key)
        return real_publish(self, staged, key)

    def position_then_die(self, *args):
        real_position(self, *args)
        raise Killed("after the position record")

    kills = [
        ("after reading", "_publish", lambda *a: (_ for _ in ()).throw(Killed("read"))),
        ("after one table's batch", None, None),
        ("after the position record", "_commit_position", position_then_die),
    ]
    for step, (where, name, replacement) in enumerate(kills, start=1):
        change(step)
        if name is None:
            monkeypatch.setattr(Lake, "publish", publish_once_then_die)
        else:
            monkeypatch.setattr(capture_module._Capture, name, replacement)
        try:
            run_pipeline(resources)
        except Killed:
            pass
        else:
            raise AssertionError(f"the run was not killed {where}")
        monkeypatch.undo()
        published.clear()
        run_pipeline(resources)  # the rerun after the crash

    for table in ("payment", "sales_order"):
        versions = stream_versions(resources.lake, table)
        assert len(versions) == len(set(versions)), f"{table}: a version landed twice"
    payments = sorted(i for i, _ in stream_versions(resources.lake, "payment"))
    assert payments == [1, 2, 3, 101, 102, 103]
    orders = sorted(i for i, _ in stream_versions(resources.lake, "sales_order"))
    assert orders == [1, 2, 3]
    assert reconcile(resources.source, resources.warehouse).equal


def test_three_reads_at_once_read_each_change_once(cdc_resources, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from totes.utils.ledger import SqliteLedger

    resources = replace(cdc_resources, ledger=SqliteLedger(str(tmp_path / "ledger.sqlite3")))
    run_pipeline(resources)
    query(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id <= 20")
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: run_pipeline(resources), range(3)))
    read = [r.capture for r in runs if r.capture and not r.capture.skipped]
    assert 1 <= len(read) <= 3
    run_pipeline(resources)
    versions = stream_versions(resources.lake, "payment")
    assert sorted(i for i, _ in versions) == list(range(1, 21))
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_deleted_dimension_row_stays_marked_and_facts_keep_it(resources, with_cdc):
    resources = with_cdc(resources, tables=("design", "sales_order"))
    (design,), = query(resources.source, "INSERT INTO design (created_at, last_updated, "
                       "design_name, file_location, file_name) VALUES (now(), now(), 'Gone', "
                       "'/x', 'gone.json') RETURNING design_id")
    run_pipeline(resources)
    query(resources.source, "DELETE FROM design WHERE design_id = :d", d=design)
    run_pipeline(resources)
    assert query(resources.warehouse, "SELECT design_name, is_deleted FROM dim_design WHERE "
                 "design_id = :d", d=design) == [["Gone", True]]
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_truncate_stops_its_table_and_a_reingest_takes_it_up_again(cdc_resources):
    import pytest

    from totes.contracts.errors import CaptureStopped

    resources = cdc_resources
    run_pipeline(resources)
    query(resources.source, "UPDATE sales_order SET units_sold = 1 WHERE sales_order_id = 1")
    query(resources.source, "TRUNCATE payment")
    query(resources.source, "UPDATE sales_order SET units_sold = 2 WHERE sales_order_id = 1")
    with pytest.raises(CaptureStopped, match="table payment: the source table was truncated.*"
                                             "totes ingest --table payment --reingest"):
        run_pipeline(resources)
    assert sorted(i for i, _ in stream_versions(resources.lake, "sales_order")) == [1, 1]
    with pytest.raises(CaptureStopped):  # stopped until a person acts
        run_pipeline(resources)
    again = run_pipeline(resources, tables=[{"table": "payment", "mode": "reingest"}])
    [payment] = [r for r in again.ingest if r.table == "payment"]
    assert (payment.mode, payment.rows) == ("cdc_snapshot", 0)
    run_pipeline(resources)  # every table goes on
    assert sorted(i for i, _ in stream_versions(resources.lake, "sales_order")) == [1, 1]


def test_a_source_not_ready_gets_the_message_naming_what_is_missing_and_nothing_is_written(
        resources, with_cdc, tmp_path):
    import warnings
    from dataclasses import replace

    import pytest

    from totes.contracts.errors import CdcNotReady
    from totes.local.seed import seed
    from totes.utils.lake import Lake
    from totes.utils.postgres import Database

    ready = with_cdc(resources)
    # A role without REPLICATION, on a server that has wal_level = logical.
    query(resources.source, "CREATE ROLE etl_plain LOGIN")
    query(resources.source, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO etl_plain")
    plain_role = Database("source", {**resources.source.params, "user": "etl_plain"})
    with pytest.raises(CdcNotReady, match='the role etl_plain may not read a replication slot: '
                                          'ALTER ROLE "etl_plain" REPLICATION'):
        run_pipeline(replace(ready, source=plain_role))
    assert not resources.lake.keys_after("payment", None)

    # A server that runs with the default wal_level (replica), without the slot.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    server = pgserver.get_server(tmp_path / "replica", cleanup_mode=None)
    try:
        source = Database.from_url("source", server.get_uri("postgres"))
        seed(source)
        replica = replace(ready, source=source, lake=Lake(str(tmp_path / "lake2")))
        with pytest.raises(CdcNotReady) as error:
            run_pipeline(replica)
        message = str(error.value)
        assert "wal_level = replica: set wal_level = logical" in message
        assert "rds.logical_replication = 1" in message
        assert "there is no publication totes_cdc: run `totes cdc init`" in message
        assert "there is no replication slot" in message
        assert not replica.lake.keys_after("payment", None)
    finally:
        _stop_server(tmp_path / "replica")


def _stop_server(data_dir) -> None:
    import os

    import pgserver

    pgserver.pg_ctl(["-w", "stop"], pgdata=data_dir,
                    user="pgserver" if os.geteuid() == 0 else None)


def test_a_replayed_week_on_cdc_is_the_polled_warehouse_plus_every_version_and_delete(
        empty_source, new_database, with_cdc, tmp_path):
    """The three facts (and transaction) on cdc and, beside them, a polled pipeline on the
    same source: after a week of real history replayed day by day, with a payment changed
    twice between two runs and a payment deleted, the cdc warehouse holds every version the
    polled one holds, plus exactly the intermediate version and the delete."""
    from datetime import datetime, timedelta

    from support import CONFIG
    from totes.local.runner import Resources
    from totes.local.seed import seed
    from totes.utils.lake import Lake

    start = datetime(2024, 11, 8)
    seed(empty_source, start)
    polled = Resources(empty_source, new_database("wh"), Lake(str(tmp_path / "pl")),
                       Lake(str(tmp_path / "pp")), CONFIG)
    cdc = with_cdc(Resources(empty_source, new_database("wh"), Lake(str(tmp_path / "cl")),
                             Lake(str(tmp_path / "cp")), CONFIG))
    run_pipeline(polled)
    run_pipeline(cdc)
    twice, gone = 5, 6
    for day in range(1, 8):
        seed(empty_source, start + timedelta(days=day), advance=True)
        if day == 3:  # two commits between runs: the first is an intermediate version
            for second in (1, 2):
                query(empty_source, "UPDATE payment SET paid = NOT paid, last_updated = "
                      "(SELECT max(last_updated) FROM payment) + make_interval(secs => :s) "
                      "WHERE payment_id = :p", s=second, p=twice)
        if day == 7:  # the last day (replaying history re-inserts any row deleted earlier)
            query(empty_source, "DELETE FROM payment WHERE payment_id = :p", p=gone)
        run_pipeline(polled)
        run_pipeline(cdc)

    assert versions_beyond(polled, cdc) == {
        "fact_sales_order": [], "fact_purchase_order": [],
        "fact_payment": sorted([(twice, False), (gone, True)])}
    checked = reconcile(cdc.source, cdc.warehouse)
    assert checked.equal, [d for t in checked.tables for d in t.listed]


def test_the_slots_health_shows_in_status_and_a_slot_past_its_limit_warns(
        resources, with_cdc, tmp_path):
    from dataclasses import replace

    from totes.ingest.status import captured
    from totes.local.status import pipeline_status
    from totes.utils.config_file import load_config
    from totes.utils.ledger import SqliteLedger

    cdc = with_cdc(resources, tables=("payment",), retained_wal_alert_bytes=1 << 20)
    cdc = replace(cdc, ledger=SqliteLedger(str(tmp_path / "ledger.sqlite3")))
    run_pipeline(cdc)
    query(cdc.source, "UPDATE payment SET paid = NOT paid")  # 15,836 changes: MBs of WAL
    status = pipeline_status(load_config(cdc.config_path), cdc.ledger, cdc.lake, cdc.processed,
                             cdc.warehouse, cdc.source)
    slot = status.slot
    assert slot is not None and slot.exists and slot.over_limit
    assert slot.retained_wal_bytes > 1 << 20
    assert slot.oldest_change_age_seconds is not None and slot.oldest_change_age_seconds < 60

    result = run_pipeline(cdc)
    assert result.capture.warning.startswith(f"replication slot {slot.slot} retains ")
    assert "more than cdc.retained_wal_alert_bytes (1,048,576)" in result.capture.warning
    assert captured(result.capture).warning == result.capture.warning  # the Map item's
    after = pipeline_status(load_config(cdc.config_path), cdc.ledger, cdc.lake, cdc.processed,
                            cdc.warehouse, cdc.source).slot
    assert after.oldest_change_age_seconds is None  # every change is in the lake
