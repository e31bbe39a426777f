"""A MySQL source on a real MariaDB server: the types a lake file keeps, the in-flight cutoff,
partitions, every mode, the checks before a read, and the whole pipeline giving the warehouse
a PostgreSQL source of the same rows gives."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from support import CONFIG, fact_versions
from test_end_to_end import fingerprint
from totes.contracts.config import TablePlan
from totes.contracts.errors import SourceSchemaError
from totes.utils import mysql_reader
from totes.ingest.extract import ingest_table
from totes.ingest.plan import plan as plan_tables
from totes.local.runner import Resources, run_pipeline
from totes.local.seed import seed
from totes.utils.config_file import load_config
from totes.utils.footers import batch_files
from totes.utils.lake import Lake


def run_sql(database, *statements):
    conn = database.connect("totes-test")
    try:
        return [conn.run(statement) for statement in statements][-1]
    finally:
        conn.close()


def rows_of(lake: Lake, table: str, key: str) -> Counter:
    """Every row (as a tuple) of the lake's batches of ``table``, through their parts."""
    found = Counter()
    for batch in lake.keys_after(table, None):
        for file in batch_files(lake, batch):
            for row in lake.read_table(file).to_pylist():
                found[tuple(row.values())] += 1
    return found


def sales_order(**settings) -> TablePlan:
    return TablePlan(table="sales_order", primary_key="sales_order_id", **settings)


TYPES = """
CREATE TABLE kinds (
    kinds_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    flag BOOLEAN, tiny TINYINT, small SMALLINT UNSIGNED, medium MEDIUMINT, plain INT,
    big BIGINT, money DECIMAL(12, 2), wide DECIMAL(38, 10), ratio DOUBLE,
    day DATE, stamp_ms DATETIME(3), stamp_us DATETIME(6), zoned TIMESTAMP(3) NULL,
    name VARCHAR(20), body TEXT, state ENUM('OPEN', 'PAID'), blob_value BLOB,
    last_updated DATETIME(3) NOT NULL)
"""


def test_a_lake_file_keeps_the_mysql_types_and_values(empty_mysql_source, tmp_path):
    run_sql(empty_mysql_source, TYPES,
            "INSERT INTO kinds VALUES (18446744073709551615, TRUE, -128, 65535, -8388608, "
            "2147483647, -9223372036854775808, 1234567890.12, 1234567890123.0123456789, 0.5, "
            "'2024-02-29', '2024-11-03 14:20:49.962', '2024-11-03 14:20:49.962123', "
            "'2024-11-03 14:20:49.962', 'Zoë', 'line one\nline \"two\", ''quoted''', 'PAID', "
            "x'00ff', '2024-11-03 14:20:49.962')",
            "INSERT INTO kinds (kinds_id, last_updated) VALUES (1, '2024-11-01 00:00:00')")
    lake = Lake(str(tmp_path))
    result = ingest_table(TablePlan(table="kinds", primary_key="kinds_id",
                                    watermark_column="last_updated"), empty_mysql_source, lake)
    assert result.rows == 2
    table = lake.read_table(result.key)
    assert dict(zip(table.schema.names, table.schema.types)) == {
        "kinds_id": pa.uint64(), "flag": pa.bool_(), "tiny": pa.int8(), "small": pa.int32(),
        "medium": pa.int32(), "plain": pa.int32(), "big": pa.int64(),
        "money": pa.decimal128(12, 2), "wide": pa.decimal128(38, 10), "ratio": pa.float64(),
        "day": pa.date32(), "stamp_ms": pa.timestamp("ms"), "stamp_us": pa.timestamp("us"),
        "zoned": pa.timestamp("ms", tz="UTC"), "name": pa.string(), "body": pa.string(),
        "state": pa.string(), "blob_value": pa.binary(), "last_updated": pa.timestamp("ms"),
        "_totes_unreadable": pa.string()}  # every value was read: null
    empty, full = table.to_pylist()  # in watermark order: the 2024-11-01 row first
    assert empty["kinds_id"] == 1 and all(v is None for k, v in empty.items()
                                          if k not in ("kinds_id", "last_updated"))
    assert full == {
        "kinds_id": 18446744073709551615, "flag": True, "tiny": -128, "small": 65535,
        "medium": -8388608, "plain": 2147483647, "big": -9223372036854775808,
        "money": Decimal("1234567890.12"), "wide": Decimal("1234567890123.0123456789"),
        "ratio": 0.5, "day": date(2024, 2, 29),
        "stamp_ms": datetime(2024, 11, 3, 14, 20, 49, 962000),
        "stamp_us": datetime(2024, 11, 3, 14, 20, 49, 962123),
        "zoned": datetime(2024, 11, 3, 14, 20, 49, 962000, tzinfo=timezone.utc),
        "name": "Zoë", "body": "line one\nline \"two\", 'quoted'", "state": "PAID",
        "blob_value": b"\x00\xff", "last_updated": datetime(2024, 11, 3, 14, 20, 49, 962000),
        "_totes_unreadable": None}
    assert result.high_watermark.model_dump() == {"timestamp": "2024-11-03 14:20:49.962000",
                                                  "primary_key": 18446744073709551615}
    again = ingest_table(TablePlan(table="kinds", primary_key="kinds_id",
                                   watermark_column="last_updated"), empty_mysql_source, lake)
    assert again.rows == 0 and again.key is None  # nothing new: nothing read twice


