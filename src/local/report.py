"""``totes report``: one self-contained HTML file of the warehouse, for the people it is for.

Sales, purchases and payments (every figure from SQL on the current-version views, so each
source row counts once) and the pipeline's own health (the last load, rows per run from the
ledger, the reconciliation's status). Charts are Plotly figures; plotly.js is inlined once,
so the file opens without a network. Every printed figure also carries its exact value in a
``data-figure`` attribute (``data-figure="revenue.GBP"``), which the tests compare with their
own SQL.
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Optional

from totes.contracts.errors import ConfigError
from totes.contracts.identifiers import quote_ident
from totes.contracts.stage_results import counted
from totes.contracts.star_schema import TABLES
from totes.load.raw import raw_counts
from totes.utils import settings
from totes.utils.settings import bookkeeping
from totes.utils.lake import storage_call
from totes.utils.postgres import Database

log = logging.getLogger(__name__)

#: Every chart's query: name → SQL on the warehouse (the current-version views); ``{star}``
#: stands for the warehouse schema (:func:`statement`).
QUERIES: dict[str, str] = {
    "revenue_by_month": """
        SELECT to_char(d.date_id, 'YYYY-MM') AS month, c.currency_code,
               sum(f.units_sold * f.unit_price) AS revenue, count(*) AS orders
        FROM {star}.fact_sales_order_current f
        JOIN {star}.dim_date d ON d.date_id = f.created_date
        JOIN {star}.dim_currency c USING (currency_id)
        GROUP BY 1, 2 ORDER BY 1, 2""",
    "top_designs": """
        SELECT d.design_name, sum(f.units_sold) AS units, count(*) AS orders
        FROM {star}.fact_sales_order_current f JOIN {star}.dim_design d USING (design_id)
        GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10""",
    "top_counterparties": """
        SELECT c.counterparty_legal_name, sum(f.units_sold) AS units, count(*) AS orders
        FROM {star}.fact_sales_order_current f
        JOIN {star}.dim_counterparty c USING (counterparty_id)
        GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10""",
    "sales_by_staff": """
        SELECT s.first_name || ' ' || s.last_name AS staff, s.department_name,
               sum(f.units_sold) AS units, count(*) AS orders
        FROM {star}.fact_sales_order_current f
        JOIN {star}.dim_staff s ON s.staff_id = f.sales_staff_id
        GROUP BY 1, 2 ORDER BY 3 DESC, 1""",
    "purchases_by_month": """
        SELECT to_char(f.created_date, 'YYYY-MM') AS month, c.currency_code,
               sum(f.item_quantity) AS quantity,
               sum(f.item_quantity * f.item_unit_price) AS value
        FROM {star}.fact_purchase_order_current f JOIN {star}.dim_currency c USING (currency_id)
        GROUP BY 1, 2 ORDER BY 1, 2""",
    "payments_by_month": """
        SELECT to_char(f.payment_date, 'YYYY-MM') AS month, f.paid, count(*) AS payments,
               sum(f.payment_amount) AS amount
        FROM {star}.fact_payment_current f
        GROUP BY 1, 2 ORDER BY 1, 2""",
}

#: The headline figures: name → SQL returning (label, value) rows (``{star}`` as above).
HEADLINES: dict[str, str] = {
    "revenue": """
        SELECT c.currency_code, sum(f.units_sold * f.unit_price)
        FROM {star}.fact_sales_order_current f JOIN {star}.dim_currency c USING (currency_id)
        GROUP BY 1 ORDER BY 1""",
    "orders": "SELECT 'sales', count(*) FROM {star}.fact_sales_order_current UNION ALL "
              "SELECT 'purchases', count(*) FROM {star}.fact_purchase_order_current",
    "payments": """
        SELECT CASE WHEN paid THEN 'paid' ELSE 'unpaid' END, count(*)
        FROM {star}.fact_payment_current GROUP BY 1 ORDER BY 1""",
    "payment_amount": """
        SELECT c.currency_code || CASE WHEN f.paid THEN '.paid' ELSE '.unpaid' END,
               sum(f.payment_amount)
        FROM {star}.fact_payment_current f JOIN {star}.dim_currency c USING (currency_id)
        GROUP BY 1 ORDER BY 1""",
}


def statement(sql: str, schema: Optional[str] = None) -> str:
    """``sql`` of :data:`QUERIES` or :data:`HEADLINES` with its relations in the warehouse
    schema ``schema`` (default ``TOTES_WAREHOUSE_SCHEMA``, ``public``), quoted.

    Raises:
        ConfigError: the schema is not a valid identifier.
    """
    return sql.replace("{star}", quote_ident(schema or settings.current().warehouse_schema))


@dataclass(frozen=True)
class ReportResult:
    """What ``totes report`` wrote: the file, its size in bytes, the charts it holds, and the
    headline figures (``{"revenue": {"GBP": Decimal(...)}, ...}``)."""

    path: str
    bytes: int
    charts: list[str]
    headlines: dict[str, dict[str, object]]
    reconcile: Optional[str]
    #: The raw layer's tables (:func:`totes.load.raw.raw_counts`: ``table``, ``relation``,
    #: ``versions``, ``current``, ``batches``, ``loaded_through``, ``dropped``).
    raw: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "charts": self.charts,
                "headlines": {k: {label: str(v) for label, v in values.items()}
                              for k, values in self.headlines.items()},
                "reconcile": self.reconcile, "raw": self.raw}


def _rows(conn, sql: str) -> list[dict]:
    """The rows of ``sql`` as dicts (pg8000 names the columns in ``conn.columns``)."""
    found = conn.run(sql)
    names = [c["name"] for c in conn.columns]
    return [dict(zip(names, row)) for row in found]


def _figure_html(name: str, figure) -> str:
    figure.update_layout(margin=dict(l=60, r=20, t=50, b=60), height=380,
                         template="plotly_white", font=dict(family="system-ui, sans-serif"))
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{name}",
                          config={"displayModeBar": False, "responsive": True})


def _float(value) -> float:
    return float(value) if value is not None else 0.0


def _charts(data: dict[str, list[dict]], health: dict) -> dict[str, tuple[str, object]]:
    """name → (title, Plotly figure)."""
    import plotly.graph_objects as go

    charts: dict[str, tuple[str, object]] = {}
    revenue = go.Figure()
    for currency in sorted({r["currency_code"] for r in data["revenue_by_month"]}):
        rows = [r for r in data["revenue_by_month"] if r["currency_code"] == currency]
        revenue.add_trace(go.Bar(x=[r["month"] for r in rows],
                                 y=[_float(r["revenue"]) for r in rows], name=currency))
    revenue.update_layout(barmode="group", yaxis_title="revenue (units × unit price)")
    charts["revenue_by_month"] = ("Revenue by month and currency", revenue)
    for name, label_column, title in (
            ("top_designs", "design_name", "Top designs by units sold"),
            ("top_counterparties", "counterparty_legal_name",
             "Top counterparties by units sold")):
        rows = list(reversed(data[name]))
        figure = go.Figure(go.Bar(x=[r["units"] for r in rows], y=[r[label_column] for r in rows],
                                  orientation="h",
                                  text=[f"{counted(r['units'], 'unit')} in "
                                        f"{counted(r['orders'], 'order')}" for r in rows]))
        figure.update_layout(xaxis_title="units sold")
        charts[name] = (title, figure)
    staff = go.Figure()
    for department in sorted({r["department_name"] for r in data["sales_by_staff"]}):
        rows = [r for r in data["sales_by_staff"] if r["department_name"] == department]
        staff.add_trace(go.Bar(x=[r["staff"] for r in rows], y=[r["units"] for r in rows],
                               name=department))
    staff.update_layout(yaxis_title="units sold", legend_title="department")
    charts["sales_by_staff"] = ("Sales by staff and department", staff)
    purchases = go.Figure()
    for currency in sorted({r["currency_code"] for r in data["purchases_by_month"]}):
        rows = [r for r in data["purchases_by_month"] if r["currency_code"] == currency]
        purchases.add_trace(go.Scatter(x=[r["month"] for r in rows],
                                       y=[_float(r["value"]) for r in rows], name=currency,
                                       mode="lines+markers"))
    purchases.update_layout(yaxis_title="purchase value (quantity × unit price)")
    charts["purchases_by_month"] = ("Purchase volumes by month and currency", purchases)
    payments = go.Figure()
    for paid, label in ((True, "paid"), (False, "unpaid")):
        rows = [r for r in data["payments_by_month"] if r["paid"] is paid]
        payments.add_trace(go.Bar(x=[r["month"] for r in rows],
                                  y=[r["payments"] for r in rows], name=label))
    payments.update_layout(barmode="stack", yaxis_title="payments (by payment date)")
    charts["payments_by_month"] = ("Payments paid and unpaid over time", payments)
    if health["runs"]:
        runs = health["runs"]
        loaded = go.Figure(go.Bar(x=[r["started_at"] for r in runs],
                                  y=[r["rows"] for r in runs], name="rows ingested"))
        loaded.update_layout(yaxis_title="rows ingested", xaxis_title="run started (UTC)",
                             xaxis_type="category")
        charts["rows_per_run"] = ("Rows ingested per run (the ledger)", loaded)
    return charts


def _runs(ledger, limit: int = 200) -> list[dict]:
    """Rows ingested per run, oldest first, from the ledger's ingest records."""
    if ledger is None:
        return []
    per_run: dict[str, dict] = {}
    for record in ledger.history(stage="ingest", limit=limit):
        if record.status != "succeeded":
            continue
        run = per_run.setdefault(record.run_id, {"run_id": record.run_id, "rows": 0,
                                                 "started_at": record.started_at[:19]})
        run["rows"] += max(record.rows, 0)
        run["started_at"] = min(run["started_at"], record.started_at[:19])
    return sorted(per_run.values(), key=lambda r: r["started_at"])


