"""Reconciliation of source and warehouse, and the facts' current-version views, on real
PostgreSQL databases: clean after two weeks of runs; a tampered fact value, dimension row and
deleted fact version named exactly; source changes after the last load pending, not
differences."""
from __future__ import annotations

import json
import logging
from datetime import datetime
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from support import CONFIG, query
from totes.cli import app
from totes.local.runner import Resources, run_pipeline
from totes.local.seed import seed
from totes.reconcile.reconcile import reconcile
from totes.utils.lake import Lake

TWO_WEEKS = [datetime(2024, 11, day, 18) for day in (1, 4, 7, 10, 13, 15)]


@pytest.fixture
def replayed(empty_source, warehouse, tmp_path) -> Resources:
    """Two weeks of the real history, one run after each step (reconciling as it goes)."""
    resources = Resources(empty_source, warehouse, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG)
    for moment in TWO_WEEKS:
        seed(empty_source, moment, advance=True)
        result = run_pipeline(resources)
        assert result.reconcile is not None and result.reconcile.equal, \
            result.reconcile.summary()
    return resources


def by_table(result) -> dict:
    return {t.table: t for t in result.tables}


def test_reconcile_is_clean_after_two_weeks_and_the_current_views_are_the_source(replayed):
    result = reconcile(replayed.source, replayed.warehouse)
    assert result.equal and result.differences == 0
    tables = by_table(result)
    assert set(tables) == {"dim_design", "dim_location", "dim_currency", "dim_payment_type",
                           "dim_transaction", "dim_counterparty", "dim_staff",
                           "fact_sales_order", "fact_purchase_order", "fact_payment"}
    (payments,), = query(replayed.source, "SELECT count(*) FROM payment")
    assert tables["fact_payment"].source_rows == tables["fact_payment"].warehouse_rows \
        == payments
    assert all(s.equal for s in result.sums) and {s.currency for s in result.sums} == \
        {"GBP", "USD", "EUR"}
    # Facts keep every version; the current view holds one row per source id, the source's.
    (versions,), = query(replayed.warehouse, "SELECT count(*) FROM fact_payment")
    assert versions > payments
    current = query(replayed.warehouse, "SELECT payment_id, payment_amount, paid, "
                                        "last_updated_date + last_updated_time "
                                        "FROM fact_payment_current ORDER BY payment_id")
    source = query(replayed.source, "SELECT payment_id, payment_amount, paid, last_updated "
                                    "FROM payment ORDER BY payment_id")
    assert [tuple(r) for r in current] == [tuple(r) for r in source]
    for fact, source_table in (("fact_sales_order", "sales_order"),
                               ("fact_purchase_order", "purchase_order")):
        (ids, rows), = query(replayed.warehouse, f"SELECT count(DISTINCT "
                                                 f"{source_table}_id), count(*) "
                                                 f"FROM {fact}_current")
        (expected,), = query(replayed.source, f"SELECT count(*) FROM {source_table}")
        assert ids == rows == expected
    # What the analyst of the issue summed: the current versions equal the source's total.
    (warehouse_total,), = query(replayed.warehouse,
                                "SELECT sum(payment_amount) FROM fact_payment_current")
    (all_versions,), = query(replayed.warehouse, "SELECT sum(payment_amount) FROM fact_payment")
    (source_total,), = query(replayed.source, "SELECT sum(payment_amount) FROM payment")
    assert warehouse_total == source_total != all_versions


def test_tampering_with_the_warehouse_is_named_exactly(resources):
    run_pipeline(resources, reconcile=False)
    (before,), = query(resources.warehouse, "SELECT payment_amount FROM fact_payment_current "
                                            "WHERE payment_id = 2")
    query(resources.warehouse, "UPDATE fact_payment SET payment_amount = 1.00 "
                               "WHERE payment_id = 2")
    query(resources.warehouse, "UPDATE dim_staff SET last_name = 'Tampered' WHERE staff_id = 3")
    query(resources.warehouse, "DELETE FROM fact_sales_order WHERE sales_order_id = 5")

    result = reconcile(resources.source, resources.warehouse)

    assert not result.equal
    listed = [(d.table, d.key, d.column, d.source, d.warehouse, d.problem)
              for t in result.tables for d in t.listed]
    (first_name,), = query(resources.source, "SELECT last_name FROM staff WHERE staff_id = 3")
    assert sorted(listed) == sorted([
        ("fact_payment", {"payment_id": 2}, "payment_amount", str(before), "1.00",
         "value differs"),
        ("dim_staff", {"staff_id": 3}, "last_name", first_name, "Tampered", "value differs"),
        ("fact_sales_order", {"sales_order_id": 5}, None, None, None,
         "missing in the warehouse")])
    unequal = {(s.table, s.column) for s in result.sums if not s.equal}
    assert unequal == {("fact_payment", "payment_amount"), ("fact_sales_order", "unit_price")}
    assert result.differences == 3 + 2
    assert result.summary().startswith("reconcile: 5 differences (dim_staff 1, "
                                       "fact_sales_order 1, fact_payment 1; 2 sums differ)")


