"""``delete_detection: keys``: a hard delete in a polled table reaches the warehouse as a delete
version, found by comparing the source's keys with the lake's key index; once, whatever a
crash between the delete batch and the index, a rerun or a thinned schedule do. Real
PostgreSQL (and MariaDB), the real snapshot."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from support import CONFIG, query
from totes.contracts.config import resolve_tables
from totes.contracts.errors import ConfigError
from totes.ingest import deletes
from totes.local.runner import run_pipeline
from totes.utils.config_file import load_config
from totes.utils.ledger import SqliteLedger


def detecting(tmp_path, resources, every: int = 1, tables=("sales_order", "design")):
    """``resources`` whose configuration looks for hard deletes of ``tables``."""
    document = yaml.safe_load(open(CONFIG).read())
    for table in tables:
        document["tables"][table] = {**(document["tables"][table] or {}),
                                     "delete_detection": "keys",
                                     "delete_detection_every": every}
    path = tmp_path / "deletes.yaml"
    path.write_text(yaml.safe_dump(document))
    return dataclasses.replace(resources, config_path=str(path),
                               ledger=SqliteLedger(str(tmp_path / "ledger.sqlite3")))


def unreferenced(source) -> tuple[int, int]:
    """The newest sales order, and a design no sales order names."""
    (order,), = query(source, "SELECT max(sales_order_id) FROM sales_order")
    (design,), = query(source, "SELECT max(design_id) FROM design d WHERE NOT EXISTS "
                               "(SELECT 1 FROM sales_order s WHERE s.design_id = d.design_id)")
    return order, design


def delete_order(source, order: int) -> None:
    """A hard delete of a sales order, as ToteSys' application would make it: the delete
    sets its transaction's ``sales_order_id`` to NULL (ON DELETE SET NULL), and the
    application moves that transaction's ``last_updated``."""
    conn = source.connect("totes-test")
    try:
        conn.run("START TRANSACTION")
        named = [t for t, in conn.run("SELECT transaction_id FROM transaction "
                                      "WHERE sales_order_id = :i", i=order)]
        conn.run("DELETE FROM sales_order WHERE sales_order_id = :i", i=order)
        conn.run("UPDATE transaction SET last_updated = now() "
                 "WHERE transaction_id = ANY(:t)", t=named)
        conn.run("COMMIT")
    finally:
        conn.close()


def result_of(run, table):
    return next(r for r in run.ingest if r.table == table)


def test_a_hard_delete_of_a_fact_and_a_dimension_row_lands_as_a_delete_version(
        tmp_path, resources):
    resources = detecting(tmp_path, resources)
    first = run_pipeline(resources)
    assert result_of(first, "sales_order").delete_detection == {
        "source_keys": 11187, "lake_keys": 11187, "deleted": 0, "key": None}
    assert first.reconcile.equal
    order, design = unreferenced(resources.source)
    delete_order(resources.source, order)
    query(resources.source, "DELETE FROM design WHERE design_id = :i", i=design)

    second = run_pipeline(resources)

    found = result_of(second, "sales_order").delete_detection
    assert (found["source_keys"], found["lake_keys"], found["deleted"]) == (11186, 11187, 1)
    assert found["key"].startswith("sales_order/")
    assert result_of(second, "design").delete_detection["deleted"] == 1
    versions = query(resources.warehouse, "SELECT is_deleted, source_lsn FROM fact_sales_order "
                                          "WHERE sales_order_id = :i ORDER BY last_updated_date,"
                                          " last_updated_time", i=order)
    assert versions == [[False, 0], [True, 0]]  # the history keeps the row, then its delete
    assert query(resources.warehouse, "SELECT count(*) FROM fact_sales_order_current "
                                      "WHERE sales_order_id = :i", i=order) == [[0]]
    assert query(resources.warehouse, "SELECT is_deleted FROM dim_design WHERE design_id = :i",
                 i=design) == [[True]]
    assert second.reconcile.equal, second.reconcile.summary()

    third = run_pipeline(resources)  # nothing new: compared again, nothing more written
    assert result_of(third, "sales_order").delete_detection["deleted"] == 0
    assert query(resources.warehouse, "SELECT count(*) FROM fact_sales_order "
                                      "WHERE sales_order_id = :i", i=order) == [[2]]
    indexes = resources.lake.keys_after(f"{deletes.KEY_INDEX}/sales_order", None)
    assert len(indexes) == 1  # older indexes are removed once a newer one is written
    ids, through, _ = deletes.read_key_index(resources.lake, "sales_order")
    assert len(ids) == 11186 and order not in ids.to_pylist()
    assert through == resources.lake.newest_key("sales_order")