def test_a_mysql_source_builds_the_warehouse_a_postgres_source_builds(
        mysql_source, seeded_source, new_database, tmp_path):
    from_mysql = Resources(mysql_source, new_database("wh"), Lake(str(tmp_path / "m-lake")),
                           Lake(str(tmp_path / "m-processed")), CONFIG)
    from_postgres = Resources(seeded_source, new_database("wh"), Lake(str(tmp_path / "p-lake")),
                              Lake(str(tmp_path / "p-processed")), CONFIG)
    mysql_run = run_pipeline(from_mysql)
    run_pipeline(from_postgres)
    assert sum(r.rows for r in mysql_run.ingest) == 48_066
    # Reconciliation reads the MySQL source through its own reader: they agree.
    assert mysql_run.reconcile is not None and mysql_run.reconcile.equal, \
        mysql_run.reconcile.summary()
    # Every source row but department's 8 (no dimension of its own) was compared.
    assert sum(t.source_rows for t in mysql_run.reconcile.tables) == 48_066 - 8
    assert fingerprint(from_mysql.warehouse) == fingerprint(from_postgres.warehouse)
    # The state machine's bounded steps read ranges of ids through the MySQL reader too.
    from totes.reconcile.reconcile import reconcile_step

    compared, resume, steps = 0, None, 0
    while steps == 0 or resume is not None:
        step = reconcile_step(mysql_source, from_mysql.warehouse, resume, max_rows=5000)
        assert step.equal, step.summary()
        compared += sum(t.source_rows for t in step.tables if t.key_range is not None)
        steps, resume = steps + 1, step.resume
    assert steps >= 3 and compared == sum(t.source_rows for t in mysql_run.reconcile.tables
                                          if t.table.startswith("fact_"))
    # The same lake file schema whatever the engine: transform cannot tell them apart.
    for table in ("payment", "sales_order", "transaction"):
        keys = [from_mysql.lake.newest_key(table), from_postgres.lake.newest_key(table)]
        mysql_schema, postgres_schema = (
            from_mysql.lake.metadata(k).schema.to_arrow_schema() for k in keys)
        assert mysql_schema.remove_metadata() == postgres_schema.remove_metadata(), table


def test_a_week_of_changes_from_mysql_lands_each_version_once(empty_mysql_source, warehouse,
                                                              tmp_path):
    resources = Resources(empty_mysql_source, warehouse, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG)
    days = [datetime(2024, 11, d, 12) for d in (9, 11, 13, 15)]
    for moment in days:
        seed(empty_mysql_source, moment, advance=True)
        checked = run_pipeline(resources).reconcile
        assert checked is not None and checked.equal, checked.summary()
        for fact in (t for t in checked.tables if t.table.startswith("fact_")):
            # Scoped to the ids the load brought, read from MySQL by key: exactly those rows.
            assert 0 < fact.scoped_keys == fact.source_rows == fact.warehouse_rows, fact
    versions = fact_versions(warehouse, "fact_payment", "payment_id")
    assert len(versions) == len(set(versions))  # no version twice
    from support import versions_at

    seen = set()
    for moment in days:
        seen |= versions_at("payment", moment)
    assert set(versions) == seen  # every version the source held at each run, none other