def test_a_run_reconciles_the_ids_it_loaded_and_totes_reconcile_everything(resources):
    from totes.reconcile.reconcile import load_scope

    run_pipeline(resources, reconcile=False)
    (order,), = query(resources.source, "INSERT INTO sales_order (created_at, last_updated, "
                      "design_id, staff_id, counterparty_id, units_sold, unit_price, "
                      "currency_id, agreed_delivery_date, agreed_payment_date, "
                      "agreed_delivery_location_id) VALUES ('2024-11-16', '2024-11-16', 1, 1, "
                      "1, 10, 2.50, 1, '2025-01-01', '2025-01-02', 1) RETURNING sales_order_id")
    query(resources.source, "UPDATE payment SET paid = NOT paid, last_updated = '2024-11-16' "
                            "WHERE payment_id IN (7, 8)")
    # Outside what the next run loads: the scoped reconciliation does not look at it.
    query(resources.warehouse, "UPDATE fact_payment SET payment_amount = 1.00 "
                               "WHERE payment_id = 2")

    result = run_pipeline(resources)

    tables = by_table(result.reconcile)
    assert result.reconcile.equal, result.reconcile.summary()
    assert (tables["fact_sales_order"].scoped_keys, tables["fact_payment"].scoped_keys,
            tables["fact_purchase_order"].scoped_keys) == (1, 2, 0)
    assert (tables["fact_sales_order"].source_rows, tables["fact_payment"].source_rows) == (1, 2)
    assert tables["dim_staff"].scoped_keys is None  # dimensions: whole
    assert result.reconcile.summary().endswith(
        "; facts on the ids the load brought: fact_sales_order 1, fact_purchase_order 0, "
        "fact_payment 2)")
    assert load_scope(resources.processed, result.load.batches) == {
        "fact_sales_order": [order], "fact_purchase_order": [], "fact_payment": [7, 8]}
    everything = reconcile(resources.source, resources.warehouse)
    assert [(d.table, d.key, d.column) for t in everything.tables for d in t.listed] == \
        [("fact_payment", {"payment_id": 2}, "payment_amount")]

    # Inside the scope, a difference is found and named.
    query(resources.warehouse, "UPDATE fact_payment SET paid = NOT paid WHERE payment_id = 8 "
                               "AND last_updated_date = '2024-11-16'")
    scoped = reconcile(resources.source, resources.warehouse,
                       scope=load_scope(resources.processed, result.load.batches))
    assert [(d.table, d.key, d.column) for t in scoped.tables for d in t.listed] == \
        [("fact_payment", {"payment_id": 8}, "paid")]
    # A scope larger than its limit compares the whole fact.
    assert load_scope(resources.processed, result.load.batches, max_keys=1)[
        "fact_payment"] is None


