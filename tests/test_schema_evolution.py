"""Source schema changes between two runs, on the real snapshot and real servers: each batch's
footer records the schema it was read with and the table's schema version; the schema
contract (``schema_contract``) decides what a new column or a type change does; transform
reads batches of several schema versions together; a widened measure widens its fact column
in the load's transaction; nothing is doubled or lost."""
from __future__ import annotations

import json

import pytest

from support import CONFIG, query
from totes.contracts.config import parse_config_text, resolve_tables
from totes.contracts.errors import SourceSchemaError
from totes.contracts.quarantine import UNREADABLE
from totes.contracts.star_schema import TABLES
from totes.ingest.extract import ingest_table
from totes.local.runner import Resources, run_pipeline
from totes.local.status import pipeline_status
from totes.utils.config_file import load_config
from totes.utils.footers import read_footer
from totes.utils.ledger import SqliteLedger


def _with_contract(resources: Resources, tmp_path, contract: str) -> Resources:
    """``resources`` whose pipeline file is the shipped one with ``contract`` (YAML flow
    mapping) as every table's ``schema_contract``."""
    text = open(CONFIG).read()
    text = text.replace("defaults:\n", f"defaults:\n  schema_contract: {contract}\n", 1)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return Resources(resources.source, resources.warehouse, resources.lake,
                     resources.processed, str(path), resources.ledger)


def _plan(resources: Resources, table: str):
    return next(p for p in resolve_tables(load_config(resources.config_path))
                if p.table == table)


def _batches(resources: Resources, table: str) -> list[str]:
    return resources.lake.keys_after(table, None)


