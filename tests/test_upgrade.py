"""Upgrades: a lake, processed area and warehouse written by the previous release, run from
its own code (:mod:`previous_release`), keep working with this one."""
from __future__ import annotations

import pytest

from previous_release import run as run_previous, unpack
from support import query, snapshot, url_of
from totes.contracts.star_schema import TABLES
from totes.load.warehouse import WAREHOUSE_SCHEMA_VERSION, load
from totes.local.runner import run_pipeline
from totes.reconcile.reconcile import reconcile
from totes.utils.manifests import manifests_after


def test_what_the_previous_release_wrote_is_upgraded_and_loads_each_version_once(
        resources, tmp_path):
    path = unpack(tmp_path / "previous")
    flags = ["--source-url", url_of(resources.source), "--warehouse-url",
             url_of(resources.warehouse), "--lake", resources.lake.uri, "--processed",
             resources.processed.uri, "--no-reconcile"]
    env = {"TOTES_HOME": str(tmp_path / "home"), "TOTES_LEDGER": str(tmp_path / "l.sqlite3")}
    run_previous(path, ["run", *flags], env)
    order = snapshot("sales_order")["sales_order_id"][0].as_py()
    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, "
          "last_updated = (SELECT max(last_updated) FROM sales_order) + interval '1 day' "
          "WHERE sales_order_id = :o", o=order)
    run_previous(path, ["run", *flags], env)
    old_batches = manifests_after(resources.processed, None)
    assert len(old_batches) == 2
    assert query(resources.warehouse, "SELECT max(version) FROM totes.schema_version") == [[5]]

    query(resources.source, "UPDATE sales_order SET units_sold = units_sold + 1, "
          "last_updated = (SELECT max(last_updated) FROM sales_order) + interval '1 day' "
          "WHERE sales_order_id = :o", o=order)
    result = run_pipeline(resources)

    assert result.load.batches and result.load.tables  # the new batch loaded
    assert query(resources.warehouse, "SELECT max(version) FROM totes.schema_version") == \
        [[WAREHOUSE_SCHEMA_VERSION]]
    for name, table in TABLES.items():
        if name == "dim_date":
            continue
        (deleted, positioned), = query(resources.warehouse, f"SELECT count(*) FILTER (WHERE "
                                       f"is_deleted), count(*) FILTER (WHERE source_lsn <> 0) "
                                       f"FROM {name}")  # nosec B608 (the schema's names)
        assert (deleted, positioned) == (0, 0), name
    versions = query(resources.warehouse, "SELECT count(*) FROM fact_sales_order WHERE "
                     "sales_order_id = :o", o=order)
    assert versions == [[3]]  # each version once: two of the old release's, one of this one
    keys = query(resources.warehouse, "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                 "WHERE conrelid = 'fact_sales_order'::regclass AND contype = 'u'")
    assert keys == [["UNIQUE (sales_order_id, last_updated_date, last_updated_time, "
                     "source_lsn)"]]
    held_key = query(resources.warehouse, "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                     "WHERE conrelid = 'totes.held_fact_payment'::regclass AND contype = 'p'")
    assert held_key == [["PRIMARY KEY (payment_id, last_updated_date, last_updated_time, "
                         "source_lsn)"]]

    # A batch the previous release processed (files without is_deleted and source_lsn)
    # loads again as a no-op.
    before = query(resources.warehouse, "SELECT count(*) FROM fact_sales_order")
    again = load(resources.processed, resources.warehouse, [old_batches[0]])
    assert sum(t.inserted + t.updated for t in again.tables) == 0
    assert query(resources.warehouse, "SELECT count(*) FROM fact_sales_order") == before
    assert reconcile(resources.source, resources.warehouse).equal


def test_a_row_the_previous_release_quarantined_counts_as_quarantined_after_the_upgrade(
        resources, tmp_path):
    """The upgrade to warehouse schema 7 records the versions the previous release's
    quarantine holds (totes.quarantined): reconcile counts design 2 as quarantined, not as a
    difference (it would without the backfill)."""
    path = unpack(tmp_path / "previous")
    query(resources.source, "ALTER TABLE design ALTER COLUMN design_name DROP NOT NULL")
    query(resources.source, "UPDATE design SET design_name = NULL WHERE design_id = 2")
    flags = ["--source-url", url_of(resources.source), "--warehouse-url",
             url_of(resources.warehouse), "--lake", resources.lake.uri, "--processed",
             resources.processed.uri, "--no-reconcile"]
    env = {"TOTES_HOME": str(tmp_path / "home"), "TOTES_LEDGER": str(tmp_path / "l.sqlite3")}
    done = run_previous(path, ["run", *flags], env, exit_codes=(65,))  # EX_DATAERR: quarantined
    assert "Quarantined 1 row versions" in done.stdout + done.stderr

    run_pipeline(resources)

    recorded = query(resources.warehouse, "SELECT source_table, row_id, rule FROM "
                     "totes.quarantined")
    assert [(t, i) for t, i, _ in recorded] == [("design", 2)]
    result = reconcile(resources.source, resources.warehouse)
    [design] = [t for t in result.tables if t.table == "dim_design"]
    assert result.equal and (design.quarantined, design.differences) == (1, 0)


def test_a_warehouse_the_previous_release_built_under_a_role_named_totes_keeps_working(
        server, resources, tmp_path, monkeypatch):
    """The previous release followed the role's search_path: as a role named totes it put
    the star schema in schema totes. This release says where it is and what to set, and
    with that setting loads into it."""
    from totes.contracts.errors import ConfigError
    from totes.contracts.identifiers import quote_ident
    from totes.local.runner import Resources
    from totes.utils.postgres import Database

    (database,), = query(resources.warehouse, "SELECT current_database()")
    query(server, "DO $$ BEGIN CREATE ROLE totes LOGIN; EXCEPTION WHEN duplicate_object "
                  "THEN NULL; END $$")
    query(resources.warehouse, f"ALTER DATABASE {quote_ident(database)} OWNER TO totes")
    owner = Database("warehouse", dict(resources.warehouse.params, user="totes"))
    path = unpack(tmp_path / "previous")
    run_previous(path, ["run", "--source-url", url_of(resources.source), "--warehouse-url",
                        url_of(owner), "--lake", resources.lake.uri, "--processed",
                        resources.processed.uri, "--no-reconcile"],
                 {"TOTES_HOME": str(tmp_path / "home"),
                  "TOTES_LEDGER": str(tmp_path / "l.sqlite3")})
    assert query(resources.warehouse, "SELECT to_regclass('totes.dim_date') IS NOT NULL") \
        == [[True]]
    moved = Resources(resources.source, owner, resources.lake, resources.processed,
                      resources.config_path)

    with pytest.raises(ConfigError, match="is in schema totes, not in schema public "
                       r"\(TOTES_WAREHOUSE_SCHEMA\): set TOTES_WAREHOUSE_SCHEMA=totes"):
        run_pipeline(moved)

    monkeypatch.setenv("TOTES_WAREHOUSE_SCHEMA", "totes")
    query(resources.source, "UPDATE payment SET paid = NOT paid, last_updated = now() "
                            "WHERE payment_id = 3")
    result = run_pipeline(moved)
    assert result.reconcile is not None and result.reconcile.equal
    assert query(resources.warehouse, "SELECT count(*) FROM totes.fact_payment WHERE "
                                      "payment_id = 3") == [[2]]


def test_the_raw_layer_is_added_to_a_warehouse_the_previous_release_wrote(resources,
                                                                          tmp_path):
    """A table no rule reads, ingested by the previous release (its lake batches written
    without a schema record): the upgrade to schema 8 adds totes.raw_table, the load creates
    schema raw and loads every batch the lake holds, the old ones and the new."""
    import yaml

    from dataclasses import replace
    from support import CONFIG

    query(resources.source, "CREATE TABLE widget (widget_id int PRIMARY KEY, name text, "
                            "last_updated timestamp NOT NULL DEFAULT now())")
    query(resources.source, "INSERT INTO widget (widget_id, name) VALUES (1, 'bolt'), "
                            "(2, 'nut')")
    document = yaml.safe_load(open(CONFIG).read())
    document["tables"]["widget"] = {}
    config = tmp_path / "widget.yaml"
    config.write_text(yaml.safe_dump(document))
    path = unpack(tmp_path / "previous")
    run_previous(path, ["run", "--source-url", url_of(resources.source), "--warehouse-url",
                        url_of(resources.warehouse), "--lake", resources.lake.uri,
                        "--processed", resources.processed.uri, "--config", str(config),
                        "--no-reconcile"],
                 {"TOTES_HOME": str(tmp_path / "home"),
                  "TOTES_LEDGER": str(tmp_path / "l.sqlite3")})
    assert len(resources.lake.keys_after("widget", None)) == 1
    assert query(resources.warehouse, "SELECT to_regclass('totes.raw_table'), "
                                      "to_regnamespace('raw')") == [[None, None]]
    query(resources.source, "UPDATE widget SET name = 'big nut', last_updated = now() "
                            "WHERE widget_id = 2")

    result = run_pipeline(replace(resources, config_path=str(config)))

    assert query(resources.warehouse, "SELECT max(version) FROM totes.schema_version") == \
        [[WAREHOUSE_SCHEMA_VERSION]]
    assert [(t.table, t.batches, t.inserted) for t in result.load.raw] == [("widget", 2, 3)]
    assert query(resources.warehouse, "SELECT widget_id, name FROM raw.widget_current "
                                      "ORDER BY 1") == [[1, "bolt"], [2, "big nut"]]
    assert result.reconcile is not None and result.reconcile.equal
