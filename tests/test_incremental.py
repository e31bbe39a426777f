"""Incremental correctness on the real history: exactly once, full fact history, dependent
dimensions, replay, atomic load. Expected values are computed from the snapshot."""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta

import pytest

from support import CONFIG, fact_versions, query, snapshot, versions_at
from test_end_to_end import fingerprint
from totes.contracts.config import TablePlan
from totes.contracts.errors import TerminalError
from totes.ingest.extract import ingest_table
from totes.load.warehouse import create_warehouse
from totes.local.replay import replay
from totes.local.runner import Resources, run_pipeline
from totes.local.seed import seed
from totes.utils.lake import Lake

FACTS = {"sales_order": "fact_sales_order", "purchase_order": "fact_purchase_order",
         "payment": "fact_payment"}
NOV_1, NOV_8, NOV_15 = datetime(2024, 11, 1), datetime(2024, 11, 8), datetime(2024, 11, 15)


@pytest.fixture
def empty_resources(tmp_path, empty_source, warehouse) -> Resources:
    return Resources(empty_source, warehouse, Lake(str(tmp_path / "lake")),
                     Lake(str(tmp_path / "processed")), CONFIG)


def batch_versions(lake: Lake, key: str, table: str) -> list:
    rows = lake.read_table(key)
    return list(zip(rows[f"{table}_id"].to_pylist(), rows["last_updated"].to_pylist()))


def test_the_second_batch_holds_exactly_the_versions_changed_in_between(empty_resources):
    seed(empty_resources.source, NOV_1)
    first = {r.table: r for r in run_pipeline(empty_resources).ingest}
    seed(empty_resources.source, NOV_8, advance=True)
    second = {r.table: r for r in run_pipeline(empty_resources).ingest}

    for table in ("sales_order", "purchase_order", "transaction", "payment", "design"):
        expected = versions_at(table, NOV_8) - versions_at(table, NOV_1)
        got = batch_versions(empty_resources.lake, second[table].key, table)
        assert len(got) == len(set(got)) and set(got) == expected, table
        both = batch_versions(empty_resources.lake, first[table].key, table) + got
        assert Counter(both) == Counter(versions_at(table, NOV_1) | expected), table
    existing = {i for i, _ in versions_at("payment", NOV_1)}
    paid_in_between = {i for i, _ in versions_at("payment", NOV_8) - versions_at("payment", NOV_1)
                       if i in existing}
    assert paid_in_between, "the interval must hold payments created before and paid within"


def test_replaying_two_weeks_matches_a_one_shot_load_and_keeps_every_version(
        empty_resources, new_database, tmp_path):
    runs = replay(empty_resources, NOV_1, NOV_15, timedelta(days=1))
    run_times = [moment for moment, _ in runs]
    assert len(run_times) == 15

    for table, fact in FACTS.items():
        expected = set().union(*(versions_at(table, t) for t in run_times))
        got = fact_versions(empty_resources.warehouse, fact, f"{table}_id")
        assert len(got) == len(set(got)), f"{fact} holds a version twice"
        assert set(got) == expected, fact
    # A payment created unpaid and paid two days later has both versions.
    (two_versions,), = query(empty_resources.warehouse,
                             "SELECT count(*) FROM (SELECT payment_id FROM fact_payment "
                             "GROUP BY payment_id HAVING count(*) = 2) twice")
    assert two_versions > 100

    one_shot_source = new_database("src")
    seed(one_shot_source, NOV_15)
    one_shot = Resources(one_shot_source, new_database("wh"), Lake(str(tmp_path / "l2")),
                         Lake(str(tmp_path / "p2")), CONFIG)
    run_pipeline(one_shot)
    replayed, once = fingerprint(empty_resources.warehouse), fingerprint(one_shot.warehouse)
    for name in replayed:
        if name.startswith("dim_"):
            assert replayed[name] == once[name], name


def test_rows_sharing_the_high_watermark_timestamp_are_extracted_once(seeded_source, tmp_path):
    lake = Lake(str(tmp_path))
    plan = TablePlan(table="payment", primary_key="payment_id")
    first = ingest_table(plan, seeded_source, lake)
    high = first.high_watermark
    # A row that arrives after the run with exactly the high watermark's timestamp and a
    # larger key. (One with a smaller key could only come from a transaction open during the
    # run, which the in-flight cutoff holds back: see the late-commit test.)
    query(seeded_source, "INSERT INTO payment (created_at, last_updated, transaction_id, "
          "counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date, "
          "company_ac_number, counterparty_ac_number) SELECT CAST(:t AS timestamp), "
          "CAST(:t AS timestamp), :tid, 1, 10.00, 1, 1, false, '2024-11-20', 1, 2",
          t=high.timestamp, tid=_new_transaction(seeded_source))
    second = ingest_table(plan, seeded_source, lake)
    third = ingest_table(plan, seeded_source, lake)

    assert (second.rows, third.rows) == (1, 0)
    [(new_id, moment)] = batch_versions(lake, second.key, "payment")
    assert new_id > high.primary_key
    assert moment.isoformat(sep=" ", timespec="microseconds") == high.timestamp
    everything = batch_versions(lake, first.key, "payment") + [(new_id, moment)]
    assert len(everything) == len(set(everything)) == snapshot("payment").num_rows + 1


