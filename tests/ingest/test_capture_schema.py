"""A schema change read from PostgreSQL's change log follows the table's schema contract, as
a polled extract's does (issue 23): a new column and a widening evolve (the versions before
the change in a batch of the old shape, those after in a batch of the new one, whose footer
records the schema version and the changes), a dropped column no rule reads evolves, a new
column under ``columns: freeze`` stops the table naming it, ``discard_value`` leaves it out."""
from __future__ import annotations

from decimal import Decimal

import pytest
import yaml

from ingest.test_binlog_capture import binlog_resources  # noqa: F401 (a fixture)
from ingest.test_mysql_source import run_sql
from support import query
from totes.contracts.cdc import OPERATION
from totes.contracts.errors import CaptureStopped
from totes.contracts.quarantine import UNREADABLE
from totes.local.runner import run_pipeline
from totes.utils.footers import batch_files, read_footer


def _with_contract(resources, table: str, **contract):
    document = yaml.safe_load(open(resources.config_path).read())
    document["tables"][table]["schema_contract"] = contract
    open(resources.config_path, "w").write(yaml.safe_dump(document))
    return resources


def _batches(lake, table: str) -> list[tuple[list[str], list[dict], object]]:
    """Each batch of ``table``: its columns, its rows, its footer's schema record."""
    found = []
    for key in lake.keys_after(table, None):
        rows = [row for f in batch_files(lake, key) for row in lake.read_table(f).to_pylist()]
        names = lake.read_table(batch_files(lake, key)[0]).column_names
        found.append((names, rows, read_footer(lake, key).source_schema))
    return found


def test_a_new_column_and_a_widening_read_from_the_log_evolve(cdc_resources):
    resources = cdc_resources
    run_pipeline(resources)
    query(resources.source, "UPDATE sales_order SET units_sold = 7, last_updated = now() "
                            "WHERE sales_order_id = 1")
    query(resources.source, "ALTER TABLE sales_order ADD COLUMN note text")
    query(resources.source, "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint")
    query(resources.source, "UPDATE sales_order SET units_sold = 5000000000, note = 'big', "
                            "last_updated = now() WHERE sales_order_id = 2")
    result = run_pipeline(resources)  # no CaptureStopped: the contract evolves both

    *_, before, after = _batches(resources.lake, "sales_order")
    assert "note" not in before[0] and [r["sales_order_id"] for r in before[1]] == [1]
    assert before[2] is None  # the old shape, as every batch before the change
    assert "note" in after[0]
    assert [(r["sales_order_id"], r["units_sold"], r["note"], r[OPERATION])
            for r in after[1]] == [(2, 5000000000, "big", "update")]
    record = after[2]
    assert record.version == 2
    assert sorted((c.column, c.change, c.action) for c in record.changes) == [
        ("note", "added", "evolved"), ("units_sold", "widened", "evolved")]
    [ingested] = [r for r in result.ingest if r.table == "sales_order"]
    assert ingested.schema_version == 2 and len(ingested.schema_changes) == 2
    # the widened measure reached the star schema, and everything agrees with the source
    assert query(resources.warehouse, "SELECT units_sold FROM fact_sales_order_current "
                 "WHERE sales_order_id = 2") == [[5000000000]]
    assert result.reconcile.equal

    # later batches keep the version, without changes; a dropped column no rule reads evolves
    query(resources.source, "UPDATE sales_order SET note = 'later', last_updated = now() "
                            "WHERE sales_order_id = 3")
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE sales_order DROP COLUMN note")
    query(resources.source, "UPDATE sales_order SET unit_price = 9.99, last_updated = now() "
                            "WHERE sales_order_id = 4")
    last = run_pipeline(resources)
    *_, kept, dropped = _batches(resources.lake, "sales_order")
    assert (kept[2].version, kept[2].changes) == (2, [])
    assert [r["note"] for r in kept[1]] == ["later"]
    assert "note" not in dropped[0] and dropped[2].version == 3
    assert [(c.column, c.change) for c in dropped[2].changes] == [("note", "dropped")]
    assert query(resources.warehouse, "SELECT unit_price FROM fact_sales_order_current "
                 "WHERE sales_order_id = 4") == [[Decimal("9.99")]]
    assert last.reconcile.equal


def _payment_gains_memo(resources, with_cdc, columns: str, set_too: str = ""):
    """``resources`` with payment on cdc under ``columns``, run once; then payment gains a
    column ``memo`` and row 1 a value in it (and ``set_too``, more assignments)."""
    resources = _with_contract(with_cdc(resources), "payment", columns=columns)
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE payment ADD COLUMN memo text")
    query(resources.source, f"UPDATE payment SET memo = 'x', {set_too}last_updated = now() "
                            "WHERE payment_id = 1")
    return resources


