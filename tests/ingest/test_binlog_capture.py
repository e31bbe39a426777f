"""Change data capture from a MySQL source's binlog (extract_type: cdc) on a real MariaDB server
holding the real snapshot: every committed version and every delete reaches the lake once and
the warehouse keeps them, as from PostgreSQL's log."""
from __future__ import annotations

import pyarrow as pa
import pytest

from ingest.test_capture import copied_values, lake_rows, stream_versions
from ingest.test_mysql_source import run_sql
from support import CONFIG, query, snapshot, versions_beyond
from totes.contracts.cdc import LSN, OPERATION, parse_position, position_prefix
from totes.contracts.errors import CaptureStopped, CdcNotReady
from totes.local.runner import Resources, run_pipeline
from totes.reconcile.reconcile import reconcile
from totes.utils import mysql_binlog
from totes.utils.lake import Lake

#: The facts and the dimension a test deletes a row of.
TABLES = ("sales_order", "purchase_order", "payment", "design")


@pytest.fixture
def binlog_resources(mysql_source, warehouse, with_cdc, tmp_path):
    """A run's resources on the seeded MariaDB source with :data:`TABLES` on ``cdc``."""
    resources = Resources(mysql_source, warehouse, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG)
    return with_cdc(resources, tables=TABLES)


def test_intermediate_versions_and_deletes_reach_the_warehouse_once(binlog_resources):
    from decimal import Decimal

    resources = binlog_resources
    first = run_pipeline(resources)
    copied = {r.table: r for r in first.ingest if r.mode == "cdc_snapshot"}
    assert set(copied) == set(TABLES)
    assert copied["sales_order"].rows == snapshot("sales_order").num_rows
    run_sql(resources.source, "INSERT INTO design (created_at, last_updated, design_name, "
            "file_location, file_name) VALUES (NOW(3), NOW(3), 'Gone', '/x', 'gone.json')")
    (design,), = run_sql(resources.source, "SELECT MAX(design_id) FROM design")
    assert run_pipeline(resources).reconcile.equal  # the new design is in the warehouse

    changed, gone = 7, 4
    for units in (101, 102, 103):  # three commits, one last_updated: three versions
        run_sql(resources.source, f"UPDATE sales_order SET units_sold = {units} WHERE "
                f"sales_order_id = {changed}")
    run_sql(resources.source, f"DELETE FROM payment WHERE payment_id = {gone}")
    run_sql(resources.source, f"DELETE FROM design WHERE design_id = {design}")
    run_sql(resources.source, "START TRANSACTION",  # one version of a transaction's changes
            "UPDATE purchase_order SET item_quantity = 1 WHERE purchase_order_id = 3",
            "UPDATE purchase_order SET item_quantity = 2 WHERE purchase_order_id = 3",
            "COMMIT")

    second = run_pipeline(resources)

    by_table = {r.table: r for r in second.ingest if r.mode == "cdc"}
    assert by_table["sales_order"].changes == {"insert": 0, "update": 3, "delete": 0}
    assert by_table["payment"].changes == {"insert": 0, "update": 0, "delete": 1}
    assert by_table["design"].changes == {"insert": 0, "update": 0, "delete": 1}
    assert by_table["purchase_order"].changes == {"insert": 0, "update": 1, "delete": 0}
    assert by_table["sales_order"].through_lsn.startswith("binlog.")
    rows = lake_rows(resources.lake, "sales_order")
    stream = rows.filter(pa.compute.is_valid(rows[LSN]))
    assert stream[OPERATION].to_pylist() == ["update"] * 3
    assert stream["units_sold"].to_pylist() == [101, 102, 103]
    assert stream[LSN].to_pylist() == sorted(stream[LSN].to_pylist())
    units = query(resources.warehouse, "SELECT units_sold, is_deleted FROM fact_sales_order "
                  "WHERE sales_order_id = :o ORDER BY source_lsn", o=changed)
    assert units[-3:] == [[101, False], [102, False], [103, False]]
    assert query(resources.warehouse, "SELECT units_sold FROM fact_sales_order_current "
                 "WHERE sales_order_id = :o", o=changed) == [[103]]
    original = Decimal(str(snapshot("payment").filter(pa.compute.equal(
        snapshot("payment")["payment_id"], gone))["payment_amount"][0].as_py()))
    assert query(resources.warehouse, "SELECT is_deleted, payment_amount FROM fact_payment "
                 "WHERE payment_id = :p ORDER BY source_lsn", p=gone) == \
        [[False, original], [True, original]]  # the delete carries the row's values
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment_current WHERE "
                 "payment_id = :p", p=gone) == [[0]]
    assert query(resources.warehouse, "SELECT design_name, is_deleted FROM dim_design WHERE "
                 "design_id = :d", d=design) == [["Gone", True]]
    assert query(resources.warehouse, "SELECT item_quantity FROM fact_purchase_order WHERE "
                 "purchase_order_id = 3 ORDER BY source_lsn")[-1:] == [[2]]
    assert second.reconcile is not None and second.reconcile.equal, \
        second.reconcile.summary()

    # The position record holds the binlog file and offset read through.
    key = resources.lake.newest_key(position_prefix(second.capture.slot), "json")
    position = parse_position(resources.lake.read_bytes(key), key)
    assert position.binlog == second.capture.through_lsn
    name, offset = position.binlog.rsplit(":", 1)
    assert mysql_binlog.encode(mysql_binlog.file_index(name), int(offset)) == \
        position.through_lsn

    third = run_pipeline(resources)  # nothing new: nothing read twice
    assert all(r.rows == 0 for r in third.ingest)


