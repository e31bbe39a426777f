"""The main job on the real ToteSys snapshot, into a real warehouse; expected values are
computed from the snapshot files."""
from __future__ import annotations

import os
from decimal import Decimal

import pyarrow.compute as pc
import pytest

from support import query, snapshot
from totes.contracts.star_schema import TABLES
from totes.load.warehouse import load
from totes.local.runner import run_pipeline

SOURCE_OF = {"dim_staff": "staff", "dim_location": "address", "dim_design": "design",
             "dim_currency": "currency", "dim_counterparty": "counterparty",
             "dim_payment_type": "payment_type", "dim_transaction": "transaction",
             "fact_sales_order": "sales_order", "fact_purchase_order": "purchase_order",
             "fact_payment": "payment"}
FACT_TEXT_DATES = {"sales_order": ["agreed_delivery_date", "agreed_payment_date"],
                   "purchase_order": ["agreed_delivery_date", "agreed_payment_date"],
                   "payment": ["payment_date"]}


def fingerprint(warehouse) -> dict:
    """Row count and a digest of every row of every warehouse table."""
    result = {}
    for name, table in TABLES.items():
        order = ", ".join(table.merge_key)
        (count, digest), = query(warehouse, f"SELECT count(*), md5(string_agg(t::text, '|' "
                                            f"ORDER BY {order})) FROM {name} t")
        result[name] = (count, digest)
    return result


def referenced_dates() -> set:
    dates = set()
    for table, text_columns in FACT_TEXT_DATES.items():
        rows = snapshot(table)
        for column in ("created_at", "last_updated"):
            dates |= {d.date() for d in rows[column].to_pylist()}
        for column in text_columns:
            dates |= set(pc.strptime(rows[column], format="%Y-%m-%d", unit="s")
                         .cast("date32").to_pylist())
    return dates


@pytest.fixture
def first_run(resources):
    return run_pipeline(resources)


def test_every_table_has_the_snapshot_rows(first_run, resources):
    for warehouse_table, source_table in SOURCE_OF.items():
        (count,), = query(resources.warehouse, f"SELECT count(*) FROM {warehouse_table}")
        assert count == snapshot(source_table).num_rows, warehouse_table
    (count,), = query(resources.warehouse, "SELECT count(*) FROM dim_date")
    assert count == len(referenced_dates())
    # The numbers the issue names, which the snapshot's PROVENANCE.md also gives.
    (sales, purchases, payments), = query(
        resources.warehouse, "SELECT (SELECT count(*) FROM fact_sales_order), "
        "(SELECT count(*) FROM fact_purchase_order), (SELECT count(*) FROM fact_payment)")
    assert (sales, purchases, payments) == (11_187, 4_649, 15_836)


def test_every_fact_foreign_key_resolves(first_run, resources):
    for table in TABLES.values():
        for column, dimension in table.foreign_keys.items():
            key = TABLES[dimension].merge_key[0]
            (orphans,), = query(resources.warehouse,
                                f"SELECT count(*) FROM {table.name} f WHERE NOT EXISTS "
                                f"(SELECT 1 FROM {dimension} d WHERE d.{key} = f.{column})")
            assert orphans == 0, f"{table.name}.{column}"
    (missing,), = query(resources.warehouse, """
        SELECT count(*) FROM (
            SELECT created_date AS d FROM fact_sales_order UNION
            SELECT agreed_delivery_date FROM fact_purchase_order UNION
            SELECT payment_date FROM fact_payment) dates
        WHERE d NOT IN (SELECT date_id FROM dim_date)""")
    assert missing == 0


def test_a_known_sales_order_reads_back_with_its_types(first_run, resources):
    orders = snapshot("sales_order").to_pylist()
    order = orders[len(orders) // 2]
    counterparty = next(c for c in snapshot("counterparty").to_pylist()
                        if c["counterparty_id"] == order["counterparty_id"])
    address = next(a for a in snapshot("address").to_pylist()
                   if a["address_id"] == counterparty["legal_address_id"])

    (price, price_type, created_date, created_time, staff_id, delivery), = query(
        resources.warehouse,
        "SELECT unit_price, pg_typeof(unit_price)::text, created_date, created_time, "
        "sales_staff_id, agreed_delivery_date FROM fact_sales_order WHERE sales_order_id = :id",
        id=order["sales_order_id"])
    assert price_type == "numeric"
    assert price == Decimal(str(round(order["unit_price"], 2)))
    assert created_date == order["created_at"].date()
    assert created_time == order["created_at"].time().replace(
        microsecond=order["created_at"].microsecond // 1000 * 1000)
    assert staff_id == order["staff_id"]
    assert delivery.isoformat() == order["agreed_delivery_date"]

    (line_1, city, phone), = query(
        resources.warehouse,
        "SELECT counterparty_legal_address_line_1, counterparty_legal_city, "
        "counterparty_legal_phone_number FROM dim_counterparty WHERE counterparty_id = :id",
        id=order["counterparty_id"])
    assert (line_1, city, phone) == (address["address_line_1"], address["city"],
                                     address["phone"])


def test_transaction_order_ids_stay_integers(first_run, resources):
    (column_type,), = query(resources.warehouse,
                            "SELECT data_type FROM information_schema.columns WHERE "
                            "table_name = 'dim_transaction' AND column_name = 'sales_order_id'")
    assert column_type == "integer"
    expected = {row["transaction_id"]: row["sales_order_id"]
                for row in snapshot("transaction").to_pylist()}
    loaded = dict(query(resources.warehouse,
                        "SELECT transaction_id, sales_order_id FROM dim_transaction"))
    assert loaded == {k: (None if v is None else int(v)) for k, v in expected.items()}


def test_a_second_run_writes_nothing_and_changes_nothing(first_run, resources):
    lake_files = sorted(os.listdir(resources.lake.root))
    files_before = _all_files(resources.lake.root)
    before = fingerprint(resources.warehouse)

    second = run_pipeline(resources)

    assert [r.key for r in second.ingest] == [None] * 11
    assert sum(r.rows for r in second.ingest) == 0
    assert second.transform.manifest is None
    assert second.load.batches == []
    assert _all_files(resources.lake.root) == files_before
    assert sorted(os.listdir(resources.lake.root)) == lake_files
    assert fingerprint(resources.warehouse) == before


def test_redelivering_a_processed_batch_inserts_nothing(first_run, resources):
    before = fingerprint(resources.warehouse)
    batch = first_run.transform.manifest

    again = load(resources.processed, resources.warehouse, [batch])

    assert again.batches == [batch]
    assert sum(t.rows for t in again.tables) == 48_066 + len(referenced_dates()) \
        - sum(snapshot(t).num_rows for t in ("department",))
    assert sum(t.inserted + t.updated for t in again.tables) == 0
    assert fingerprint(resources.warehouse) == before


def _all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)