def _new_transaction(source) -> int:
    (order,), = query(source, "INSERT INTO sales_order (created_at, last_updated, design_id, "
                      "staff_id, counterparty_id, units_sold, unit_price, currency_id, "
                      "agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) "
                      "VALUES ('2024-11-15', '2024-11-15', 1, 1, 1, 1, 1.00, 1, '2024-11-20', "
                      "'2024-11-21', 1) RETURNING sales_order_id")
    (transaction,), = query(source, "INSERT INTO transaction (transaction_type, sales_order_id,"
                            " created_at, last_updated) VALUES ('SALE', :o, '2024-11-15', "
                            "'2024-11-15') RETURNING transaction_id", o=order)
    return transaction


def test_a_row_committed_late_by_an_open_transaction_is_extracted_once(seeded_source, tmp_path):
    lake = Lake(str(tmp_path))
    plan = TablePlan(table="currency", primary_key="currency_id")
    ingest_table(plan, seeded_source, lake)

    slow = seeded_source.connect("slow-writer")
    try:
        slow.run("START TRANSACTION")
        slow.run("INSERT INTO currency (currency_code, last_updated) "
                 "VALUES ('JPY', CURRENT_TIMESTAMP)")
        time.sleep(0.05)
        # Another writer commits a row with a later last_updated while the first is open.
        query(seeded_source, "INSERT INTO currency (currency_code, last_updated) "
                             "VALUES ('CHF', CURRENT_TIMESTAMP)")
        during = ingest_table(plan, seeded_source, lake)
        slow.run("COMMIT")
    finally:
        slow.close()
    after = ingest_table(plan, seeded_source, lake)
    last = ingest_table(plan, seeded_source, lake)

    # The run stopped short of the open transaction, so the later row waited with it.
    assert during.rows == 0
    codes = lake.read_table(after.key)["currency_code"].to_pylist()
    assert sorted(codes) == ["CHF", "JPY"] and last.rows == 0


def test_a_role_without_pg_read_all_stats_stops_the_safety_lag_short(seeded_source, tmp_path):
    role = f"etl_{seeded_source.params['database'][-8:]}"
    query(seeded_source, f"CREATE ROLE {role} LOGIN")
    query(seeded_source, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    etl = type(seeded_source)("source", dict(seeded_source.params, user=role))
    lake = Lake(str(tmp_path))
    lagged = TablePlan(table="currency", primary_key="currency_id",
                       in_flight_safety_lag_seconds=3600)
    ingest_table(lagged, etl, lake)
    query(seeded_source, "INSERT INTO currency (currency_code, last_updated) "
                         "VALUES ('JPY', CURRENT_TIMESTAMP)")

    assert ingest_table(lagged, etl, lake).rows == 0  # committed now: inside the lag
    query(seeded_source, f"GRANT pg_read_all_stats TO {role}")
    assert ingest_table(lagged, etl, lake).rows == 1  # sees every session: no lag needed


def test_an_address_change_reaches_locations_and_the_counterparties_there(resources):
    run_pipeline(resources)
    counterparties = snapshot("counterparty").to_pylist()
    address_id = Counter(c["legal_address_id"] for c in counterparties).most_common(1)[0][0]
    there = {c["counterparty_id"] for c in counterparties if c["legal_address_id"] == address_id}
    query(resources.source, "UPDATE address SET address_line_1 = '1 New Street', "
          "last_updated = last_updated + interval '800 days' WHERE address_id = :a", a=address_id)
    query(resources.source, "UPDATE department SET location = 'Leeds (corrected)', "
          "last_updated = last_updated + interval '800 days' WHERE department_name = 'Dispatch'")

    run_pipeline(resources)

    (line,), = query(resources.warehouse, "SELECT address_line_1 FROM dim_location "
                                          "WHERE location_id = :a", a=address_id)
    assert line == "1 New Street"
    moved = dict(query(resources.warehouse, "SELECT counterparty_id, "
                       "counterparty_legal_address_line_1 = '1 New Street' FROM dim_counterparty"))
    assert {i for i, is_new in moved.items() if is_new} == there
    assert len(moved) == len(counterparties)
    departments = {d["department_id"]: d for d in snapshot("department").to_pylist()}
    dispatch = {s["staff_id"] for s in snapshot("staff").to_pylist()
                if departments[s["department_id"]]["department_name"] == "Dispatch"}
    leeds = {i for i, in query(resources.warehouse, "SELECT staff_id FROM dim_staff "
                                                    "WHERE location = 'Leeds (corrected)'")}
    assert leeds == dispatch and dispatch


def test_a_load_failing_midway_leaves_the_warehouse_unchanged_then_completes(resources):
    conn = resources.warehouse.connect()
    try:
        create_warehouse(conn)
        conn.run("CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$")
        conn.run("CREATE TRIGGER fail BEFORE INSERT ON fact_payment "
                 "FOR EACH STATEMENT EXECUTE FUNCTION fail()")
    finally:
        conn.close()
    before = fingerprint(resources.warehouse)

    with pytest.raises(TerminalError, match="loading fact_payment of batch .*injected failure"):
        run_pipeline(resources)
    assert fingerprint(resources.warehouse) == before  # dims and two facts rolled back too
    assert query(resources.warehouse, "SELECT count(*) FROM totes.loaded_batch") == [[0]]

    query(resources.warehouse, "DROP TRIGGER fail ON fact_payment")
    again = run_pipeline(resources)
    assert sum(r.rows for r in again.ingest) == 0  # nothing new: load catches up alone
    for table, fact in FACTS.items():
        got = fact_versions(resources.warehouse, fact, f"{table}_id")
        assert len(got) == len(set(got)) == snapshot(table).num_rows