def test_a_change_while_the_initial_copy_runs_lands_once_in_its_latest_version(
        binlog_resources, monkeypatch):
    from decimal import Decimal

    from totes.ingest import capture as capture_module

    resources = binlog_resources
    before, during = 3, 4  # payments changed before the copy's snapshot, and during the copy
    run_sql(resources.source, f"UPDATE payment SET paid = NOT paid WHERE payment_id = {before}")
    real = capture_module.read_into

    def copy_while_changing(reader, conn, plan, *args, **kwargs):
        if plan.table == "payment":  # the copy's snapshot is taken: this commit is not in it
            run_sql(resources.source, "UPDATE payment SET payment_amount = 42.42 WHERE "
                    f"payment_id = {during}")
        return real(reader, conn, plan, *args, **kwargs)

    monkeypatch.setattr(capture_module, "read_into", copy_while_changing)
    run_pipeline(resources)
    monkeypatch.setattr(capture_module, "read_into", real)

    streamed = [i for i, _ in stream_versions(resources.lake, "payment")]
    assert streamed == [during]  # the earlier change is in the copy, not read again
    assert copied_values(resources.lake, "payment", during, "payment_amount") != \
        [Decimal("42.42")]
    versions = query(resources.warehouse, "SELECT payment_id, payment_amount, paid FROM "
                     "fact_payment_current WHERE payment_id IN (:a, :b) ORDER BY 1",
                     a=before, b=during)
    source = run_sql(resources.source, "SELECT payment_id, payment_amount, paid = 1 FROM "
                     f"payment WHERE payment_id IN ({before}, {during}) ORDER BY 1")
    assert [tuple(v) for v in versions] == [tuple(s) for s in source]
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment WHERE payment_id = "
                 ":p", p=during) == [[2]]  # the copy's version, and the one read from the log
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment WHERE payment_id = "
                 ":p", p=before) == [[1]]


