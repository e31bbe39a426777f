"""The warehouse report, opened in a real headless Chromium: every chart rendered with marks,
and every printed figure equal to the test's own SQL on the warehouse."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess  # nosec B404: the test's own browser, fixed arguments
from decimal import Decimal
from html import unescape

import pytest

from support import REPO, query
from totes.local.report import write_report
from totes.local.runner import run_pipeline
from totes.utils.ledger import SqliteLedger

CHARTS = ("revenue_by_month", "sales_by_staff", "top_designs", "top_counterparties",
          "purchases_by_month", "payments_by_month", "rows_per_run")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("the report test needs Chromium (scripts/install_test_packages.sh installs "
                "Debian's chromium where it can)")


def browse(browser: str, page, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # nosec B603: fixed arguments
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=15000", "--window-size=1300,3100", *flags,
         page.as_uri()], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.browser
def test_the_report_renders_every_chart_and_prints_the_warehouse_figures(resources, tmp_path):
    browser = chromium()
    resources = dataclasses.replace(resources,
                                    ledger=SqliteLedger(str(tmp_path / "ledger.sqlite3")))
    run = run_pipeline(resources)
    page = tmp_path / "report.html"
    result = write_report(resources.warehouse, str(page), resources.ledger,
                          run.reconcile.summary())
    assert sorted(result.charts) == sorted(CHARTS)
    assert "cdn" not in page.read_text().split("<script>", 1)[0].lower()  # nothing fetched

    dom = browse(browser, page, "--dump-dom").stdout
    charts = dict(re.findall(r'data-chart="(\w+)">(.*?)</section>', dom, re.S))
    assert set(charts) == set(CHARTS)
    for name, body in charts.items():  # each drew its SVG and marks in the browser
        assert 'class="main-svg"' in body, name
        marks = len(re.findall(r'class="point"', body)) + \
            len(re.findall(r'class="js-line"', body))
        assert marks > 0, f"{name} has no bars or lines"

    figures = {key: Decimal(value) for key, value in
               re.findall(r'data-figure="([\w.]+)" data-value="([^"]+)"', unescape(dom))}
    revenue = dict(query(resources.warehouse, """
        SELECT c.currency_code, sum(f.units_sold * f.unit_price)
        FROM (SELECT DISTINCT ON (sales_order_id) * FROM fact_sales_order
              ORDER BY sales_order_id, last_updated_date DESC, last_updated_time DESC) f
        JOIN dim_currency c USING (currency_id) GROUP BY 1"""))
    assert {k[len("revenue."):]: v for k, v in figures.items() if k.startswith("revenue.")} \
        == revenue
    (sales,), = query(resources.source, "SELECT count(*) FROM sales_order")
    (purchases,), = query(resources.source, "SELECT count(*) FROM purchase_order")
    assert (figures["orders.sales"], figures["orders.purchases"]) == (sales, purchases)
    paid = dict(query(resources.source, "SELECT CASE WHEN paid THEN 'paid' ELSE 'unpaid' END, "
                                        "count(*) FROM payment GROUP BY 1"))
    assert (figures["payments.paid"], figures["payments.unpaid"]) == (paid["paid"],
                                                                      paid["unpaid"])
    amounts = dict(query(resources.source, """
        SELECT c.currency_code || CASE WHEN p.paid THEN '.paid' ELSE '.unpaid' END,
               sum(p.payment_amount)
        FROM payment p JOIN currency c USING (currency_id) GROUP BY 1"""))
    assert {k[len("payment_amount."):]: v for k, v in figures.items()
            if k.startswith("payment_amount.")} == amounts
    # Shown as the reader sees them too.
    gbp = f"{revenue['GBP']:,.2f}"
    assert f'data-figure="revenue.GBP" data-value="{revenue["GBP"]}">{gbp}<' in dom
    assert "source and warehouse agree" in dom

    shot = tmp_path / "report.png"
    browse(browser, page, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000
    kept = REPO / "build" / "report-test.png"  # the last run's screenshot, to look at
    kept.parent.mkdir(exist_ok=True)
    shutil.copy(shot, kept)