def _money(value) -> str:
    return f"{Decimal(value):,.2f}"


def _headline_html(headlines: dict[str, dict[str, object]]) -> str:
    cards = []
    for currency, value in headlines["revenue"].items():
        cards.append(("Revenue", currency, _money(value), f"revenue.{currency}", value))
    for kind, value in headlines["orders"].items():
        title = {"sales": "Sales orders", "purchases": "Purchase orders"}.get(kind, kind)
        cards.append((title, "current", f"{value:,}", f"orders.{kind}", value))
    for state, value in headlines["payments"].items():
        cards.append((f"Payments {state}", "count", f"{value:,}", f"payments.{state}", value))
    items = "\n".join(
        f'<div class="card"><div class="label">{html.escape(title)} '
        f'<span class="unit">{html.escape(unit)}</span></div>'
        f'<div class="value" data-figure="{html.escape(key)}" '
        f'data-value="{html.escape(str(exact))}">{html.escape(shown)}</div></div>'
        for title, unit, shown, key, exact in cards)
    amounts = "\n".join(
        f'<tr><td>{html.escape(label.split(".")[0])}</td><td>{html.escape(label.split(".")[1])}'
        f'</td><td class="num" data-figure="payment_amount.{html.escape(label)}" '
        f'data-value="{html.escape(str(value))}">{_money(value)}</td></tr>'
        for label, value in headlines["payment_amount"].items())
    return (f'<div class="cards">{items}</div>\n<table class="figures"><thead><tr>'
            f'<th>currency</th><th>payments</th><th>amount</th></tr></thead>'
            f'<tbody>{amounts}</tbody></table>')


