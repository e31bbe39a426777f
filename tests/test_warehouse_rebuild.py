"""``totes rebuild``: the star schema derived again from every lake batch, reconciled, and
swapped in in one transaction. After a rule change it equals what a fresh transform and load
of the same lake gives; the replaced tables stay in ``<schema>_previous``; a query during the
swap sees the old tables or the new ones whole; ``--table`` swaps only what derives from one
source table; a lost processed area comes back; a rebuild stopped between its swap and the
move of the processed area blocks loads until the next rebuild finishes it."""
from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from support import query, url_of
from totes.cli import app
from totes.contracts.errors import ConfigError, LeaseHeld
from totes.contracts.star_schema import TABLES
from totes.load.warehouse import load
from totes.local import rebuild as rebuild_module
from totes.local.rebuild import rebuild_warehouse
from totes.local.runner import Resources, run_pipeline
from totes.reconcile.reconcile import reconcile
from totes.rules import dimensions
from totes.transform.run import transform
from totes.utils.lake import Lake
from totes.utils.ledger import ALL_TABLES, SqliteLedger, lease_name


def _two_runs(resources: Resources) -> None:
    run_pipeline(resources, reconcile=False)
    query(resources.source, "UPDATE staff SET last_name = 'Renamed', last_updated = now() "
                            "WHERE staff_id = 3")
    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated "
                            "= now() WHERE sales_order_id IN (20, 21)")
    run_pipeline(resources, reconcile=False)


def _star(database, schema: str = "public") -> dict[str, list]:
    """Every star table's rows (a fact's serial surrogate key left out), sorted."""
    found = {}
    for name, table in TABLES.items():
        columns = ", ".join(table.column_names)
        found[name] = sorted(query(database, f"SELECT {columns} FROM {schema}.{name}"),
                             key=repr)
    return found


def _fresh_load(resources: Resources, warehouse, tmp_path) -> None:
    """What a fresh transform and load of the whole lake gives, in a new warehouse."""
    processed = Lake(str(tmp_path / "fresh-processed"))
    while True:
        done = transform(resources.lake, processed)
        loaded = load(processed, warehouse)
        if not ((done.more and done.manifest) or (loaded.more and loaded.batches)):
            break


def _staff_names(database, schema: str = "public") -> dict:
    return dict(query(database, f"SELECT staff_id, last_name FROM {schema}.dim_staff"))


def test_a_rebuild_after_a_rule_change_equals_a_fresh_load_of_the_lake(
        resources, new_database, monkeypatch, tmp_path):
    _two_runs(resources)
    before = _star(resources.warehouse)
    old_names = _staff_names(resources.warehouse)
    assert old_names[3] == "Renamed"

    _shouting(monkeypatch)
    result = rebuild_warehouse(resources)

    assert result.reconcile is not None and result.reconcile.equal
    assert result.tables == list(TABLES)
    rebuilt = _star(resources.warehouse)
    fresh = new_database("fresh")
    _fresh_load(resources, fresh, tmp_path)
    assert rebuilt == _star(fresh)  # what a fresh load of the whole lake gives
    names = _staff_names(resources.warehouse)
    assert names == {k: v.upper() for k, v in old_names.items()}
    # the replaced tables are kept, whole, until the next rebuild
    assert _star(resources.warehouse, "public_previous") == before
    assert query(resources.warehouse, "SELECT count(*) FROM totes_previous.loaded_batch") == \
        [[2]]
    # the scratch schemas and processed area are gone; the replaced area is kept aside
    assert query(resources.warehouse, "SELECT nspname FROM pg_namespace WHERE nspname LIKE "
                 "'%\\_rebuild'") == []
    assert resources.processed.entries(".previous")
    assert ".rebuild" not in resources.processed.entries(hidden=True)

    # the next run carries on from the rebuilt batches: every version once, reconciled
    query(resources.source, "UPDATE staff SET last_name = 'Again', last_updated = now() "
                            "WHERE staff_id = 4")
    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated "
                            "= now() WHERE sales_order_id = 22")
    after = run_pipeline(resources)
    assert after.load.batches and after.reconcile.equal
    assert _staff_names(resources.warehouse)[4] == "AGAIN"
    assert query(resources.warehouse, "SELECT count(*), count(DISTINCT (sales_order_id, "
                 "last_updated_date, last_updated_time)) FROM fact_sales_order "
                 "WHERE sales_order_id IN (20, 21, 22)")[0] == [6, 6]


def _shouting(monkeypatch) -> None:
    """A rule change: dim_staff's last names in capitals (what a developer's new or changed
    derivation looks like to the pipeline)."""
    rule = dimensions.dim_staff

    def changed(*args, **kwargs):
        checked = rule(*args, **kwargs)
        if checked is None or checked.rows is None:
            return checked
        rows = checked.rows
        index = rows.schema.get_field_index("last_name")
        shouted = rows.set_column(index, rows.schema.field(index),
                                  pc.utf8_upper(rows.column(index)))
        return dataclasses.replace(checked, rows=shouted)

    monkeypatch.setattr(dimensions, "dim_staff", changed)