@pytest.mark.parametrize("reader", ["adbc", "pg8000"])
def test_a_whole_reconciliation_in_bounded_steps_compares_every_id_once(
        resources, reader, monkeypatch):
    """The state machine's Reconcile runs in steps of at most TOTES_RECONCILE_MAX_ROWS fact
    rows: the steps' ranges of ids follow on from each other, together they compare what one
    whole reconciliation compares (rows, pending rows beyond the warehouse's last id, sums,
    the same differences), each difference named by the step whose range holds it; through
    either reader of a PostgreSQL source."""
    from collections import defaultdict

    from totes.reconcile.reconcile import reconcile_step

    monkeypatch.setenv("TOTES_BULK_READER", reader)
    run_pipeline(resources, reconcile=False)
    (last_order,), = query(resources.source, "SELECT max(sales_order_id) FROM sales_order")
    # 7,000 orders the warehouse has not got yet, beyond its last id: the source's side
    # bounds the last ranges.
    query(resources.source, "INSERT INTO sales_order (created_at, last_updated, design_id, "
                            "staff_id, counterparty_id, units_sold, unit_price, currency_id, "
                            "agreed_delivery_date, agreed_payment_date, "
                            "agreed_delivery_location_id) SELECT now(), now(), 1, 1, 1, 10, "
                            "2.50, 1, '2025-01-01', '2025-01-02', 1 "
                            "FROM generate_series(1, 7000)")
    query(resources.warehouse, "UPDATE fact_payment SET payment_amount = 1.00 "
                               "WHERE payment_id = 2")
    query(resources.warehouse, "UPDATE fact_sales_order SET units_sold = units_sold + 1 "
                               f"WHERE sales_order_id = {last_order}")
    query(resources.warehouse, "DELETE FROM fact_purchase_order WHERE purchase_order_id = 7")
    whole = reconcile(resources.source, resources.warehouse)

    steps, resume = [], None
    while True:
        step = reconcile_step(resources.source, resources.warehouse, resume, max_rows=3000)
        steps.append(step)
        resume = step.resume
        if resume is None:
            break
        assert len(steps) < 50, "the steps do not end"

    assert len(steps) >= 4
    assert [t.table.startswith("dim_") for t in steps[0].tables].count(True) == 7
    assert not any(t.table.startswith("dim_") for s in steps[1:] for t in s.tables)
    ranges, compared, listed = defaultdict(list), defaultdict(int), []
    source_sums, warehouse_sums = defaultdict(Decimal), defaultdict(Decimal)
    for step in steps:
        facts = [t for t in step.tables if t.table.startswith("fact_")]
        assert sum(t.warehouse_rows for t in facts) <= 3000
        # A warehouse-bounded range also holds what only the source has: purchase order 7.
        assert sum(t.source_rows + t.pending for t in facts) <= 3000 + 1, facts
        for t in facts:
            ranges[t.table].append(tuple(t.key_range))
            compared[t.table, "source"] += t.source_rows
            compared[t.table, "warehouse"] += t.warehouse_rows
            compared[t.table, "pending"] += t.pending
            listed += [(d.table, d.key, d.column, d.problem, steps.index(step))
                       for d in t.listed]
        for checked in step.sums:
            source_sums[checked.table, checked.column, checked.currency] += \
                Decimal(checked.source)
            warehouse_sums[checked.table, checked.column, checked.currency] += \
                Decimal(checked.warehouse)
    for fact, chain in ranges.items():  # from the first id to beyond the last, no gap
        assert chain[0][0] is None and chain[-1][1] is None, (fact, chain)
        assert all(a[1] == b[0] for a, b in zip(chain, chain[1:])), (fact, chain)
    assert len(ranges["fact_sales_order"]) >= 2 and len(ranges["fact_payment"]) >= 2
    wholly = {t.table: t for t in whole.tables}
    for fact in ranges:
        assert compared[fact, "source"] == wholly[fact].source_rows
        assert compared[fact, "warehouse"] == wholly[fact].warehouse_rows
        assert compared[fact, "pending"] == wholly[fact].pending
    assert compared["fact_sales_order", "pending"] == 7000
    assert sorted((d[0], d[1], d[2], d[3]) for d in listed) == sorted(
        (d.table, d.key, d.column, d.problem) for t in whole.tables for d in t.listed
        if t.table.startswith("fact_"))
    assert {d[4] for d in listed if d[0] == "fact_sales_order"} == {
        i for i, s in enumerate(steps) for t in s.tables if t.table == "fact_sales_order"
        and (t.key_range[0] or 0) <= last_order < (t.key_range[1] or last_order + 1)}
    assert {k: str(v) for k, v in source_sums.items()} == {
        (s.table, s.column, s.currency): s.source for s in whole.sums}
    assert {k: str(v) for k, v in warehouse_sums.items()} == {
        (s.table, s.column, s.currency): s.warehouse for s in whole.sums}
    assert not any(s.equal for s in steps if any(
        d[4] == steps.index(s) for d in listed))


