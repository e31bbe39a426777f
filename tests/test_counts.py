"""Figures that say what happened (issue 21, defect 9): reconcile counts quarantined and held
rows as such (never pending), its one line says what each fact was compared on, a run into a
fresh warehouse says what it loaded, and ``totes status`` does not exit 0 when a part of it
could not be read."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from support import query, url_of
from test_quarantine import add_order
from totes.cli import app
from totes.contracts.stage_results import ReconcileResult, TableReconciliation, counted
from totes.contracts.star_schema import TABLES
from totes.local import render
from totes.local.runner import Resources, run_pipeline
from totes.reconcile.reconcile import reconcile


def test_rows_quarantined_and_held_are_counted_so_not_pending(resources):
    """A new design that breaks a rule (quarantined) and a new order of it (held for its
    dimension row), both newer than anything loaded."""
    run_pipeline(resources)
    query(resources.source, "ALTER TABLE design ALTER COLUMN design_name DROP NOT NULL")
    (design,), = query(resources.source, "INSERT INTO design (created_at, last_updated, "
                       "design_name, file_location, file_name) VALUES (now(), now(), NULL, "
                       "'/x', 'x.json') RETURNING design_id")
    add_order(resources.source, at="2026-01-01", design_id=design)
    run_pipeline(resources)

    result = reconcile(resources.source, resources.warehouse)

    tables = {t.table: t for t in result.tables}
    assert result.equal, result.summary()
    assert (tables["dim_design"].quarantined, tables["dim_design"].pending) == (1, 0)
    assert (tables["fact_sales_order"].held, tables["fact_sales_order"].pending) == (1, 0)
    assert result.summary().endswith("; 1 held; 1 quarantined)")


def test_the_summary_says_which_facts_were_compared_whole():
    def fact(name: str, scoped) -> TableReconciliation:
        return TableReconciliation(table=name, source_table=name[5:], source_rows=10,
                                   warehouse_rows=10, pending=0, differences=0,
                                   loaded_through=None, listed=[], scoped_keys=scoped)
    result = ReconcileResult(equal=True, differences=0, seconds=1.0, sums=[], tables=[
        fact("fact_sales_order", None), fact("fact_purchase_order", 0),
        fact("fact_payment", 1)])
    assert result.summary() == (
        "reconcile: source and warehouse agree (3 tables, 30 rows; facts on the ids the "
        "load brought: fact_sales_order all (too many to scope), fact_purchase_order 0, "
        "fact_payment 1)")
    assert (counted(1, "difference"), counted(2, "batch", "batches")) == (
        "1 difference", "2 batches")


def test_a_run_into_a_fresh_warehouse_says_what_it_loaded(resources, new_database):
    run_pipeline(resources)
    fresh = new_database("wh")

    result = run_pipeline(Resources(resources.source, fresh, resources.lake,
                                    resources.processed, resources.config_path))

    inserted = sum(t.inserted for t in result.load.tables)
    assert inserted == sum(query(fresh, f"SELECT count(*) FROM {name}")[0][0]  # nosec B608
                           for name in TABLES) > 48_000
    assert render.run_summary(result).endswith(
        f": nothing new in the source; 1 batch loaded ({inserted:,} rows inserted, 0 "
        "updated).")


def test_status_exits_non_zero_when_the_warehouse_cannot_be_read(
        resources, monkeypatch, tmp_path):
    run_pipeline(resources)
    missing = url_of(resources.warehouse).replace(resources.warehouse.params["database"],
                                                  "no_such_warehouse")
    monkeypatch.setenv("TOTES_HOME", str(tmp_path / "home"))
    arguments = ["status", "--source-url", url_of(resources.source), "--warehouse-url",
                 missing, "--lake", resources.lake.uri, "--processed", resources.processed.uri]

    shown = CliRunner().invoke(app, arguments)
    as_json = CliRunner().invoke(app, arguments + ["--json"])

    assert shown.exit_code == 1, shown.output
    assert "status incomplete: not read: warehouse" in shown.output
    assert "sales_order" in shown.output  # the rest is still shown
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    assert document["unreadable"] == {"warehouse": "DatabaseRejected"}
    assert document["retryable"] is False and document["pending_batches"] is None