def test_queries_during_the_swap_see_the_old_or_the_new_tables_whole(
        resources, monkeypatch):
    _two_runs(resources)
    sql = ("SELECT count(*), count(*) FILTER (WHERE s.last_name = upper(s.last_name)) "
           "FROM public.fact_sales_order f JOIN public.dim_staff s "
           "ON s.staff_id = f.sales_staff_id")
    (old,) = [tuple(row) for row in query(resources.warehouse, sql)]
    _shouting(monkeypatch)
    seen, errors, stop = [], [], threading.Event()

    def reader():
        conn = resources.warehouse.connect("reader")
        try:
            while not stop.is_set():
                seen.append(tuple(conn.run(sql)[0]))
                time.sleep(0.02)  # (a query every 20 ms: the swap is not starved)
        except Exception as exc:  # the assertion below reports it
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        rebuild_warehouse(resources, reconcile=False)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    (new,) = [tuple(row) for row in query(resources.warehouse, sql)]
    assert not errors, errors
    assert old != new and new[0] == new[1] and old[1] < old[0]
    assert set(seen) <= {old, new}, set(seen) - {old, new}
    assert old in seen and new in seen


def test_rebuild_of_one_source_table_swaps_what_derives_from_it(resources, monkeypatch):
    _two_runs(resources)
    before = _star(resources.warehouse)
    _shouting(monkeypatch)
    monkeypatch.setenv("TOTES_SOURCE_URL", url_of(resources.source))
    monkeypatch.setenv("TOTES_WAREHOUSE_URL", url_of(resources.warehouse))
    monkeypatch.setenv("TOTES_LAKE", resources.lake.uri)
    monkeypatch.setenv("TOTES_PROCESSED", resources.processed.uri)
    unknown = CliRunner().invoke(app, ["rebuild", "--table", "widgets"])
    assert unknown.exit_code != 0
    assert "no star-schema table derives from source table 'widgets'" in unknown.output

    done = CliRunner().invoke(app, ["rebuild", "--table", "staff", "--json"])
    assert done.exit_code == 0, done.output
    after = _star(resources.warehouse)
    assert [name for name in TABLES if after[name] != before[name]] == ["dim_staff"]
    assert set(_staff_names(resources.warehouse).values()) == \
        {name.upper() for name in _staff_names(resources.warehouse, "public_previous").values()}
    # the facts' foreign keys reference the live dim_staff, not the one kept aside
    assert query(resources.warehouse,
                 "SELECT DISTINCT confrelid::regclass::text FROM pg_constraint WHERE "
                 "contype = 'f' AND confrelid::regclass::text LIKE '%dim_staff'") == \
        [["dim_staff"]]
    assert query(resources.warehouse, "SELECT relname FROM pg_class c JOIN pg_namespace n ON "
                 "n.oid = c.relnamespace WHERE nspname = 'public_previous' AND relkind = 'r'"
                 ) == [["dim_staff"]]
    # the processed area and the bookkeeping stay: the next run adds to the rebuilt table
    query(resources.source, "UPDATE staff SET last_name = 'Later', last_updated = now() "
                            "WHERE staff_id = 5")
    later = run_pipeline(resources)
    assert later.reconcile.equal
    assert _staff_names(resources.warehouse)[5] == "LATER"


def test_a_lost_processed_area_is_rebuilt_and_the_pipeline_goes_on(resources):
    _two_runs(resources)
    before = _star(resources.warehouse)
    shutil.rmtree(resources.processed.root)
    result = rebuild_warehouse(resources)
    assert result.reconcile.equal
    assert _star(resources.warehouse) == before
    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated "
                            "= now() WHERE sales_order_id = 30")
    after = run_pipeline(Resources(resources.source, resources.warehouse, resources.lake,
                                   Lake(resources.processed.uri), resources.config_path))
    assert after.reconcile.equal and len(after.load.batches) == 1
    assert query(resources.warehouse, "SELECT count(*) FROM fact_sales_order "
                 "WHERE sales_order_id = 30")[0][0] == 2


def test_a_rebuild_stopped_before_its_processed_area_moved_blocks_loads_until_finished(
        resources, monkeypatch):
    _two_runs(resources)
    before = _star(resources.warehouse)
    adopt = rebuild_module._adopt

    def crash(*args):
        raise OSError("killed")

    monkeypatch.setattr(rebuild_module, "_adopt", crash)
    with pytest.raises(OSError, match="killed"):
        rebuild_warehouse(resources, reconcile=False)
    with pytest.raises(ConfigError, match="run `totes rebuild` to finish it"):
        load(resources.processed, resources.warehouse)
    monkeypatch.setattr(rebuild_module, "_adopt", adopt)
    assert rebuild_warehouse(resources).reconcile.equal
    assert _star(resources.warehouse) == before
    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated "
                            "= now() WHERE sales_order_id = 31")
    after = run_pipeline(resources)
    assert after.reconcile.equal and len(after.load.batches) == 1
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_rebuild_runs_alone_and_is_recorded_in_the_ledger(resources, tmp_path):
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    tracked = dataclasses.replace(resources, ledger=ledger)
    run_pipeline(tracked, reconcile=False)
    with ledger.lease(lease_name("load", ALL_TABLES), "run-elsewhere", 0.0) as lease:
        assert lease.holder is None
        with pytest.raises(LeaseHeld, match="a load is running .*run-elsewhere"):
            rebuild_warehouse(tracked)
    assert query(resources.warehouse, "SELECT to_regnamespace('public_previous')") == [[None]]
    rebuild_warehouse(tracked)
    for stage in ("transform", "load"):
        (record,) = [r for r in ledger.history(stage, limit=20) if r.mode == "rebuild"
                     and r.status == "succeeded"]
        assert record.details["tables"] == list(TABLES)