def test_a_range_takes_an_id_whole_whatever_its_versions(resources):
    """A step's range ends at an id boundary: an id with more versions than the step's rows
    is taken whole, and the next range begins at the next id."""
    from totes.contracts.star_schema import TABLES
    from totes.reconcile.reconcile import _range_end

    run_pipeline(resources, reconcile=False)
    (first, second), = query(resources.warehouse, "SELECT min(payment_id), "
                             "min(payment_id) FILTER (WHERE payment_id > 1) FROM fact_payment")
    assert first == 1
    columns = [c.name for c in TABLES["fact_payment"].columns if c.name != "last_updated_time"]
    for seconds in range(1, 5):  # four more versions of payment 1
        query(resources.warehouse, f"INSERT INTO fact_payment ({', '.join(columns)}, "
              f"last_updated_time) SELECT {', '.join(columns)}, last_updated_time + "
              f"interval '{seconds} seconds' FROM fact_payment WHERE payment_id = 1 "
              "ORDER BY last_updated_time LIMIT 1")
    (total,), = query(resources.warehouse, "SELECT count(*) FROM fact_payment")
    relation, key = TABLES["fact_payment"].relation("public"), "payment_id"
    with resources.warehouse.session("test", "ranges") as session:
        conn = session.conn
        assert _range_end(conn, relation, key, None, 3) == (second, 3)
        assert _range_end(conn, relation, key, 1, 3) == (second, 3)
        assert _range_end(conn, relation, key, 1, 5) == (second, 5)
        assert _range_end(conn, relation, key, 1, 6) == (second + 1, 6)
        assert _range_end(conn, relation, key, None, total) == (None, total)
        assert _range_end(conn, relation, key, second, total) == (None, total - 5)


def test_source_changes_after_the_last_load_are_pending(resources):
    run_pipeline(resources, reconcile=False)
    query(resources.source, "UPDATE payment SET paid = NOT paid, last_updated = now() "
                            "WHERE payment_id = 7")
    query(resources.source, "INSERT INTO sales_order (created_at, last_updated, design_id, "
                            "staff_id, counterparty_id, units_sold, unit_price, currency_id, "
                            "agreed_delivery_date, agreed_payment_date, "
                            "agreed_delivery_location_id) VALUES (now(), now(), 1, 1, 1, 10, "
                            "2.50, 1, '2025-01-01', '2025-01-02', 1)")
    query(resources.source, "UPDATE staff SET first_name = 'Later', last_updated = now() "
                            "WHERE staff_id = 4")

    result = reconcile(resources.source, resources.warehouse)

    assert result.equal, result.summary()
    tables = by_table(result)
    assert (tables["fact_payment"].pending, tables["fact_sales_order"].pending,
            tables["dim_staff"].pending) == (1, 1, 1)
    assert "3 pending" in result.summary()


def test_totes_reconcile_exits_1_with_the_differences_and_0_when_equal(resources, monkeypatch):
    run_pipeline(resources, reconcile=False)
    monkeypatch.setenv("TOTES_SOURCE_URL", _url(resources.source))
    monkeypatch.setenv("TOTES_WAREHOUSE_URL", _url(resources.warehouse))
    monkeypatch.setenv("TOTES_LAKE", resources.lake.root)
    runner = CliRunner()
    clean = runner.invoke(app, ["reconcile", "--json"])
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.output)["equal"] is True
    query(resources.warehouse, "UPDATE dim_currency SET currency_name = 'Pound' "
                               "WHERE currency_code = 'GBP'")
    dirty = runner.invoke(app, ["reconcile"])
    assert dirty.exit_code == 1
    assert "dim_currency" in dirty.output and "currency_name" in dirty.output
    assert "Pound Sterling" in dirty.output and "Pound" in dirty.output
    as_json = json.loads(runner.invoke(app, ["reconcile", "--json", "--limit", "1"]).output)
    assert as_json["differences"] == 1 and as_json["tables"][2]["listed"][0]["key"] == {
        "currency_id": 1}
    assert Decimal(as_json["sums"][0]["source"]) == Decimal(as_json["sums"][0]["warehouse"])


def _url(database) -> str:
    params = database.params
    socket_dir = params["unix_sock"].rsplit("/", 1)[0]
    return f"postgresql://{params['user']}:@/{params['database']}?host={socket_dir}"