def test_an_open_transaction_holds_later_rows_back_until_it_commits(mysql_source, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(mysql_reader, "HELD_BACK_WARNING_SECONDS", 0.5)
    lake = Lake(str(tmp_path))
    plan = TablePlan(table="currency", primary_key="currency_id",
                     watermark_column="last_updated")
    assert ingest_table(plan, mysql_source, lake).rows == 3
    writer = mysql_source.connect("slow-writer")
    try:
        writer.run("START TRANSACTION")
        writer.run("INSERT INTO currency (currency_code, created_at, last_updated) "
                   "VALUES ('JPY', NOW(3), NOW(3))")
        (writer_thread,), = writer.run("SELECT CONNECTION_ID()")
        time.sleep(1.2)
        # Committed after the slow writer started, with a later watermark.
        run_sql(mysql_source, "INSERT INTO currency (currency_code, created_at, last_updated) "
                              "VALUES ('CHF', NOW(3), NOW(3))")
        time.sleep(1.1)  # past the clock margin: only the open transaction holds CHF back
        held = ingest_table(plan, mysql_source, lake)
        assert held.rows == 0  # CHF waits: reading it would move the watermark past JPY
        assert held.held_back_by is not None and held.held_back_by.pid == writer_thread
        writer.run("COMMIT")
    finally:
        writer.close()
    time.sleep(1.1)  # past the clock margin
    released = ingest_table(plan, mysql_source, lake)
    codes = lake.read_table(released.key)["currency_code"].to_pylist()
    assert sorted(codes) == ["CHF", "JPY"] and released.held_back_by is None


@pytest.mark.parametrize("mode", ["incremental", "full", "reingest", "backfill"])
def test_partitions_of_a_mysql_table_hold_what_one_read_holds(mysql_source, tmp_path, mode):
    extra = {"backfill_from": "2023-01-01", "backfill_to": "2024-01-01"} \
        if mode == "backfill" else {}
    whole = sales_order(mode=mode, watermark_column="last_updated", **extra)
    split = whole.model_copy(update={"partition_column": "sales_order_id",
                                     "num_partitions": 3})
    one, three = Lake(str(tmp_path / "one")), Lake(str(tmp_path / "three"))
    single = ingest_table(whole, mysql_source, one)
    parted = ingest_table(split, mysql_source, three)
    assert parted.rows == single.rows > 0 and 1 <= len(parted.parts) <= 3  # a part may be empty
    assert rows_of(three, "sales_order", parted.key) == rows_of(one, "sales_order", single.key)
    if mode != "backfill":
        assert parted.high_watermark == single.high_watermark
    by_time = split.model_copy(update={"partition_column": "created_at",
                                       "num_partitions": 4})
    timed = ingest_table(by_time, mysql_source, Lake(str(tmp_path / "timed")))
    assert timed.rows == single.rows


def test_the_plan_checks_a_mysql_table_before_any_read(empty_mysql_source, mariadb, tmp_path):
    run_sql(empty_mysql_source,
            "CREATE TABLE counter (counter_id INT PRIMARY KEY, seq BIGINT NOT NULL)",
            "CREATE TABLE loose (loose_id INT, last_updated DATETIME(3))")
    config = load_config(CONFIG)
    with pytest.raises(SourceSchemaError, match=r"counter.seq is bigint: on a MySQL source the "
                                                r"watermark column must be a datetime"):
        ingest_table(TablePlan(table="counter", primary_key="counter_id",
                               watermark_column="seq"), empty_mysql_source,
                     Lake(str(tmp_path / "unused")))
    with pytest.raises(SourceSchemaError, match="loose.loose_id has no unique index"):
        ingest_table(TablePlan(table="loose", primary_key="loose_id",
                               watermark_column="last_updated"), empty_mysql_source,
                     Lake(str(tmp_path / "unused")))
    with pytest.raises(SourceSchemaError, match="table 'address' does not exist in the source "
                                                "database, or the source role may read none"):
        plan_tables(config, empty_mysql_source)
    # A user without SELECT on a table is told which grant it lacks.
    seed(empty_mysql_source)
    name = empty_mysql_source.params["database"]
    run_sql(mariadb.admin(), "CREATE USER 'reader'@'localhost' IDENTIFIED BY 'pw!secret'",
            f"GRANT SELECT ON \"{name}\".address TO 'reader'@'localhost'")
    try:
        from totes.utils.mysql import MySQLDatabase

        reader = MySQLDatabase.from_url("source", f"mysql://reader:pw%21secret@localhost/{name}"
                                                  f"?unix_socket={mariadb.socket}")
        assert ingest_table(TablePlan(table="address", primary_key="address_id",
                                      watermark_column="last_updated"), reader,
                            Lake(str(tmp_path / "reader"))).rows == 30
        # MySQL hides a table its user may not read: the message says both.
        with pytest.raises(SourceSchemaError, match="table 'staff' does not exist in the "
                                                    "source database, or the source role may "
                                                    r"read none of it \(GRANT SELECT ON "
                                                    "staff") as error:
            plan_tables(config, reader, tables=["staff"])
        assert "pw!secret" not in str(error.value)
    finally:
        run_sql(mariadb.admin(), "DROP USER 'reader'@'localhost'")


def test_concurrent_writes_during_a_partitioned_mysql_read_lose_and_double_nothing(
        mysql_source, tmp_path):
    lake = Lake(str(tmp_path))
    split = sales_order(watermark_column="last_updated", partition_column="sales_order_id",
                        num_partitions=4)
    stop = threading.Event()

    def writer():
        conn = mysql_source.connect("writer")
        try:
            i = 0
            while not stop.is_set():
                conn.run(f"UPDATE sales_order SET units_sold = units_sold + 1, "
                         f"last_updated = NOW(3) WHERE sales_order_id = {1 + (i * 997) % 11000}")
                i += 1
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [ingest_table(split, mysql_source, lake) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    time.sleep(1.1)
    results.append(ingest_table(split, mysql_source, lake))
    versions = Counter()
    for key in lake.keys_after("sales_order", None):
        for file in batch_files(lake, key):
            t = lake.read_table(file, columns=["sales_order_id", "last_updated", "units_sold"])
            versions.update(zip(*(c.to_pylist() for c in t.columns)))
    assert max(versions.values()) == 1  # no version twice
    final = run_sql(mysql_source, "SELECT sales_order_id, last_updated, units_sold "
                                  "FROM sales_order")
    assert {tuple(r) for r in final} <= set(versions)  # every current version landed
    assert sum(r.rows for r in results) == len(versions)


def test_mysql_connection_errors_say_whether_a_retry_can_help(mariadb, tmp_path):
    from totes.contracts.errors import DatabaseRejected, DatabaseUnavailable
    from totes.utils.mysql import MySQLDatabase

    wrong = MySQLDatabase.from_url("source", f"mysql://root:n0t-it@localhost/mysql"
                                             f"?unix_socket={mariadb.socket}")
    with pytest.raises(DatabaseRejected, match="refused the connection") as error:
        ingest_table(sales_order(watermark_column="last_updated"), wrong, Lake(str(tmp_path)))
    assert "n0t-it" not in str(error.value)
    gone = MySQLDatabase.from_url("source", f"mysql://root@localhost/mysql"
                                            f"?unix_socket={tmp_path}/no.sock")
    with pytest.raises(DatabaseUnavailable, match=r"cannot reach the source database mysql at "
                                                  r".*no.sock \(MySQL\)"):
        ingest_table(sales_order(watermark_column="last_updated"), gone, Lake(str(tmp_path)))
    missing = MySQLDatabase.from_url("source", mariadb.url("no_such_database"))
    with pytest.raises(DatabaseRejected, match="Unknown database 'no_such_database'"):
        ingest_table(sales_order(watermark_column="last_updated"), missing, Lake(str(tmp_path)))