def _column_types(warehouse, table: str) -> dict[str, str]:
    return dict(query(warehouse, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = 'public' AND table_name = :t", t=table))


def _star_columns(warehouse) -> dict[str, list[str]]:
    return {name: sorted(_column_types(warehouse, name)) for name in TABLES}


@pytest.fixture
def tracked(resources, tmp_path) -> Resources:
    return Resources(resources.source, resources.warehouse, resources.lake,
                     resources.processed, resources.config_path,
                     SqliteLedger(str(tmp_path / "ledger.db")))


def test_a_new_column_evolves_into_the_lake_from_the_batch_that_brought_it(tracked):
    run_pipeline(tracked)
    star = _star_columns(tracked.warehouse)
    [first] = _batches(tracked, "staff")
    assert read_footer(tracked.lake, first).schema_version == 1
    query(tracked.source, "ALTER TABLE staff ADD COLUMN nickname text")
    query(tracked.source, "UPDATE staff SET nickname = 'Jo', first_name = 'Joanna', "
                          "last_updated = now() WHERE staff_id = 1")

    run_pipeline(tracked)

    first, second = _batches(tracked, "staff")
    footer = read_footer(tracked.lake, second)
    assert footer.schema_version == 2
    [change] = footer.source_schema.changes
    assert (change.column, change.change, change.new_type, change.action) == \
        ("nickname", "added", "text", "evolved")
    assert "nickname" not in tracked.lake.read_table(first).column_names
    assert tracked.lake.read_table(second).to_pylist()[0]["nickname"] == "Jo"
    # The star schema changes only on purpose: the same columns, the new version loaded.
    assert _star_columns(tracked.warehouse) == star
    assert query(tracked.warehouse, "SELECT first_name FROM dim_staff WHERE staff_id = 1") \
        == [["Joanna"]]
    status = pipeline_status(load_config(tracked.config_path), tracked.ledger, tracked.lake,
                             tracked.processed, None, None)
    staff = next(s for s in status.tables if s.table == "staff")
    assert staff.schema_version == 2
    assert staff.schema_change["changes"][0]["column"] == "nickname"
    assert next(s for s in status.tables if s.table == "design").schema_version == 1
    [record] = [r for r in tracked.ledger.history("ingest", "staff", 5) if r.rows > 0][:1]
    assert record.details["schema_version"] == 2
    assert record.details["schema_changes"][0]["change"] == "added"


def test_a_new_column_under_columns_freeze_stops_the_table_naming_it(resources, tmp_path):
    frozen = _with_contract(resources, tmp_path, "{columns: freeze}")
    ingest_table(_plan(frozen, "staff"), frozen.source, frozen.lake)
    query(frozen.source, "ALTER TABLE staff ADD COLUMN nickname text")
    query(frozen.source, "UPDATE staff SET last_updated = now() WHERE staff_id = 1")
    with pytest.raises(SourceSchemaError, match="table staff has a new column 'nickname' "
                                                r"\(text\) and its schema_contract says "
                                                "columns: freeze"):
        ingest_table(_plan(frozen, "staff"), frozen.source, frozen.lake)
    assert len(_batches(frozen, "staff")) == 1  # nothing written


def test_a_new_column_under_discard_value_is_left_out_of_the_lake(resources, tmp_path):
    discarding = _with_contract(resources, tmp_path, "{columns: discard_value}")
    ingest_table(_plan(discarding, "staff"), discarding.source, discarding.lake)
    query(discarding.source, "ALTER TABLE staff ADD COLUMN nickname text")
    query(discarding.source, "UPDATE staff SET last_updated = now() WHERE staff_id = 1")
    result = ingest_table(_plan(discarding, "staff"), discarding.source, discarding.lake)
    assert result.rows == 1 and result.schema_version == 2
    assert result.schema_changes[0]["action"] == "discarded"
    assert "nickname" not in discarding.lake.read_table(result.key).column_names

    query(discarding.source, "UPDATE staff SET last_updated = now() WHERE staff_id = 2")
    later = ingest_table(_plan(discarding, "staff"), discarding.source, discarding.lake)
    assert later.rows == 1  # the column is still left out, and is not new again
    assert (later.schema_version, later.schema_changes) == (2, None)


def test_widening_a_measure_a_rule_reads_widens_its_fact_column(resources):
    run_pipeline(resources)
    (before,), = query(resources.warehouse, "SELECT count(*) FROM fact_sales_order")
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint")
    query(resources.source, "UPDATE sales_order SET units_sold = 5000000000, "
                            "last_updated = now() WHERE sales_order_id = 1")

    result = run_pipeline(resources)

    sales = next(r for r in result.ingest if r.table == "sales_order")
    assert sales.schema_changes == [{"column": "units_sold", "change": "widened",
                                     "old_type": "integer", "new_type": "bigint",
                                     "action": "evolved"}]
    assert result.transform.quarantined == {}
    assert _column_types(resources.warehouse, "fact_sales_order")["units_sold"] == "bigint"
    assert query(resources.warehouse, "SELECT units_sold FROM fact_sales_order_current "
                                      "WHERE sales_order_id = 1") == [[5000000000]]
    (after,), = query(resources.warehouse, "SELECT count(*) FROM fact_sales_order")
    assert after == before + 1  # one new version, nothing doubled
    assert result.reconcile is None or result.reconcile.equal


def test_widening_a_column_no_rule_reads_changes_only_the_lake(resources):
    run_pipeline(resources)
    star = _star_columns(resources.warehouse)
    query(resources.source, "ALTER TABLE payment ALTER COLUMN company_ac_number TYPE bigint")
    query(resources.source, "UPDATE payment SET company_ac_number = 9000000000, "
                            "last_updated = now() WHERE payment_id = 2")
    result = run_pipeline(resources)
    payment = next(r for r in result.ingest if r.table == "payment")
    assert payment.schema_changes[0]["change"] == "widened"
    assert resources.lake.read_table(payment.key).to_pylist()[0]["company_ac_number"] == \
        9000000000
    assert _star_columns(resources.warehouse) == star
    assert _column_types(resources.warehouse, "fact_payment")["payment_amount"] == "numeric"


def test_a_narrowing_under_freeze_stops_naming_the_column_and_both_types(resources):
    ingest_table(_plan(resources, "design"), resources.source, resources.lake)
    query(resources.source, "ALTER TABLE design ALTER COLUMN design_name TYPE varchar(200)")
    query(resources.source, "UPDATE design SET last_updated = now() WHERE design_id = 1")
    with pytest.raises(SourceSchemaError, match=r"design.design_name changed type from text to "
                                                r"character varying\(200\) \(narrowed"):
        ingest_table(_plan(resources, "design"), resources.source, resources.lake)
    assert len(_batches(resources, "design")) == 1


def test_an_incompatible_change_under_discard_value_quarantines_the_value_and_the_row_lands(
        resources, tmp_path):
    discarding = _with_contract(resources, tmp_path, "{data_type: discard_value}")
    run_pipeline(discarding)
    (before,), = query(discarding.warehouse, "SELECT count(*) FROM fact_payment")
    query(discarding.source, "ALTER TABLE payment ALTER COLUMN company_ac_number TYPE text")
    query(discarding.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE text")
    query(discarding.source, "UPDATE payment SET company_ac_number = 'n/a', "
                             "last_updated = now() WHERE payment_id = 2")
    query(discarding.source, "UPDATE sales_order SET units_sold = 'many', "
                             "last_updated = now() WHERE sales_order_id = 1")
    query(discarding.source, "UPDATE sales_order SET units_sold = '7', "
                             "last_updated = now() WHERE sales_order_id = 2")

    result = run_pipeline(discarding)

    payment = next(r for r in result.ingest if r.table == "payment")
    assert payment.schema_changes[0]["action"] == "values_cast"
    [row] = discarding.lake.read_table(payment.key).to_pylist()
    assert row["company_ac_number"] is None
    assert json.loads(row[UNREADABLE]) == {"company_ac_number": "n/a"}
    # company_ac_number is read by no rule: the payment's version lands.
    (after,), = query(discarding.warehouse, "SELECT count(*) FROM fact_payment")
    assert after == before + 1
    # units_sold is: 'many' is quarantined with its column and text, '7' lands as 7.
    assert result.transform.quarantined == {"sales_order": 1}
    assert query(discarding.warehouse, "SELECT units_sold FROM fact_sales_order_current "
                                       "WHERE sales_order_id = 2") == [[7]]
    assert query(discarding.warehouse, "SELECT source_table, row_id, rule FROM "
                                       "totes.quarantined") == [["sales_order", 1, "unreadable"]]
    assert _column_types(discarding.warehouse, "fact_sales_order")["units_sold"] == "integer"


def test_an_unconstrained_numeric_evolves_and_a_value_beyond_follows_the_contract(
        resources, tmp_path):
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN unit_price TYPE numeric")
    query(resources.source, "UPDATE sales_order SET unit_price = 12345678.123456789, "
                            "last_updated = now() WHERE sales_order_id = 1")
    result = run_pipeline(resources)
    sales = next(r for r in result.ingest if r.table == "sales_order")
    assert sales.schema_changes[0]["new_type"] == "numeric"
    assert sales.schema_changes[0]["change"] == "widened"
    assert _column_types(resources.warehouse, "fact_sales_order")["unit_price"] == "numeric"
    assert [str(v) for v, in query(resources.warehouse, "SELECT unit_price FROM "
                                   "fact_sales_order_current WHERE sales_order_id = 1")] == \
        ["12345678.123456789"]

    query(resources.source, "UPDATE sales_order SET unit_price = 1e30, last_updated = now() "
                            "WHERE sales_order_id = 2")
    with pytest.raises(SourceSchemaError, match="sales_order.unit_price holds .* beyond "
                                                r"decimal128\(38, 9\)"):
        ingest_table(_plan(resources, "sales_order"), resources.source, resources.lake)

    discarding = _with_contract(resources, tmp_path, "{data_type: discard_value}")
    result = run_pipeline(discarding)
    assert result.transform.quarantined == {"sales_order": 1}
    assert query(discarding.warehouse, "SELECT row_id, rule FROM totes.quarantined") == \
        [[2, "unreadable"]]


def test_a_dropped_column_no_rule_reads_is_recorded_and_one_a_rule_reads_stops(resources):
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE payment DROP COLUMN company_ac_number")
    query(resources.source, "UPDATE payment SET last_updated = now() WHERE payment_id = 3")
    result = run_pipeline(resources)
    payment = next(r for r in result.ingest if r.table == "payment")
    assert payment.schema_changes == [{"column": "company_ac_number", "change": "dropped",
                                       "old_type": "integer", "new_type": None,
                                       "action": "recorded"}]
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment WHERE "
                                      "payment_id = 3") == [[2]]

    query(resources.source, "ALTER TABLE payment DROP COLUMN payment_amount")
    with pytest.raises(SourceSchemaError, match="table 'payment' has no column payment_amount, "
                                                "which transform reads"):
        ingest_table(_plan(resources, "payment"), resources.source, resources.lake)


def test_a_lake_of_three_schema_versions_transforms_and_loads_in_one_run(resources):
    plan = _plan(resources, "sales_order")
    ingest_table(plan, resources.source, resources.lake)
    query(resources.source, "ALTER TABLE sales_order ADD COLUMN channel text")
    query(resources.source, "UPDATE sales_order SET channel = 'web', units_sold = 11, "
                            "last_updated = now() WHERE sales_order_id = 1")
    ingest_table(plan, resources.source, resources.lake)
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint")
    query(resources.source, "UPDATE sales_order SET units_sold = 6000000000, "
                            "last_updated = now() WHERE sales_order_id = 1")
    ingest_table(plan, resources.source, resources.lake)
    versions = [read_footer(resources.lake, k).schema_version
                for k in _batches(resources, "sales_order")]
    assert versions == [1, 2, 3]

    run_pipeline(resources)

    (source_rows,), = query(resources.source, "SELECT count(*) FROM sales_order")
    assert query(resources.warehouse, "SELECT count(*), count(DISTINCT sales_order_id) FROM "
                                      "fact_sales_order") == [[source_rows + 2, source_rows]]
    assert query(resources.warehouse, "SELECT units_sold FROM fact_sales_order WHERE "
                                      "sales_order_id = 1 ORDER BY last_updated_date, "
                                      "last_updated_time")[-2:] == [[11], [6000000000]]


def test_a_lake_written_without_schema_records_keeps_working(resources, monkeypatch):
    """The previous release wrote no ``totes.schema``: its batches read as version 1, and
    the next change is version 2."""
    from totes.ingest import extract

    monkeypatch.setattr(extract, "decide_schema", lambda plan, inspected, lake: None)
    run_pipeline(resources)
    [old] = _batches(resources, "sales_order")
    assert read_footer(resources.lake, old).source_schema is None
    monkeypatch.undo()

    query(resources.source, "UPDATE sales_order SET units_sold = 3, last_updated = now() "
                            "WHERE sales_order_id = 5")
    result = run_pipeline(resources)
    sales = next(r for r in result.ingest if r.table == "sales_order")
    assert (sales.schema_version, sales.schema_changes) == (1, None)

    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint")
    query(resources.source, "UPDATE sales_order SET units_sold = 4, last_updated = now() "
                            "WHERE sales_order_id = 5")
    result = run_pipeline(resources)
    sales = next(r for r in result.ingest if r.table == "sales_order")
    assert sales.schema_version == 2
    assert sales.schema_changes[0]["column"] == "units_sold"


def test_the_contract_is_configured_per_table_over_the_defaults():
    config = parse_config_text(
        "defaults:\n  schema_contract: {data_type: discard_value}\n"
        "tables:\n  staff: {schema_contract: {columns: freeze}}\n  design: {}\n")
    plans = {p.table: p.schema_contract for p in resolve_tables(config)}
    assert (plans["staff"].columns, plans["staff"].data_type) == ("freeze", "discard_value")
    assert (plans["design"].columns, plans["design"].data_type) == ("evolve", "discard_value")


def test_a_mariadb_source_evolves_a_new_column_and_a_widening(mysql_source, tmp_path):
    from ingest.test_mysql_source import run_sql
    from totes.utils.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    plan = next(p for p in resolve_tables(load_config(CONFIG)) if p.table == "sales_order")
    ingest_table(plan, mysql_source, lake)
    run_sql(mysql_source, "ALTER TABLE sales_order ADD COLUMN channel varchar(20), "
                          "MODIFY units_sold bigint NOT NULL",
            "UPDATE sales_order SET channel = 'web', units_sold = 7000000000, "
            "last_updated = now(3) - INTERVAL 1 HOUR WHERE sales_order_id = 1")
    result = ingest_table(plan, mysql_source, lake)
    assert result.schema_version == 2
    assert {c["column"]: c["change"] for c in result.schema_changes} == \
        {"channel": "added", "units_sold": "widened"}
    [row] = lake.read_table(result.key).to_pylist()
    assert (row["channel"], row["units_sold"]) == ("web", 7000000000)
