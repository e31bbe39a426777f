"""Change data capture from PostgreSQL's log (extract_type: cdc): every committed version and
every delete reaches the lake once and the warehouse keeps them, on the real snapshot."""
from __future__ import annotations

import pyarrow as pa

from support import query, snapshot
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

    third = run_pipeline(resources)  # nothing new: nothing read twice
    assert all(r.rows == 0 for r in third.ingest)
    assert third.capture is not None and third.capture.position is not None