def _health_html(health: dict) -> str:
    rows = [("Last load", health["last_load"] or "never"),
            ("Batches loaded", f"{health['batches']:,}"),
            ("Runs in the ledger", f"{len(health['runs']):,}" if health["runs"] else
             "no ledger records"),
            ("Reconciliation", health["reconcile"] or "not run (no source given)")]
    body = "".join(f'<tr><th>{html.escape(k)}</th><td data-health="{html.escape(k)}">'
                   f'{html.escape(v)}</td></tr>' for k, v in rows)
    return f'<table class="health">{body}</table>' + _raw_html(health.get("raw") or [])


def _raw_html(tables: list[dict]) -> str:
    """The raw layer's tables with their row counts (none: nothing)."""
    if not tables:
        return ""
    head = ("<tr><th>raw table</th><th class=\"num\">row versions</th>"
            "<th class=\"num\">current rows</th><th class=\"num\">lake batches</th>"
            "<th>columns dropped in the source</th></tr>")
    body = "".join(
        f'<tr><td><code>{html.escape(t["relation"])}</code></td>'
        f'<td class="num" data-figure="raw.{html.escape(t["table"])}.versions">'
        f'{t["versions"]:,}</td>'
        f'<td class="num" data-figure="raw.{html.escape(t["table"])}.current">'
        f'{t["current"]:,}</td><td class="num">{t["batches"]:,}</td>'
        f'<td>{html.escape(", ".join(t["dropped"]) or "none")}</td></tr>' for t in tables)
    return (f'<h3>The raw layer</h3><p>Every row version of these tables, as the lake holds '
            f'it; <code>&lt;table&gt;_current</code> holds each row\'s current version.</p>'
            f'<table class="raw">{head}{body}</table>')


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222;
       padding: 0 1rem; }