def test_a_crash_between_the_delete_batch_and_the_index_doubles_nothing(
        tmp_path, resources, monkeypatch):
    resources = detecting(tmp_path, resources, tables=("sales_order",))
    run_pipeline(resources)
    order, _ = unreferenced(resources.source)
    delete_order(resources.source, order)
    written = deletes._write_index

    def crash(*args, **kwargs):
        raise OSError("killed after the delete batch, before the key index")

    monkeypatch.setattr(deletes, "_write_index", crash)
    with pytest.raises(Exception, match="killed after the delete batch"):
        run_pipeline(resources)
    monkeypatch.setattr(deletes, "_write_index", written)

    again = run_pipeline(resources)

    # The delete batch the crashed run published is applied to the old index: no second one.
    assert result_of(again, "sales_order").delete_detection["deleted"] == 0
    assert query(resources.warehouse, "SELECT count(*) FILTER (WHERE is_deleted), count(*) "
                                      "FROM fact_sales_order WHERE sales_order_id = :i",
                 i=order) == [[1, 2]]
    assert again.reconcile.equal


def test_a_row_deleted_then_inserted_again_under_its_key_is_current_again(tmp_path, resources):
    resources = detecting(tmp_path, resources, tables=("sales_order",))
    run_pipeline(resources)
    order, _ = unreferenced(resources.source)
    saved = query(resources.source, "SELECT * FROM sales_order WHERE sales_order_id = :i",
                  i=order)
    delete_order(resources.source, order)
    run_pipeline(resources)
    conn = resources.source.connect("totes-test")
    try:
        conn.run("INSERT INTO sales_order SELECT (r).* FROM (SELECT "
                 "jsonb_populate_record(NULL::sales_order, :row::jsonb) AS r) s",
                 row=_json_row(resources.source, saved[0]))
        conn.run("UPDATE sales_order SET last_updated = now() WHERE sales_order_id = :i",
                 i=order)
        conn.run("COMMIT")
    finally:
        conn.close()

    back = run_pipeline(resources)

    assert result_of(back, "sales_order").delete_detection["deleted"] == 0
    assert query(resources.warehouse, "SELECT count(*) FROM fact_sales_order_current "
                                      "WHERE sales_order_id = :i", i=order) == [[1]]
    ids, _, _ = deletes.read_key_index(resources.lake, "sales_order")
    assert order in ids.to_pylist()
    assert back.reconcile.equal


def _json_row(source, values) -> str:
    import json

    columns = [c for c, in query(source, "SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'sales_order' "
                                         "ORDER BY ordinal_position")]
    return json.dumps(dict(zip(columns, values)), default=str)


def test_delete_detection_every_n_runs_compares_on_every_nth(tmp_path, resources):
    resources = detecting(tmp_path, resources, every=3, tables=("sales_order",))
    compared = [result_of(run_pipeline(resources), "sales_order").delete_detection is not None
                for _ in range(5)]
    assert compared == [True, False, False, True, False]


def test_delete_detection_is_refused_where_it_does_not_apply(tmp_path):
    document = yaml.safe_load(open(CONFIG).read())
    document["tables"]["sales_order"] = {"extract_type": "cdc", "delete_detection": "keys"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="delete_detection: keys is for an incremental table"):
        resolve_tables(load_config(str(path)))
    document["tables"]["sales_order"] = {"delete_detection": "sometimes"}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="delete_detection"):
        load_config(str(path))


def test_a_hard_delete_in_a_mysql_source_is_found_by_its_keys(
        mysql_source, warehouse, tmp_path):
    from totes.local.runner import Resources
    from totes.utils.lake import Lake

    resources = detecting(tmp_path, Resources(
        mysql_source, warehouse, Lake(str(tmp_path / "lake")),
        Lake(str(tmp_path / "processed")), CONFIG), tables=("design",))
    run_pipeline(resources)
    conn = mysql_source.connect("totes-test")
    try:
        (design,), = conn.run("SELECT max(design_id) FROM design d WHERE NOT EXISTS "
                              "(SELECT 1 FROM sales_order s WHERE s.design_id = d.design_id)")
        conn.run(f"DELETE FROM design WHERE design_id = {int(design)}")
    finally:
        conn.close()

    found = run_pipeline(resources)

    assert result_of(found, "design").delete_detection["deleted"] == 1
    assert query(warehouse, "SELECT is_deleted FROM dim_design WHERE design_id = :i",
                 i=design) == [[True]]
    assert found.reconcile.equal, found.reconcile.summary()
