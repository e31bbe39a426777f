"""Where the star schema lives: one warehouse schema, configuration (``TOTES_WAREHOUSE_SCHEMA``,
default ``public``), named by every statement, so that the role's ``search_path`` plays no
part; and the checks a run makes before it starts (the role can create there, owns the
tables)."""
from __future__ import annotations

import pytest

from support import CONFIG, query
from totes.contracts.errors import ConfigError, PermissionDenied
from totes.contracts.identifiers import quote_ident
from totes.load.quarantine import quarantine_report
from totes.load.warehouse import check_warehouse, load
from totes.local.report import write_report
from totes.local.runner import Resources, run_pipeline
from totes.reconcile.reconcile import reconcile
from totes.utils.lake import Lake
from totes.utils.postgres import Database


def _as_role(server: Database, database: Database, role: str, *grants: str) -> Database:
    """``database`` as the login role ``role`` (created once per server), after ``grants``
    (statements run by the admin in ``database``)."""
    query(server, f"DO $$ BEGIN CREATE ROLE {quote_ident(role)} LOGIN; "
                  "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    for statement in grants:
        query(database, statement)
    return Database("warehouse", dict(database.params, user=role))


def _star_relations(warehouse: Database) -> dict[str, int]:
    """Per database schema, the star schema's relations (tables, views, sequences) in it."""
    return dict(query(warehouse, "SELECT n.nspname, count(*) FROM pg_class c JOIN "
                                 "pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN "
                                 "('r', 'v', 'S') AND (c.relname LIKE 'dim\\_%' OR c.relname "
                                 "LIKE 'fact\\_%') GROUP BY 1"))


def test_a_role_named_totes_owning_its_warehouse_builds_the_star_schema_in_public(
        server, seeded_source, warehouse, tmp_path):
    """The issue's case: the role totes owns the warehouse database, so its search_path
    ("$user", public) once put every relation in the bookkeeping schema totes; another role
    then found no dim_date. Now the star schema is in public, and a second role whose
    search_path holds no schema at all loads, reconciles and reports."""
    (database,), = query(warehouse, "SELECT current_database()")
    owner = _as_role(server, warehouse, "totes",
                     f"ALTER DATABASE {quote_ident(database)} OWNER TO totes")
    lake, processed = Lake(str(tmp_path / "lake")), Lake(str(tmp_path / "processed"))
    run_pipeline(Resources(seeded_source, owner, lake, processed, CONFIG))

    assert _star_relations(warehouse) == {"public": 17}  # 11 tables, 3 views, 3 sequences

    other = _as_role(server, warehouse, "totes_operator", "GRANT totes TO totes_operator",
                     "ALTER ROLE totes_operator SET search_path = nowhere")
    query(seeded_source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
                         "now() WHERE sales_order_id = 20")
    result = run_pipeline(Resources(seeded_source, other, lake, processed, CONFIG))

    assert [t.inserted for t in result.load.tables if t.table == "fact_sales_order"] == [1]
    assert result.reconcile is not None and result.reconcile.equal
    assert reconcile(seeded_source, other).equal
    assert write_report(other, str(tmp_path / "report.html")).headlines["orders"]["sales"] > 0
    assert quarantine_report(processed, other).entries == []
    assert _star_relations(warehouse) == {"public": 17}


def test_the_star_schema_goes_where_the_setting_says(
        seeded_source, warehouse, tmp_path, monkeypatch):
    monkeypatch.setenv("TOTES_WAREHOUSE_SCHEMA", "analytics")
    resources = Resources(seeded_source, warehouse, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG)
    result = run_pipeline(resources)

    assert result.reconcile is not None and result.reconcile.equal
    assert _star_relations(warehouse) == {"analytics": 17}
    assert query(warehouse, "SELECT count(*) FROM analytics.fact_sales_order_current") == [
        [query(seeded_source, "SELECT count(*) FROM sales_order")[0][0]]]

    monkeypatch.delenv("TOTES_WAREHOUSE_SCHEMA")  # now public: the star schema is not there
    with pytest.raises(ConfigError, match="the star schema of the warehouse database .* is in "
                       "schema analytics, not in schema public .*set "
                       "TOTES_WAREHOUSE_SCHEMA=analytics"):
        load(resources.processed, warehouse)
    assert _star_relations(warehouse) == {"analytics": 17}  # nothing created in public


def test_a_run_stops_before_it_starts_when_the_role_cannot_create_or_does_not_own(
        server, seeded_source, warehouse, tmp_path):
    """PostgreSQL 15 and later give no CREATE on public to a role that does not own the
    database: the run stops at its checks, with the GRANT, before anything is ingested.
    Tables owned by a role it is not a member of stop it too (a bulk load alters them)."""
    (database,), = query(warehouse, "SELECT current_database()")
    loader = _as_role(server, warehouse, "totes_loader")
    resources = Resources(seeded_source, loader, Lake(str(tmp_path / "lake")),
                          Lake(str(tmp_path / "processed")), CONFIG)

    with pytest.raises(PermissionDenied, match=f"the warehouse has no schema totes and the "
                       f"role totes_loader may not create it: .*GRANT CREATE ON DATABASE "
                       f"\"{database}\" TO \"totes_loader\""):
        run_pipeline(resources)
    assert list((tmp_path / "lake").glob("**/*.parquet")) == []  # nothing started

    query(warehouse, "CREATE SCHEMA totes AUTHORIZATION totes_loader")
    with pytest.raises(PermissionDenied, match="the warehouse role totes_loader may not create "
                       "tables in schema public .*GRANT USAGE, CREATE ON SCHEMA \"public\" TO "
                       "\"totes_loader\""):
        check_warehouse(loader)

    query(warehouse, "GRANT USAGE, CREATE ON SCHEMA public TO totes_loader")
    query(warehouse, "CREATE TABLE public.dim_date (date_id date PRIMARY KEY)")  # the admin's
    with pytest.raises(PermissionDenied, match="the warehouse role totes_loader does not own "
                       "dim_date in schema public"):
        check_warehouse(loader)

    query(warehouse, "DROP TABLE public.dim_date")
    assert run_pipeline(resources).reconcile.equal