h1 { margin-bottom: 0; } .subtitle { color: #666; margin-top: .3rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .3rem; margin-top: 2.5rem; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .8rem 1.2rem; min-width: 11rem; }
.card .label { color: #555; font-size: .9rem; } .card .unit { color: #999; }
.card .value { font-size: 1.5rem; font-weight: 600; margin-top: .2rem; }
table { border-collapse: collapse; margin: 1rem 0; }
td, th { border-bottom: 1px solid #eee; padding: .35rem .8rem; text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.chart { min-height: 380px; } .grid > section h3 { margin-bottom: 0; }
footer { color: #888; margin-top: 3rem; font-size: .85rem; }
"""


def render_html(data: dict[str, list[dict]], headlines: dict, health: dict,
                generated_at: str) -> tuple[str, list[str]]:
    """The report's HTML and the names of its charts."""
    from plotly.offline import get_plotlyjs

    charts = _charts(data, health)

    def section(name: str) -> str:
        title, figure = charts[name]
        return (f'<section><h3>{html.escape(title)}</h3><div class="chart" '
                f'data-chart="{name}">{_figure_html(name, figure)}</div></section>')

    sales = "".join(section(n) for n in ("revenue_by_month", "sales_by_staff"))
    tops = "".join(section(n) for n in ("top_designs", "top_counterparties"))
    money = "".join(section(n) for n in ("purchases_by_month", "payments_by_month"))
    runs = section("rows_per_run") if "rows_per_run" in charts else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Terrific Totes: the warehouse report</title>
<style>{_STYLE}</style>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>Terrific Totes: sales, purchases and payments</h1>
<p class="subtitle">From the totes warehouse, current version of each source row.
Generated {html.escape(generated_at)} UTC.</p>
<h2>Headlines</h2>
{_headline_html(headlines)}
<h2>Sales</h2>
<div class="grid">{sales}</div>
<div class="grid">{tops}</div>
<h2>Purchases and payments</h2>
<div class="grid">{money}</div>
<h2>The pipeline</h2>
{_health_html(health)}
{runs}
<footer>Written by <code>totes report</code>. Figures are SQL on
<code>fact_*_current</code>, the warehouse's current-version views.</footer>
</body></html>
"""
    return page, list(charts)


def write_report(warehouse: Database, output: str, ledger=None,
                 reconcile_summary: Optional[str] = None) -> ReportResult:
    """Query ``warehouse``, render the report and write it to ``output`` (one HTML file).

    Raises:
        ConfigError: the warehouse has no star schema yet (run ``totes run`` first).
        DatabaseUnavailable / DatabaseRejected: the warehouse could not be reached.
        StorageUnavailable / LakeError: the file could not be written.
    """
    doing = f"reading the {warehouse.describe()} for the report"
    with warehouse.session("totes-report", doing) as session:
        conn = session.conn
        schema = settings.current().warehouse_schema
        (ready,), = conn.run("SELECT to_regclass(:v) IS NOT NULL",
                             v=TABLES["fact_payment"].current_relation(schema))
        if not ready:
            raise ConfigError(f"the {warehouse.describe()} has no star schema in schema "
                              f"{schema} yet (or one older than schema version 5): run `totes "
                              "run` (or `totes load`) first")
        data = {name: _rows(conn, statement(sql, schema)) for name, sql in QUERIES.items()}
        headlines = {name: {str(label): value for label, value in
                            conn.run(statement(sql, schema))}
                     for name, sql in HEADLINES.items()}
        (last_load, batches), = conn.run("SELECT max(loaded_at), count(*) "  # nosec B608
                                         f"FROM {bookkeeping()}.loaded_batch")
        raw = raw_counts(conn)
    health = {"last_load": last_load.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
              if last_load else None, "batches": batches, "runs": _runs(ledger),
              "reconcile": reconcile_summary, "raw": raw}
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    page, charts = render_html(data, headlines, health, generated)
    path = Path(output)
    with storage_call(f"writing the report {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    log.info("report: %s (%d charts, %d bytes)", path, len(charts), path.stat().st_size)
    return ReportResult(str(path), path.stat().st_size, charts, headlines, reconcile_summary,
                        raw)