def test_reconcile_before_any_load_says_what_to_run(seeded_source, warehouse):
    from totes.contracts.errors import ConfigError

    with pytest.raises(ConfigError, match="has no star schema in schema public yet .*run `totes "
                                          "load`"):
        reconcile(seeded_source, warehouse)


def test_a_silent_change_that_breaks_a_rule_is_a_difference_not_quarantined(resources):
    """design 2's name set NULL without moving last_updated: never extracted, so the
    quarantine does not hold it; the warehouse still says 'Steel'. Reconcile reports it, and
    counts a row as quarantined only when the quarantine holds that version."""
    run_pipeline(resources)
    [[name]] = query(resources.warehouse, "SELECT design_name FROM dim_design WHERE "
                                          "design_id = 2")
    query(resources.source, "ALTER TABLE design ALTER COLUMN design_name DROP NOT NULL")
    query(resources.source, "UPDATE design SET design_name = NULL WHERE design_id = 2")

    result = reconcile(resources.source, resources.warehouse)

    [design] = [t for t in result.tables if t.table == "dim_design"]
    assert not result.equal and design.quarantined == 0
    assert [(d.key, d.column, d.source, d.warehouse) for d in design.listed] == [
        ({"design_id": 2}, "design_name", None, name)]

    # The same NULL with a new last_updated is extracted and quarantined: then it counts so.
    query(resources.source, "UPDATE design SET last_updated = now() WHERE design_id = 2")
    run_pipeline(resources)
    again = reconcile(resources.source, resources.warehouse)
    [design] = [t for t in again.tables if t.table == "dim_design"]
    assert again.equal and design.quarantined == 1


def test_control_characters_in_a_source_value_are_shown_not_sent_to_the_terminal(
        resources, monkeypatch):
    """A design name with terminal escapes (retitle, bell, clear screen) and Rich markup,
    changed without a new last_updated, is a difference: totes reconcile shows it with the
    escapes written out, sends no control character, and reads no markup in it."""
    run_pipeline(resources, reconcile=False)
    evil = "Evil\x1b]0;PWNED\x07\x1b[2J[/]\u202e"
    query(resources.source, "UPDATE design SET design_name = :n WHERE design_id = 2", n=evil)
    monkeypatch.setenv("TOTES_SOURCE_URL", _url(resources.source))
    monkeypatch.setenv("TOTES_WAREHOUSE_URL", _url(resources.warehouse))
    monkeypatch.setenv("TOTES_LAKE", resources.lake.root)

    shown = CliRunner().invoke(app, ["reconcile"])

    assert shown.exit_code == 1, shown.output
    assert "Evil\\x1b]0;PWNED\\x07\\x1b[2J[/]\\u202e" in shown.output
    sent = {c for c in shown.output if ord(c) < 32 and c not in "\n\t" or "\x7f" <= c <= "\x9f"}
    assert sent == set()

    from totes.local.render import VisibleFormatter
    record = logging.LogRecord("totes", logging.WARNING, __file__, 1, "design %s", (evil,),
                               None)
    assert VisibleFormatter("%(message)s").format(record) == \
        "design Evil\\x1b]0;PWNED\\x07\\x1b[2J[/]\\u202e"


def test_a_quarantined_version_stays_quarantined_when_its_reference_arrives(resources):
    """A staff row held for a department that did not exist yet; the department arrives
    (the staff row unchanged): until a retry, reconcile counts the row quarantined, not a
    difference, although the rules would pass it now."""
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE staff DROP CONSTRAINT staff_department_id_fkey")
    query(resources.source, "INSERT INTO staff (staff_id, first_name, last_name, "
          "department_id, email_address, created_at, last_updated) VALUES (998, 'New', "
          "'Starter', 99, 'new@terrifictotes.com', '2024-11-18', '2024-11-18')")
    assert run_pipeline(resources).transform.quarantined == {"staff": 1}
    query(resources.source, "INSERT INTO department (department_id, department_name, "
          "location, manager, created_at, last_updated) VALUES (99, 'New', 'Leeds', 'M', "
          "'2024-11-18', '2024-11-18')")

    result = reconcile(resources.source, resources.warehouse)

    [staff] = [t for t in result.tables if t.table == "dim_staff"]
    assert result.equal, result.summary()
    assert (staff.quarantined, staff.differences) == (1, 0)
