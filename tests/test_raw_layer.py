"""The raw layer (issue 23, item 3), on the real snapshot and a real PostgreSQL (one test on
MariaDB): a table no star-schema rule reads lands in ``raw.<table>`` with every version and
``raw.<table>_current`` equals the source; ``raw: true`` fills a modelled table's too; new,
widened and dropped columns; a ``cdc`` delete; a reload adds nothing; reconciliation and the
report see it."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
import yaml

from support import CONFIG, query
from totes.contracts.config import raw_tables
from totes.load.pending import pending_work
from totes.load.warehouse import load
from totes.local.runner import Resources, run_pipeline
from totes.utils.config_file import load_config
from totes.utils.lake import Lake

WIDGET_DDL = ("CREATE TABLE widget (widget_id int PRIMARY KEY, name varchar(20) NOT NULL, "
              "price numeric(10,2), size int, legacy text, "
              "last_updated timestamp NOT NULL DEFAULT now())")


def _config(tmp_path, name: str = "raw.yaml", **tables) -> str:
    """The shipped configuration with ``tables`` (name → settings) added or changed."""
    document = yaml.safe_load(open(CONFIG).read())
    document["tables"].update(tables)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return str(path)


@pytest.fixture
def widgets(resources, tmp_path) -> Resources:
    """``resources`` with an unmodelled source table ``widget`` (3 rows) in the
    configuration."""
    query(resources.source, WIDGET_DDL)
    query(resources.source, "INSERT INTO widget (widget_id, name, price, size, legacy) VALUES "
                            "(1, 'bolt', 1.50, 3, 'a'), (2, 'nut', 0.25, 1, 'b'), "
                            "(3, 'gear', 12.00, 7, 'c')")
    return replace(resources, config_path=_config(tmp_path, widget={}))


def _rows(database, sql: str, **params) -> list[tuple]:
    return [tuple(row) for row in query(database, sql, **params)]


def _source_widgets(resources) -> list[tuple]:
    return _rows(resources.source, "SELECT widget_id, name, price, size FROM widget "
                                   "ORDER BY widget_id")


def _current_widgets(resources) -> list[tuple]:
    return _rows(resources.warehouse, "SELECT widget_id, name, price, size FROM "
                                      "raw.widget_current ORDER BY widget_id")


def test_an_unmodelled_table_lands_in_the_raw_layer_with_every_version(widgets):
    first = run_pipeline(widgets)
    assert [(t.table, t.batches, t.inserted) for t in first.load.raw] == [("widget", 1, 3)]
    query(widgets.source, "UPDATE widget SET price = 1.75, last_updated = now() "
                          "WHERE widget_id = 1")
    query(widgets.source, "INSERT INTO widget (widget_id, name, price, size) "
                          "VALUES (4, 'cog', 3.10, 2)")

    second = run_pipeline(widgets)

    assert [(t.table, t.batches, t.inserted) for t in second.load.raw] == [("widget", 1, 2)]
    versions = _rows(widgets.warehouse, "SELECT widget_id, price, _totes_operation FROM "
                                        "raw.widget ORDER BY widget_id, last_updated")
    assert versions == [(1, Decimal("1.50"), "upsert"), (1, Decimal("1.75"), "upsert"),
                        (2, Decimal("0.25"), "upsert"), (3, Decimal("12.00"), "upsert"),
                        (4, Decimal("3.10"), "upsert")]
    assert _current_widgets(widgets) == _source_widgets(widgets)
    # Money stays numeric, text is text, the batch is the lake's key.
    types = dict(_rows(widgets.warehouse, "SELECT column_name, data_type FROM "
                                          "information_schema.columns WHERE table_schema = "
                                          "'raw' AND table_name = 'widget'"))
    assert (types["price"], types["name"], types["_totes_batch"]) == ("numeric", "text", "text")
    batches = _rows(widgets.warehouse, "SELECT DISTINCT _totes_batch FROM raw.widget ORDER BY 1")
    assert batches == [(k,) for k in widgets.lake.keys_after("widget", None)]
    assert second.reconcile is not None


def test_reloading_is_a_no_op(widgets):
    run_pipeline(widgets)
    before = _rows(widgets.warehouse, "SELECT * FROM raw.widget ORDER BY widget_id")
    # Forget what was loaded: the same lake batch is loaded again, and adds nothing.
    query(widgets.warehouse, "UPDATE totes.raw_table SET loaded_through = NULL")
    again = load(widgets.processed, widgets.warehouse, lake=widgets.lake,
                 raw_tables=raw_tables(load_config(widgets.config_path)))
    assert [(t.table, t.batches, t.rows, t.inserted) for t in again.raw] == \
        [("widget", 1, 3, 0)]
    assert _rows(widgets.warehouse, "SELECT * FROM raw.widget ORDER BY widget_id") == before
    # And a load with nothing new takes no batch.
    assert load(widgets.processed, widgets.warehouse, lake=widgets.lake,
                raw_tables=raw_tables(load_config(widgets.config_path))).raw == []


def test_pending_work_counts_lake_batches_the_raw_layer_lacks(widgets):
    run_pipeline(widgets)
    query(widgets.source, "UPDATE widget SET size = 9, last_updated = now() WHERE widget_id = 2")
    from totes.ingest.plan import plan
    from totes.local.runner import ingest_all

    config = load_config(widgets.config_path)
    ingest_all(widgets.source, widgets.lake, plan(config, widgets.source, tables=["widget"]))
    work = pending_work(widgets.lake, widgets.processed, widgets.warehouse, raw_tables(config))
    assert (work.raw_batches, work.lake_files, work.load) == (1, 0, True)


def test_reconciliation_names_a_difference_in_a_raw_table(widgets):
    from totes.reconcile.reconcile import reconcile

    run_pipeline(widgets)
    agreed = reconcile(widgets.source, widgets.warehouse)
    [raw] = [t for t in agreed.tables if t.table == "raw.widget"]
    assert (raw.source_rows, raw.warehouse_rows, raw.differences) == (3, 3, 0)
    assert agreed.equal
    query(widgets.warehouse, "UPDATE raw.widget SET name = 'bent bolt' WHERE widget_id = 1")
    query(widgets.warehouse, "DELETE FROM raw.widget WHERE widget_id = 3")

    found = reconcile(widgets.source, widgets.warehouse)

    [raw] = [t for t in found.tables if t.table == "raw.widget"]
    assert not found.equal and raw.differences == 2
    assert sorted((d.key["widget_id"], d.column, d.problem, d.source, d.warehouse)
                  for d in raw.listed) == [
        (1, "name", "value differs", "bolt", "bent bolt"),
        (3, None, "missing in the warehouse", None, None)]


def test_the_report_lists_the_raw_tables_with_their_counts(widgets, tmp_path):
    from totes.local.report import write_report

    run_pipeline(widgets)
    query(widgets.source, "UPDATE widget SET size = 4, last_updated = now() WHERE widget_id = 3")
    run_pipeline(widgets)

    result = write_report(widgets.warehouse, str(tmp_path / "report.html"))

    [raw] = result.raw
    assert (raw["relation"], raw["versions"], raw["current"], raw["batches"]) == \
        ("raw.widget", 4, 3, 2)
    page = (tmp_path / "report.html").read_text()
    assert "<code>raw.widget</code>" in page
    assert 'data-figure="raw.widget.versions">4</td>' in page


def test_raw_true_fills_the_raw_layer_of_a_modelled_table(resources, tmp_path):
    raw_staff = replace(resources, config_path=_config(tmp_path, staff={"raw": True}))
    result = run_pipeline(raw_staff)

    assert [t.table for t in result.load.raw] == ["staff"]
    source = _rows(resources.source, "SELECT staff_id, first_name, last_name, department_id, "
                                     "email_address FROM staff ORDER BY staff_id")
    assert len(source) > 1
    assert _rows(resources.warehouse, "SELECT staff_id, first_name, last_name, department_id, "
                                      "email_address FROM raw.staff_current ORDER BY "
                                      "staff_id") == source
    # The star schema is loaded as ever; a modelled table without raw: true has no raw table.
    assert _rows(resources.warehouse, "SELECT count(*) FROM dim_staff") == [(len(source),)]
    assert _rows(resources.warehouse, "SELECT to_regclass('raw.department')") == [(None,)]
    assert result.reconcile is not None and result.reconcile.equal
    assert "raw.staff" in [t.table for t in result.reconcile.tables]


def test_new_widened_and_dropped_columns_between_two_runs(widgets):
    from totes.reconcile.reconcile import reconcile

    run_pipeline(widgets)
    query(widgets.source, "ALTER TABLE widget ADD COLUMN colour text")
    query(widgets.source, "ALTER TABLE widget ALTER COLUMN size TYPE bigint")
    query(widgets.source, "ALTER TABLE widget DROP COLUMN legacy")
    query(widgets.source, "UPDATE widget SET colour = 'red', size = 5000000000, "
                          "last_updated = now() WHERE widget_id = 2")

    second = run_pipeline(widgets)

    assert [(t.table, t.inserted) for t in second.load.raw] == [("widget", 1)]
    types = dict(_rows(widgets.warehouse, "SELECT column_name, data_type FROM "
                                          "information_schema.columns WHERE table_schema = "
                                          "'raw' AND table_name = 'widget'"))
    assert (types["colour"], types["size"], types["legacy"]) == ("text", "bigint", "text")
    versions = _rows(widgets.warehouse, "SELECT widget_id, colour, size, legacy FROM "
                                        "raw.widget ORDER BY widget_id, last_updated")
    # The new column from the batch that brought it, NULL before; the wider value kept; the
    # dropped column NULL from the batch that no longer has it.
    assert versions == [(1, None, 3, "a"), (2, None, 1, "b"), (2, "red", 5_000_000_000, None),
                        (3, None, 7, "c")]
    assert _rows(widgets.warehouse, "SELECT widget_id, colour, size, legacy FROM "
                                    "raw.widget_current ORDER BY widget_id") == \
        [(1, None, 3, "a"), (2, "red", 5_000_000_000, None), (3, None, 7, "c")]
    assert _rows(widgets.warehouse, "SELECT dropped FROM totes.raw_table WHERE "
                                    "source_table = 'widget'") == [(["legacy"],)]
    # Once gone from the source, the dropped column is not compared.
    assert reconcile(widgets.source, widgets.warehouse).equal


def test_a_cdc_delete_leaves_the_row_out_of_the_current_view(resources, with_cdc):
    from totes.reconcile.reconcile import reconcile

    resources = with_cdc(resources, tables=("design",))
    document = yaml.safe_load(open(resources.config_path).read())
    document["tables"]["design"]["raw"] = True
    open(resources.config_path, "w").write(yaml.safe_dump(document))
    (design,), = query(resources.source, "INSERT INTO design (created_at, last_updated, "
                       "design_name, file_location, file_name) VALUES (now(), now(), 'Gone', "
                       "'/x', 'gone.json') RETURNING design_id")
    run_pipeline(resources)
    query(resources.source, "UPDATE design SET design_name = 'Going' WHERE design_id = :d",
          d=design)
    query(resources.source, "DELETE FROM design WHERE design_id = :d", d=design)

    second = run_pipeline(resources)

    assert [(t.table, t.inserted) for t in second.load.raw] == [("design", 2)]
    versions = _rows(resources.warehouse, "SELECT design_name, _totes_operation FROM raw.design "
                                          "WHERE design_id = :d ORDER BY _totes_lsn", d=design)
    assert versions == [("Gone", "snapshot"), ("Going", "update"), ("Going", "delete")]
    assert _rows(resources.warehouse, "SELECT count(*) FROM raw.design_current WHERE "
                                      "design_id = :d", d=design) == [(0,)]
    assert _rows(resources.warehouse, "SELECT count(*) FROM raw.design_current") == \
        _rows(resources.source, "SELECT count(*) FROM design")
    result = reconcile(resources.source, resources.warehouse)
    assert result.equal, result.summary()


def test_a_full_table_keeps_each_snapshot_and_its_current_view_is_the_newest(
        widgets, tmp_path):
    full = replace(widgets, config_path=_config(tmp_path, "full.yaml",
                                                widget={"extract_type": "full"}))
    run_pipeline(full)
    query(full.source, "DELETE FROM widget WHERE widget_id = 2")
    query(full.source, "UPDATE widget SET price = 2.00 WHERE widget_id = 1")

    run_pipeline(full)

    assert _rows(full.warehouse, "SELECT count(*), count(DISTINCT _totes_batch) FROM "
                                 "raw.widget") == [(5, 2)]
    assert _current_widgets(full) == _source_widgets(full)


def test_two_loads_at_once_load_each_lake_batch_once(widgets):
    from concurrent.futures import ThreadPoolExecutor

    from totes.ingest.plan import plan
    from totes.local.runner import ingest_all

    config = load_config(widgets.config_path)
    ingest_all(widgets.source, widgets.lake, plan(config, widgets.source, tables=["widget"]))
    tables = raw_tables(config)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: load(widgets.processed, widgets.warehouse,
                                               lake=widgets.lake, raw_tables=tables), range(2)))

    assert sorted(sum(t.batches for t in r.raw) for r in results) == [0, 1]
    assert _rows(widgets.warehouse, "SELECT count(*), count(DISTINCT widget_id) FROM "
                                    "raw.widget") == [(3, 3)]
    assert _rows(widgets.warehouse, "SELECT batches FROM totes.raw_table") == [(1,)]


def test_a_mysql_table_lands_in_the_raw_layer_with_every_version(
        mysql_source, warehouse, tmp_path):
    """The raw layer from a MariaDB source: its types map as the lake maps them (decimal stays
    numeric), each version lands once and the current view equals the source."""
    conn = mysql_source.connect("totes-test")
    try:
        conn.run("CREATE TABLE widget (widget_id int PRIMARY KEY, name varchar(20) NOT NULL, "
                 "price decimal(10,2), size int, last_updated datetime(3) NOT NULL "
                 "DEFAULT current_timestamp(3))")
        conn.run("INSERT INTO widget (widget_id, name, price, size, last_updated) VALUES "
                 "(1, 'bolt', 1.50, 3, '2024-11-20 10:00:00'), "
                 "(2, 'nut', 0.25, 1, '2024-11-20 10:00:00')")
        resources = Resources(mysql_source, warehouse, Lake(str(tmp_path / "lake")),
                              Lake(str(tmp_path / "processed")),
                              _config(tmp_path, widget={}))
        first = run_pipeline(resources)
        conn.run("UPDATE widget SET price = 1.75, last_updated = '2024-11-21 09:00:00' "
                 "WHERE widget_id = 1")
        second = run_pipeline(resources)
        third = run_pipeline(resources)
        source = [tuple(row) for row in conn.run(
            "SELECT widget_id, name, price, size FROM widget ORDER BY widget_id")]
    finally:
        conn.close()

    assert [(t.table, t.inserted) for t in first.load.raw] == [("widget", 2)]
    assert [(t.table, t.inserted) for t in second.load.raw] == [("widget", 1)]
    assert sum(t.inserted for t in third.load.raw) == 0  # nothing new: nothing loaded twice
    versions = _rows(warehouse, "SELECT widget_id, price FROM raw.widget "
                                "ORDER BY widget_id, last_updated")
    assert versions == [(1, Decimal("1.50")), (1, Decimal("1.75")), (2, Decimal("0.25"))]
    assert _rows(warehouse, "SELECT widget_id, name, price, size FROM raw.widget_current "
                            "ORDER BY widget_id") == source
    assert second.reconcile is not None and second.reconcile.equal, \
        second.reconcile.summary()


def test_check_names_the_raw_schema_and_refuses_one_the_star_schema_uses(
        widgets, monkeypatch):
    import json

    from typer.testing import CliRunner

    from support import url_of
    from totes.cli import app

    monkeypatch.setenv("TOTES_SOURCE_URL", url_of(widgets.source))
    monkeypatch.setenv("TOTES_WAREHOUSE_URL", url_of(widgets.warehouse))
    monkeypatch.setenv("TOTES_LAKE", widgets.lake.uri)
    monkeypatch.setenv("TOTES_PROCESSED", widgets.processed.uri)

    def warehouse_check() -> dict:
        done = CliRunner().invoke(app, ["check", "--json", "--config", widgets.config_path])
        return next(c for c in json.loads(done.stdout)["checks"] if c["check"] == "warehouse")

    found = warehouse_check()
    assert found["ok"] and found["detail"].endswith("; and the raw layer in schema raw")
    monkeypatch.setenv("TOTES_RAW_SCHEMA", "public")
    found = warehouse_check()
    assert not found["ok"]
    assert "TOTES_RAW_SCHEMA=public is the schema of the star schema" in found["detail"]


def test_a_whole_reconciliation_in_bounded_steps_compares_a_raw_table_in_ranges(
        resources, tmp_path):
    """The state machine's bounded Reconcile takes the raw layer's tables after the facts,
    in ranges of ids like the facts': together the ranges compare every row once, what only
    the source has included, and a difference is found in the step whose range holds it."""
    from totes.reconcile.reconcile import reconcile, reconcile_step

    raw_sales = replace(resources, config_path=_config(tmp_path, sales_order={"raw": True}))
    run_pipeline(raw_sales, reconcile=False)
    query(resources.source, "INSERT INTO sales_order (created_at, last_updated, design_id, "
                            "staff_id, counterparty_id, units_sold, unit_price, currency_id, "
                            "agreed_delivery_date, agreed_payment_date, "
                            "agreed_delivery_location_id) SELECT now(), now(), 1, 1, 1, 10, "
                            "2.50, 1, '2025-01-01', '2025-01-02', 1 "
                            "FROM generate_series(1, 4000)")  # only the source has them
    query(resources.warehouse, "UPDATE raw.sales_order SET units_sold = 1 "
                               "WHERE sales_order_id = 9000")
    whole = reconcile(resources.source, resources.warehouse)
    [wholly] = [t for t in whole.tables if t.table == "raw.sales_order"]

    steps, resume = [], None
    while True:
        steps.append(reconcile_step(resources.source, resources.warehouse, resume,
                                    max_rows=3000))
        resume = steps[-1].resume
        if resume is None:
            break
        assert len(steps) < 60, "the steps do not end"

    raw = [(i, t) for i, s in enumerate(steps) for t in s.tables if t.table == "raw.sales_order"]
    assert len(raw) >= 5 and raw[0][0] > 0  # after the dimensions' step, in ranges
    chain = [tuple(t.key_range) for _, t in raw]
    assert chain[0][0] is None and chain[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(chain, chain[1:])), chain
    assert all(t.source_rows + t.pending <= 3000 and t.warehouse_rows <= 3000
               for _, t in raw)
    assert sum(t.source_rows for _, t in raw) == wholly.source_rows
    assert sum(t.warehouse_rows for _, t in raw) == wholly.warehouse_rows
    assert sum(t.pending for _, t in raw) == wholly.pending == 4000
    [(step, found)] = [(i, t) for i, t in raw if t.differences]
    assert [(d.key["sales_order_id"], d.column) for d in found.listed] == \
        [(9000, "units_sold")]
    assert (found.key_range[0] or 0) <= 9000 < found.key_range[1]
    assert not steps[step].equal and all(s.equal for i, s in enumerate(steps) if i != step)