def test_a_new_column_under_freeze_stops_the_table_naming_it(resources, with_cdc):
    resources = _payment_gains_memo(resources, with_cdc, "freeze")
    query(resources.source, "UPDATE sales_order SET units_sold = 8, last_updated = now() "
                            "WHERE sales_order_id = 1")
    with pytest.raises(CaptureStopped, match="table payment: table payment has a new column "
                                             "'memo' .* columns: freeze"):
        run_pipeline(resources)
    # the other tables landed
    *_, (names, rows, _) = _batches(resources.lake, "sales_order")
    assert [(r["sales_order_id"], r["units_sold"]) for r in rows] == [(1, 8)]


def test_a_new_column_under_discard_value_is_left_out_of_the_lake(resources, with_cdc):
    resources = _payment_gains_memo(resources, with_cdc, "discard_value",
                                    "payment_amount = 12.5, ")
    assert run_pipeline(resources).reconcile.equal
    query(resources.source, "UPDATE payment SET memo = 'y', payment_amount = 13.5, "
                            "last_updated = now() WHERE payment_id = 1")
    assert run_pipeline(resources).reconcile.equal
    batches = _batches(resources.lake, "payment")
    assert all("memo" not in names for names, _, _ in batches)
    assert [r["payment_amount"] for _, rows, _ in batches[-2:] for r in rows] == [
        Decimal("12.5"), Decimal("13.5")]
    # the batch after the change records it (v2, memo discarded); the next keeps v2 unchanged
    assert [(c.column, c.action) for c in batches[-2][2].changes] == [("memo", "discarded")]
    assert (batches[-1][2].version, batches[-1][2].changes) == (2, [])


def test_an_incompatible_change_under_discard_value_quarantines_the_value_and_the_row_lands(
        resources, with_cdc):
    resources = _with_contract(with_cdc(resources), "payment", data_type="discard_value")
    run_pipeline(resources)
    (before,), = query(resources.warehouse, "SELECT count(*) FROM fact_payment")
    query(resources.source, "ALTER TABLE payment ALTER COLUMN company_ac_number TYPE text")
    query(resources.source, "UPDATE payment SET company_ac_number = 'n/a', "
                            "last_updated = now() WHERE payment_id = 2")
    query(resources.source, "UPDATE payment SET company_ac_number = '42', "
                            "last_updated = now() WHERE payment_id = 3")
    result = run_pipeline(resources)  # no CaptureStopped

    *_, (names, rows, record) = _batches(resources.lake, "payment")
    assert [(c.column, c.change, c.action) for c in record.changes] == [
        ("company_ac_number", "changed", "values_cast")]
    assert [(r["payment_id"], r["company_ac_number"], r[UNREADABLE]) for r in rows] == [
        (2, None, '{"company_ac_number": "n/a"}'), (3, 42, None)]
    (after,), = query(resources.warehouse, "SELECT count(*) FROM fact_payment")
    assert after == before + 2  # no rule reads the column: both versions land
    assert result.reconcile.equal


def _killed_after_the_old_shape_batch(resources, monkeypatch) -> None:
    """Run the pipeline once, its change-log read killed after it published the batch a
    schema change ended and before the rest (the other batches, the position record)."""
    from totes.ingest import capture

    def killed(*args, **kwargs):
        raise OSError("killed")

    with monkeypatch.context() as patched:
        patched.setattr(capture._Capture, "_publish", killed)
        with pytest.raises(OSError, match="killed"):
            run_pipeline(resources)


def test_a_read_stopped_after_the_old_shape_batch_loses_and_doubles_nothing(
        cdc_resources, monkeypatch):
    resources = cdc_resources
    run_pipeline(resources)
    query(resources.source, "UPDATE sales_order SET units_sold = 7, last_updated = now() "
                            "WHERE sales_order_id = 1")
    query(resources.source, "ALTER TABLE sales_order ADD COLUMN note text")
    query(resources.source, "UPDATE sales_order SET note = 'n', last_updated = now() "
                            "WHERE sales_order_id = 2")
    _killed_after_the_old_shape_batch(resources, monkeypatch)
    assert run_pipeline(resources).reconcile.equal
    versions = [(r["sales_order_id"], r.get("note")) for _, rows, _ in
                _batches(resources.lake, "sales_order")[1:] for r in rows]
    assert versions == [(1, None), (2, "n")]  # each once, in its shape