def test_a_read_killed_at_any_step_then_rerun_loses_and_doubles_nothing(
        binlog_resources, monkeypatch):
    from totes.ingest import capture as capture_module

    resources = binlog_resources
    run_pipeline(resources)

    class Killed(Exception):
        pass

    def change(step: int) -> None:
        for payment in (step, step + 100):
            run_sql(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id = "
                    f"{payment}")
        run_sql(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1 WHERE "
                f"sales_order_id = {step}")

    real_publish, real_position = Lake.publish, capture_module._Capture._commit_position
    published: list = []

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
        ("before the position record", "_commit_position",
         lambda *a: (_ for _ in ()).throw(Killed("position"))),
        ("after the position record", "_commit_position", position_then_die),
    ]
    for step, (where, name, replacement) in enumerate(kills, start=1):
        change(step)
        if name is None:
            monkeypatch.setattr(Lake, "publish", publish_once_then_die)
        else:
            monkeypatch.setattr(capture_module._Capture, name, replacement)
        with pytest.raises(Killed):
            run_pipeline(resources)
        monkeypatch.undo()
        published.clear()
        run_pipeline(resources)  # the rerun after the crash

    for table in ("payment", "sales_order"):
        versions = stream_versions(resources.lake, table)
        assert len(versions) == len(set(versions)), f"{table}: a version landed twice"
    payments = sorted(i for i, _ in stream_versions(resources.lake, "payment"))
    assert payments == [1, 2, 3, 4, 101, 102, 103, 104]
    orders = sorted(i for i, _ in stream_versions(resources.lake, "sales_order"))
    assert orders == [1, 2, 3, 4]
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_read_is_bounded_and_never_splits_a_transaction(
        mysql_source, warehouse, with_cdc, tmp_path):
    resources = with_cdc(Resources(mysql_source, warehouse, Lake(str(tmp_path / "lake")),
                                   Lake(str(tmp_path / "processed")), CONFIG),
                         tables=("payment",), max_changes_per_run=5)
    run_pipeline(resources)
    run_sql(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id <= 12")
    for payment in (13, 14, 15):
        run_sql(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id = "
                f"{payment}")

    first = run_pipeline(resources)  # the 12-change transaction whole, then it stops
    assert first.capture.changes == 12 and first.capture.transactions == 1
    assert [run_pipeline(resources).capture.changes for _ in range(2)] == [3, 0]
    versions = stream_versions(resources.lake, "payment")
    assert sorted(i for i, _ in versions) == list(range(1, 16))


def test_a_truncate_stops_its_table_and_a_reingest_takes_it_up_again(binlog_resources):
    resources = binlog_resources
    run_pipeline(resources)
    run_sql(resources.source, "UPDATE sales_order SET units_sold = 1 WHERE sales_order_id = 1")
    # DDL that only names a cdc table without acting on it leaves it alone.
    run_sql(resources.source, "CREATE TABLE sales_order_copy LIKE sales_order",
            "DROP TABLE sales_order_copy")
    run_sql(resources.source, "SET FOREIGN_KEY_CHECKS = 0", "TRUNCATE payment")
    run_sql(resources.source, "ALTER TABLE design ADD INDEX by_name (design_name)")
    run_sql(resources.source, "UPDATE sales_order SET units_sold = 2 WHERE sales_order_id = 1")
    with pytest.raises(CaptureStopped) as stopped:
        run_pipeline(resources)
    message = str(stopped.value)
    assert "table payment: the source table was truncated (TRUNCATE)" in message
    assert "totes ingest --table payment --reingest" in message
    assert "design" not in message  # an ALTER TABLE that changes no column changes nothing
    assert sorted(i for i, _ in stream_versions(resources.lake, "sales_order")) == [1, 1]
    with pytest.raises(CaptureStopped):  # stopped until a person acts
        run_pipeline(resources)
    assert sorted(i for i, _ in stream_versions(resources.lake, "sales_order")) == [1, 1]
    again = run_pipeline(resources, tables=[{"table": "payment", "mode": "reingest"}])
    copied = {r.table: (r.mode, r.rows) for r in again.ingest if r.mode == "cdc_snapshot"}
    assert copied["payment"] == ("cdc_snapshot", 0)
    run_sql(resources.source, "UPDATE design SET design_name = 'red' WHERE design_id = 1")
    later = run_pipeline(resources)  # every table goes on
    assert {r.table: r.changes for r in later.ingest}["design"]["update"] == 1
    assert sorted(i for i, _ in stream_versions(resources.lake, "sales_order")) == [1, 1]


@pytest.mark.parametrize("sql, kind, tables", [
    ("ALTER TABLE sales_order ADD COLUMN x int", "ALTER TABLE", ["sales_order"]),
    ("ALTER TABLE `transaction` ADD CONSTRAINT f FOREIGN KEY (payment_id) "
     "REFERENCES payment (payment_id)", "ALTER TABLE", ["transaction"]),
    ("/* c */ ALTER ONLINE TABLE totesys . `sales_order` DROP x", "ALTER TABLE",
     ["sales_order"]),
    ("ALTER TABLE SALES_ORDER ADD y int", "ALTER TABLE", ["sales_order"]),
    ("CREATE TABLE x LIKE sales_order", "CREATE TABLE", []),
    ("CREATE TABLE x AS SELECT * FROM payment", "CREATE TABLE", []),
    ("CREATE OR REPLACE TABLE payment (a int)", "CREATE TABLE", ["payment"]),
    ("TRUNCATE TABLE totesys.payment", "TRUNCATE", ["payment"]),
    ("TRUNCATE TABLE other.payment", "TRUNCATE", []),
    ("DROP TABLE IF EXISTS a, payment", "DROP TABLE", ["payment"]),
    ("RENAME TABLE payment TO p_old, p_new TO payment", "RENAME TABLE", ["payment"]),
    ("RENAME TABLE a TO b", "RENAME TABLE", []),
    ("INSERT INTO sales_order VALUES (1)", None, []),
])
def test_a_logged_statement_concerns_the_tables_it_acts_on_only(sql, kind, tables):
    from totes.utils.mysql_binlog import Statement, statement_tables

    assert statement_tables(Statement(sql, "totesys", 0), "totesys",
                            ["sales_order", "payment", "transaction"]) == (kind, tables)


def test_a_source_not_ready_gets_the_message_naming_what_is_missing_and_nothing_is_written(
        mysql_source, warehouse, with_cdc, tmp_path):
    from dataclasses import replace

    from totes.utils.mysql import MySQLDatabase

    ready = with_cdc(Resources(mysql_source, warehouse, Lake(str(tmp_path / "lake")),
                               Lake(str(tmp_path / "processed")), CONFIG), tables=("payment",))
    database = mysql_source.params["database"]
    run_sql(mysql_source, "CREATE USER IF NOT EXISTS 'etl_plain'@'localhost' IDENTIFIED BY "
            "'plain-secret'", f"GRANT SELECT ON \"{database}\".* TO 'etl_plain'@'localhost'")
    plain = MySQLDatabase("source", {**mysql_source.params, "user": "etl_plain",
                                     "password": "plain-secret"})
    try:
        with pytest.raises(CdcNotReady) as error:
            run_pipeline(replace(ready, source=plain))
        assert "the role 'etl_plain'@'localhost' may not read the binlog (it lacks REPLICATION " \
               "SLAVE, REPLICATION CLIENT): GRANT REPLICATION SLAVE, REPLICATION CLIENT ON " \
               "*.* TO 'etl_plain'@'localhost'" in str(error.value)
        assert "plain-secret" not in str(error.value)
        assert not ready.lake.keys_after("payment", None)
    finally:
        run_sql(mysql_source, "DROP USER 'etl_plain'@'localhost'")

    run_sql(mysql_source, "SET GLOBAL binlog_row_image = 'MINIMAL'",
            "SET GLOBAL binlog_format = 'MIXED'")
    try:
        with pytest.raises(CdcNotReady) as error:
            run_pipeline(ready)
        message = str(error.value)
        assert "the server runs with binlog_format = MIXED: SET GLOBAL binlog_format = 'ROW'" \
            in message
        assert "the server runs with binlog_row_image = MINIMAL" in message
        assert not ready.lake.keys_after("payment", None)
    finally:
        run_sql(mysql_source, "SET GLOBAL binlog_row_image = 'FULL'",
                "SET GLOBAL binlog_format = 'ROW'")


def test_cdc_init_prints_what_a_dba_must_set_and_drop_has_nothing_to_drop(mysql_source):
    from totes.contracts.config import CapturePlan, TablePlan
    from totes.ingest.capture import drop_source, init_source

    plan = CapturePlan(slot="totes", publication="totes", tables=[
        TablePlan(table="payment", primary_key="payment_id", extract_type="cdc")])
    assert init_source(plan, mysql_source) == []  # the test server is ready
    run_sql(mysql_source, "SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        assert init_source(plan, mysql_source) == [
            "SET GLOBAL binlog_row_image = 'FULL'  -- and binlog_row_image = FULL in the "
            "server's configuration"]
    finally:
        run_sql(mysql_source, "SET GLOBAL binlog_row_image = 'FULL'")
    assert drop_source(plan, mysql_source) == []


def test_three_reads_at_once_read_each_change_once(binlog_resources, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from totes.utils.ledger import SqliteLedger

    resources = replace(binlog_resources,
                        ledger=SqliteLedger(str(tmp_path / "ledger.sqlite3")))
    run_pipeline(resources)
    run_sql(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id <= 20")
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: run_pipeline(resources), range(3)))
    read = [r.capture for r in runs if r.capture and not r.capture.skipped]
    assert 1 <= len(read) <= 3
    run_pipeline(resources)
    versions = stream_versions(resources.lake, "payment")
    assert sorted(i for i, _ in versions) == list(range(1, 21))


def test_status_shows_the_position_and_how_far_the_binlog_goes_past_it(binlog_resources):
    from totes.local.render import slot_line
    from totes.local.status import slot_status
    from totes.utils.config_file import load_config

    resources = binlog_resources
    config = load_config(resources.config_path)
    run_pipeline(resources)
    caught_up = slot_status(config, resources.source, resources.lake)
    run_sql(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id <= 50")
    behind = slot_status(config, resources.source, resources.lake)
    assert behind.lake_through == caught_up.lake_through
    assert behind.binlog_behind_bytes > caught_up.binlog_behind_bytes
    assert slot_line(behind).startswith(f"binlog reader {behind.slot}: the lake holds every "
                                        f"change through {behind.lake_through}; the binlog "
                                        f"ends at {behind.confirmed_through}")
    run_pipeline(resources)
    after = slot_status(config, resources.source, resources.lake)
    assert after.lake_through != caught_up.lake_through
    assert after.binlog_behind_bytes < behind.binlog_behind_bytes


def changed_since(folder, moment) -> str:
    """A snapshot folder (``folder``) holding the rows of the real snapshot whose
    ``last_updated`` is after ``moment``: the only rows whose state as of a later moment
    differs from their state as of ``moment`` (seeding it as of that later moment is seeding
    the whole snapshot, without re-sending the rows that stay as they were)."""
    import pyarrow.parquet as pq

    from totes.contracts.source_tables import SOURCE_TABLES
    from totes.local.seed import default_snapshot_dir

    folder.mkdir(parents=True)
    for table in SOURCE_TABLES:
        rows = pq.read_table(default_snapshot_dir() / f"{table}.parquet")
        pq.write_table(rows.filter(pa.compute.greater(
            rows["last_updated"], pa.scalar(moment, rows["last_updated"].type))),
            folder / f"{table}.parquet")
    return str(folder)


def test_a_replayed_week_on_cdc_is_the_polled_warehouse_plus_every_version_and_delete(
        empty_mysql_source, new_database, with_cdc, tmp_path):
    """The three facts (and transaction) on cdc from the binlog and, beside them, a polled
    pipeline on the same MariaDB source: after a week of real history replayed day by day,
    with a payment changed three times (three transactions) between two runs and a payment
    deleted, the cdc warehouse holds every version the polled one holds, plus exactly the two
    intermediate versions and the delete."""
    from datetime import datetime, timedelta

    from totes.local.seed import seed

    source = empty_mysql_source
    start = datetime(2024, 11, 8)
    seed(source, start)
    polled = Resources(source, new_database("wh"), Lake(str(tmp_path / "pl")),
                       Lake(str(tmp_path / "pp")), CONFIG)
    cdc = with_cdc(Resources(source, new_database("wh"), Lake(str(tmp_path / "cl")),
                             Lake(str(tmp_path / "cp")), CONFIG))
    run_pipeline(polled, reconcile=False)
    run_pipeline(cdc, reconcile=False)
    thrice, gone = 5, 6
    for day in range(1, 8):
        moment = start + timedelta(days=day)
        seed(source, moment, changed_since(tmp_path / f"day{day}", moment - timedelta(days=1)),
             advance=True)
        if day == 3:  # three commits between runs: the first two are intermediate versions
            (newest,), = run_sql(source, "SELECT max(last_updated) FROM payment")
            conn = source.connect("totes-test")
            try:  # autocommit: one transaction each, all three likely in one binlog second
                for second in (1, 2, 3):  # each its own last_updated: three distinct versions
                    conn.run("UPDATE payment SET paid = NOT paid, last_updated = %(at)s "
                             "WHERE payment_id = %(p)s", at=newest + timedelta(seconds=second),
                             p=thrice)
            finally:
                conn.close()
        if day == 7:  # the last day (replaying history re-inserts any row deleted earlier)
            run_sql(source, f"DELETE FROM payment WHERE payment_id = {gone}")
        run_pipeline(polled, reconcile=False)
        run_pipeline(cdc, reconcile=False)

    assert versions_beyond(polled, cdc) == {
        "fact_sales_order": [], "fact_purchase_order": [],
        "fact_payment": sorted([(thrice, False), (thrice, False), (gone, True)])}
    # The three versions in commit order: each flips paid, the last is the polled one's.
    paid = query(cdc.warehouse, "SELECT paid FROM fact_payment WHERE payment_id = :p "
                 "ORDER BY source_lsn", p=thrice)
    assert [a != b for a, b in zip(paid[-4:], paid[-3:])] == [True] * 3
    assert query(cdc.warehouse, "SELECT paid, last_updated_time FROM fact_payment_current "
                 "WHERE payment_id = :p", p=thrice) == \
        query(polled.warehouse, "SELECT paid, last_updated_time FROM fact_payment_current "
              "WHERE payment_id = :p", p=thrice)
    assert query(cdc.warehouse, "SELECT count(*) FROM fact_payment_current WHERE "
                 "payment_id = :p", p=gone) == [[0]]
    checked = reconcile(cdc.source, cdc.warehouse)
    assert checked.equal, [d for t in checked.tables for d in t.listed]


def test_a_delete_in_the_second_of_the_rows_last_update_is_its_last_version(binlog_resources):
    """The binlog's commit times are whole seconds: a payment updated at 07:13:27.350 and
    deleted in that second has a delete committed "at 07:13:27", before its last update.
    The delete is still the payment's last version (stamped with the later of the two), and
    the current view leaves the payment out."""
    import time

    resources = binlog_resources
    run_pipeline(resources)
    while not 0.05 < time.time() % 1 < 0.4:  # early in a second: both commits in it
        time.sleep(0.01)
    run_sql(resources.source, "UPDATE payment SET paid = NOT paid, last_updated = NOW(3) "
            "WHERE payment_id = 9")
    run_sql(resources.source, "DELETE FROM payment WHERE payment_id = 9")

    second = run_pipeline(resources)

    (updated, update_lsn), (deleted, delete_lsn) = query(
        resources.warehouse, "SELECT last_updated_date + last_updated_time, source_lsn FROM "
        "fact_payment WHERE payment_id = 9 AND source_lsn > 0 ORDER BY source_lsn")
    assert deleted >= updated and delete_lsn > update_lsn
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment_current WHERE "
                 "payment_id = 9") == [[0]]
    assert second.reconcile is not None and second.reconcile.equal, \
        second.reconcile.summary()
