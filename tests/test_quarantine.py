"""Poison rows on a real PostgreSQL: a row version that breaks a rule is quarantined, the rest
of its batch lands, a fixed version supersedes it, an orphan fact waits for its dimension row,
and no version is lost: warehouse + held + quarantine = lake."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

import pyarrow as pa
import pytest

from support import fact_versions, query, snapshot
from totes.load.quarantine import quarantine_report
from totes.local.runner import retry_quarantine, run_pipeline

ORDER_COLUMNS = ("created_at, last_updated, design_id, staff_id, counterparty_id, units_sold, "
                 "unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
                 "agreed_delivery_location_id")


def add_order(source, at: str = "2024-11-16", **values) -> int:
    row = {"design_id": 1, "staff_id": 1, "counterparty_id": 1, "units_sold": 5,
           "unit_price": "1.00", "currency_id": 1, "agreed_delivery_date": "2024-11-20",
           "agreed_payment_date": "2024-11-21", "agreed_delivery_location_id": 1, **values}
    (order,), = query(source, f"INSERT INTO sales_order ({ORDER_COLUMNS}) VALUES "  # nosec
                      "(CAST(:at AS timestamp), CAST(:at AS timestamp), :design_id, :staff_id, "
                      ":counterparty_id, :units_sold, CAST(:unit_price AS numeric), "
                      ":currency_id, :agreed_delivery_date, :agreed_payment_date, "
                      ":agreed_delivery_location_id) RETURNING sales_order_id", at=at, **row)
    return order


def lake_versions(resources, table: str) -> Counter:
    """Every row version of ``table`` the lake holds (with multiplicity)."""
    found = Counter()
    for key in resources.lake.keys_after(table, None):
        rows = resources.lake.read_table(key)
        found.update(zip(rows[f"{table}_id"].to_pylist(),
                         [m.replace(tzinfo=None) for m in rows["last_updated"].to_pylist()]))
    return found


def accounted_for(resources, table: str, fact: str) -> Counter:
    """Fact rows + held fact rows + quarantined (held or superseded) versions of ``table``."""
    found = Counter(fact_versions(resources.warehouse, fact, f"{table}_id"))
    found.update((i, datetime.combine(d, t)) for i, d, t in query(
        resources.warehouse, f"SELECT {table}_id, last_updated_date, last_updated_time "
                             f"FROM totes.held_{fact}"))
    report = quarantine_report(resources.processed, resources.warehouse, everything=True)
    found.update((e.row_id, datetime.fromisoformat(e.version)) for e in report.entries
                 if e.stage == "transform" and e.table == table and e.status != "released")
    return found


def held(resources) -> list:
    return quarantine_report(resources.processed, resources.warehouse).entries


def test_a_bad_fact_version_is_quarantined_the_rest_lands_and_the_fix_supersedes_it(resources):
    run_pipeline(resources)
    bad = add_order(resources.source, agreed_delivery_date="20/11/2024")
    good = add_order(resources.source, at="2024-11-16 00:00:01")

    first = run_pipeline(resources)

    assert first.transform.quarantined == {"sales_order": 1}
    assert first.load.batches  # the batch committed and loaded, the bad version aside
    loaded = {i for i, _ in fact_versions(resources.warehouse, "fact_sales_order",
                                          "sales_order_id")}
    assert good in loaded and bad not in loaded
    [entry] = held(resources)
    assert (entry.table, entry.row_id, entry.column, entry.value, entry.rule, entry.status) == \
        ("sales_order", bad, "agreed_delivery_date", "20/11/2024", "text_date", "held")
    assert entry.message == (f"sales_order row sales_order_id={bad}: agreed_delivery_date "
                             "'20/11/2024' is not a YYYY-MM-DD date")

    query(resources.source, "UPDATE sales_order SET agreed_delivery_date = '2024-11-20', "
          "last_updated = '2024-11-17' WHERE sales_order_id = :o", o=bad)
    fixed = run_pipeline(resources)

    assert fixed.transform.quarantined == {} and held(resources) == []
    (day,), = query(resources.warehouse, "SELECT last_updated_date FROM fact_sales_order "
                                         "WHERE sales_order_id = :o", o=bad)
    assert day.isoformat() == "2024-11-17"
    statuses = quarantine_report(resources.processed, resources.warehouse,
                                 everything=True).counts
    assert statuses == {"superseded": 1}
    assert accounted_for(resources, "sales_order", "fact_sales_order") == \
        lake_versions(resources, "sales_order")


@pytest.mark.parametrize("change, insert, rule, message", [
    ("ALTER TABLE sales_order ALTER COLUMN units_sold DROP NOT NULL", {"units_sold": None},
     "not_null", "units_sold is empty but fact_sales_order.units_sold is NOT NULL"),
    # A wider unit_price (numeric(12, 2)) no longer breaks fits_type: the fact's measure
    # widens with it (tests/test_schema_evolution.py).
])
def test_an_empty_or_oversized_value_is_quarantined_by_name(resources, change, insert, rule,
                                                            message):
    run_pipeline(resources)
    query(resources.source, change)
    bad = add_order(resources.source, **insert)
    good = add_order(resources.source, at="2024-11-16 00:00:01")

    result = run_pipeline(resources)

    assert result.transform.quarantined_rows == 1
    [entry] = held(resources)
    assert (entry.row_id, entry.rule) == (bad, rule)
    assert entry.message == f"sales_order row sales_order_id={bad}: {message}"
    assert good in {i for i, _ in fact_versions(resources.warehouse, "fact_sales_order",
                                                "sales_order_id")}
    assert accounted_for(resources, "sales_order", "fact_sales_order") == \
        lake_versions(resources, "sales_order")


def test_an_orphan_fact_waits_for_its_dimension_row_and_lands_once(resources):
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE sales_order DROP CONSTRAINT sales_order_staff_id_fkey")
    orphan = add_order(resources.source, staff_id=999)
    other = add_order(resources.source, at="2024-11-16 00:00:01")

    first = run_pipeline(resources)

    assert first.load.held == {"fact_sales_order": 1} and first.load.held_rows == 1
    assert first.load.waiting == {"fact_sales_order": 1}
    [entry] = held(resources)
    assert (entry.stage, entry.status, entry.row_id) == ("load", "waiting", orphan)
    assert entry.message == (f"fact_sales_order row sales_order_id={orphan}: sales_staff_id "
                             "999 has no dim_staff row")
    assert other in {i for i, _ in fact_versions(resources.warehouse, "fact_sales_order",
                                                 "sales_order_id")}
    again = run_pipeline(resources)  # nothing new: still waiting, not held twice
    assert again.load.held == {} and again.load.waiting == {"fact_sales_order": 1}

    query(resources.source, "INSERT INTO staff (staff_id, first_name, last_name, "
          "department_id, email_address, created_at, last_updated) VALUES (999, 'New', "
          "'Starter', 1, 'new@terrifictotes.com', '2024-11-18', '2024-11-18')")
    arrived = run_pipeline(resources)

    assert arrived.load.released == {"fact_sales_order": 1} and arrived.load.waiting == {}
    assert held(resources) == []
    rows = query(resources.warehouse, "SELECT sales_staff_id FROM fact_sales_order "
                                      "WHERE sales_order_id = :o", o=orphan)
    assert rows == [[999]]
    assert accounted_for(resources, "sales_order", "fact_sales_order") == \
        lake_versions(resources, "sales_order")


def test_an_orphan_in_a_bulk_first_load_is_held_and_every_key_stays_validated(resources):
    # The first load copies fact_sales_order's 11,188 rows straight into the empty table
    # (load.warehouse.bulk_copy); its foreign keys find the orphan when they are validated.
    query(resources.source, "ALTER TABLE sales_order DROP CONSTRAINT sales_order_staff_id_fkey")
    orphan = add_order(resources.source, staff_id=999)

    first = run_pipeline(resources)

    assert first.load.held == {"fact_sales_order": 1}
    sales = next(t for t in first.load.tables if t.table == "fact_sales_order")
    assert (sales.rows, sales.inserted) == (snapshot("sales_order").num_rows + 1,
                                            snapshot("sales_order").num_rows)
    [entry] = held(resources)
    assert entry.message == (f"fact_sales_order row sales_order_id={orphan}: sales_staff_id "
                             "999 has no dim_staff row")
    assert orphan not in {i for i, _ in fact_versions(resources.warehouse, "fact_sales_order",
                                                      "sales_order_id")}
    declared = query(resources.warehouse, "SELECT contype, count(*), bool_and(convalidated) "
                     "FROM pg_constraint WHERE conrelid = 'fact_sales_order'::regclass "
                     "GROUP BY 1 ORDER BY 1")
    assert declared == [["f", 9, True], ["p", 1, True], ["u", 1, True]]
    (orphans,), = query(resources.warehouse, "SELECT count(*) FROM fact_sales_order f "
                        "WHERE NOT EXISTS (SELECT 1 FROM dim_staff s "
                        "WHERE s.staff_id = f.sales_staff_id)")
    assert orphans == 0

    query(resources.source, "INSERT INTO staff (staff_id, first_name, last_name, "
          "department_id, email_address, created_at, last_updated) VALUES (999, 'New', "
          "'Starter', 1, 'new@terrifictotes.com', '2024-11-18', '2024-11-18')")
    arrived = run_pipeline(resources)
    assert arrived.load.released == {"fact_sales_order": 1} and held(resources) == []
    assert accounted_for(resources, "sales_order", "fact_sales_order") == \
        lake_versions(resources, "sales_order")


def test_a_bad_dimension_row_holds_its_facts_until_the_source_is_fixed(resources):
    run_pipeline(resources)
    (currency,), = query(resources.source, "INSERT INTO currency (currency_code, last_updated) "
                         "VALUES ('XYZ', '2024-11-16') RETURNING currency_id")
    order = add_order(resources.source, currency_id=currency)

    first = run_pipeline(resources)

    assert first.transform.quarantined == {"currency": 1}
    assert first.load.held == {"fact_sales_order": 1}
    entries = {e.stage: e for e in held(resources)}
    assert entries["transform"].message == (f"currency row currency_id={currency}: "
                                            "currency_code 'XYZ' has no ISO 4217 name")
    assert entries["load"].message.endswith(f"currency_id {currency} has no dim_currency row")

    query(resources.source, "UPDATE currency SET currency_code = 'JPY', "
                            "last_updated = '2024-11-17' WHERE currency_id = :c", c=currency)
    fixed = run_pipeline(resources)

    assert fixed.load.released == {"fact_sales_order": 1}
    assert query(resources.warehouse, "SELECT currency_name FROM dim_currency "
                                      "WHERE currency_id = :c", c=currency) == [["Yen"]]
    assert held(resources) == []
    assert order in {i for i, _ in fact_versions(resources.warehouse, "fact_sales_order",
                                                 "sales_order_id")}


def test_a_retry_puts_held_versions_through_the_rules_again(resources, monkeypatch):
    from totes.rules import dimensions

    run_pipeline(resources)
    (currency,), = query(resources.source, "INSERT INTO currency (currency_code, last_updated) "
                         "VALUES ('ZZZ', '2024-11-16') RETURNING currency_id")
    run_pipeline(resources)
    assert [e.rule for e in held(resources)] == ["iso_4217"]

    # As after an upgrade whose ISO 4217 data knows the code: the same row version passes.
    known = dimensions.currency_name
    monkeypatch.setattr(dimensions, "currency_name",
                        lambda code: "Testing code" if code == "ZZZ" else known(code))
    retried, loaded = retry_quarantine(resources.lake, resources.processed,
                                       resources.warehouse)

    assert retried.source_files == 0 and retried.quarantined == {}
    assert loaded.batches == [retried.manifest]
    assert query(resources.warehouse, "SELECT currency_name FROM dim_currency "
                                      "WHERE currency_id = :c", c=currency) == [["Testing code"]]
    assert held(resources) == []
    report = quarantine_report(resources.processed, resources.warehouse, everything=True)
    assert report.counts == {"released": 1}


def test_quarantine_files_keep_the_whole_row_and_its_rule(resources):
    run_pipeline(resources)
    bad = add_order(resources.source, agreed_payment_date="2024-13-01")
    result = run_pipeline(resources)
    from totes.utils.manifests import latest_manifest

    _, manifest = latest_manifest(resources.processed)
    [key] = manifest.quarantine
    rows = resources.processed.read_table(key)
    source_columns = snapshot("sales_order").column_names
    assert result.transform.manifest and key.startswith("_quarantine/sales_order/")
    assert set(source_columns) <= set(rows.column_names)
    [record] = rows.to_pylist()
    assert (record["sales_order_id"], record["_totes_rule"], record["_totes_column"]) == \
        (bad, "text_date", "agreed_payment_date")
    assert rows.schema.field("unit_price").type == pa.decimal128(10, 2)  # as in the lake


def test_quarantine_files_of_different_source_types_are_read_together(resources, monkeypatch):
    """units_sold becomes double precision, a row is quarantined; then text, another is: the
    report (every variant) and the retry read both files, values as text where the types
    differ, each original type recorded. The lake is written as before schema contracts
    (each batch in the source's types, as an earlier release wrote it: today's default
    contract would stop the table at such a change)."""
    from totes.contracts.quarantine import SOURCE_TYPES_KEY, concat_quarantined
    from totes.ingest import extract
    from totes.utils.manifests import latest_manifest

    monkeypatch.setattr(extract, "decide_schema", lambda plan, inspected, lake: None)
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE "
                            "double precision")
    first = add_order(resources.source, units_sold="1.5")  # not an int: fits_type
    assert run_pipeline(resources).transform.quarantined == {"sales_order": 1}
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE text")
    second = add_order(resources.source, at="2024-11-17", units_sold="lots")
    assert run_pipeline(resources).transform.quarantined == {"sales_order": 1}

    _, manifest = latest_manifest(resources.processed)
    files = [resources.processed.read_table(k) for k in manifest.quarantine]
    joined = concat_quarantined(files)
    assert joined.schema.field("units_sold").type == pa.string()
    assert json.loads(joined.schema.metadata[SOURCE_TYPES_KEY]) == {
        "units_sold": ["double", "string"]}
    for everything in (False, True):
        report = quarantine_report(resources.processed, resources.warehouse,
                                   everything=everything)
        held = {(e.row_id, e.column, e.value) for e in report.entries}
        assert {(first, "units_sold", "1.5"), (second, "units_sold", "lots")} <= held
    retried, _ = retry_quarantine(resources.lake, resources.processed, resources.warehouse)
    assert retried.quarantined == {"sales_order": 2}  # held again, nothing broke