def test_a_schema_change_read_from_a_mysql_binlog_follows_the_contract(
        binlog_resources):  # noqa: F811 (the fixture imported above)
    """MariaDB: an ALTER TABLE is decided at the table's next table map (its columns) with the
    source catalog's types; one no row followed in the read is recorded by a batch of no
    rows; a narrowing under data_type: discard_value casts the values."""
    resources = _with_contract(binlog_resources, "payment", data_type="discard_value")
    run_pipeline(resources)
    run_sql(resources.source,
            "UPDATE sales_order SET units_sold = 7 WHERE sales_order_id = 1",
            "ALTER TABLE sales_order ADD COLUMN note VARCHAR(20)",
            "ALTER TABLE sales_order MODIFY units_sold BIGINT NOT NULL",
            "UPDATE sales_order SET units_sold = 5000000000, note = 'big' "
            "WHERE sales_order_id = 2",
            "ALTER TABLE design ADD COLUMN colour VARCHAR(20)",
            "ALTER TABLE payment MODIFY company_ac_number VARCHAR(20)",
            "UPDATE payment SET company_ac_number = 'n/a' WHERE payment_id = 2",
            "UPDATE payment SET company_ac_number = '42' WHERE payment_id = 3")
    result = run_pipeline(resources)  # no CaptureStopped

    *_, before, after = _batches(resources.lake, "sales_order")
    assert "note" not in before[0] and [r["sales_order_id"] for r in before[1]] == [1]
    assert [(r["sales_order_id"], r["units_sold"], r["note"]) for r in after[1]] == [
        (2, 5000000000, "big")]
    assert (after[2].version, sorted((c.column, c.change) for c in after[2].changes)) == \
        (2, [("note", "added"), ("units_sold", "widened")])
    *_, (names, rows, record) = _batches(resources.lake, "design")
    assert rows == [] and "colour" in names  # no row yet: the batch records the change
    assert [(c.column, c.change) for c in record.changes] == [("colour", "added")]
    *_, (_, rows, record) = _batches(resources.lake, "payment")
    assert [(r["payment_id"], r["company_ac_number"], r[UNREADABLE]) for r in rows] == [
        (2, None, '{"company_ac_number": "n/a"}'), (3, 42, None)]  # cast as when polled
    assert record.changes[0].action == "values_cast"
    assert query(resources.warehouse, "SELECT units_sold FROM fact_sales_order_current "
                 "WHERE sales_order_id = 2") == [[5000000000]]
    assert result.reconcile.equal

    run_sql(resources.source, "UPDATE design SET colour = 'red' WHERE design_id = 1",
            "UPDATE payment SET company_ac_number = '7' WHERE payment_id = 4")
    run_pipeline(resources)
    *_, (_, rows, record) = _batches(resources.lake, "design")
    assert [(r["design_id"], r["colour"]) for r in rows] == [(1, "red")]
    assert (record.version, record.changes) == (2, [])
    *_, (_, rows, record) = _batches(resources.lake, "payment")  # the next read casts too
    assert [(r["payment_id"], r["company_ac_number"]) for r in rows] == [(4, 7)]
    assert (record.version, record.changes) == (2, [])


def test_a_binlog_read_killed_after_the_old_shape_batch_reads_the_alter_again(
        binlog_resources, monkeypatch):  # noqa: F811 (the fixture imported above)
    """A type change alone (no column named differently) is seen only by its ALTER TABLE: the
    batch before it ends before the statement, so the next read decides it again."""
    resources = binlog_resources
    run_pipeline(resources)
    run_sql(resources.source,
            "UPDATE sales_order SET units_sold = 7 WHERE sales_order_id = 1",
            "ALTER TABLE sales_order MODIFY units_sold BIGINT NOT NULL",
            "UPDATE sales_order SET units_sold = 5000000000 WHERE sales_order_id = 2")
    _killed_after_the_old_shape_batch(resources, monkeypatch)
    result = run_pipeline(resources)
    assert result.reconcile.equal and result.transform.quarantined == {}
    *_, before, after = _batches(resources.lake, "sales_order")
    assert [(r["sales_order_id"], r["units_sold"]) for r in before[1] + after[1]] == [
        (1, 7), (2, 5000000000)]
    assert [(c.column, c.change) for c in after[2].changes] == [("units_sold", "widened")]


@pytest.mark.parametrize("sql, stops", [
    ("ALTER TABLE design ADD COLUMN colour VARCHAR(20)", False),
    ("ALTER TABLE design RENAME COLUMN design_name TO name", False),
    ("ALTER TABLE design ADD INDEX by_name (design_name)", False),
    ("ALTER TABLE design RENAME TO design_old", True),
    ("ALTER TABLE design RENAME design_old", True),
    ("ALTER TABLE design TRUNCATE PARTITION p1", True),
    ("ALTER TABLE design EXCHANGE PARTITION p1 WITH TABLE other", True),
    ("ALTER TABLE design IMPORT TABLESPACE", True),
])
def test_an_alter_table_that_changes_rows_or_the_name_stops_the_table(sql, stops):
    from totes.ingest.binlog_capture import _ROWS_OR_NAME

    assert bool(_ROWS_OR_NAME.search(sql)) is stops
