"""Extract modes on a real PostgreSQL: full snapshots, reingest, backfill, integer watermarks.
Every mode ends in the same warehouse as incremental runs; expected values come from the
data."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
import yaml

from support import CONFIG, fact_versions, query, snapshot
from test_end_to_end import fingerprint
from totes.contracts.config import TablePlan, parse_config, resolve_tables
from totes.contracts.errors import ConfigError, SourceSchemaError
from totes.ingest.extract import ingest_table
from totes.load.warehouse import load
from totes.local.replay import replay
from totes.local.runner import Resources, run_pipeline
from totes.transform.run import transform
from totes.utils.config_file import load_config
from totes.utils.footers import read_footer, read_high_watermark
from totes.utils.lake import Lake

FACTS = {"sales_order": "fact_sales_order", "purchase_order": "fact_purchase_order",
         "payment": "fact_payment"}


def with_config(resources: Resources, tmp_path, name: str, **overrides) -> Resources:
    """``resources`` with the shipped configuration, some tables' settings overridden."""
    document = yaml.safe_load(open(CONFIG))
    for table, settings in overrides.items():
        document["tables"][table] = settings
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return Resources(resources.source, resources.warehouse, resources.lake,
                     resources.processed, str(path), resources.ledger)


def plan_of(table: str, **settings) -> TablePlan:
    return next(p for p in resolve_tables(load_config(CONFIG)) if p.table == table) \
        .model_copy(update=settings)


def content(warehouse) -> dict:
    """Every warehouse table's rows without the facts' serial surrogate keys (which follow
    the order rows arrived in)."""
    from totes.contracts.star_schema import TABLES

    result = {}
    for name, table in TABLES.items():
        columns = ", ".join(table.column_names)
        (count, digest), = query(warehouse, f"SELECT count(*), md5(string_agg(r::text, '|' "
                                            f"ORDER BY r::text)) FROM (SELECT {columns} "
                                            f"FROM {name}) r")
        result[name] = (count, digest)
    return result


def lake_versions(lake: Lake, table: str) -> Counter:
    found = Counter()
    for key in lake.keys_after(table, None):
        rows = lake.read_table(key, columns=[f"{table}_id", "last_updated"])
        found.update(zip(rows[f"{table}_id"].to_pylist(), rows["last_updated"].to_pylist()))
    return found


def test_full_tables_take_a_snapshot_each_run_and_count_what_vanished(resources, tmp_path,
                                                                      new_database):
    full = {"currency": {"extract_type": "full"},
            "design": {"extract_type": "full", "watermark_column": "last_updated"}}
    mixed = with_config(resources, tmp_path, "full", **full)
    first = {r.table: r for r in run_pipeline(mixed).ingest}
    assert (first["currency"].mode, first["currency"].rows) == \
        ("full", snapshot("currency").num_rows)
    assert first["currency"].high_watermark is None  # no watermark named: none kept
    newest = max(zip(snapshot("design")["last_updated"].to_pylist(),
                     snapshot("design")["design_id"].to_pylist()))
    assert first["design"].high_watermark.primary_key == newest[1]

    (design,), = query(resources.source, "INSERT INTO design (design_name, file_location, "
                       "file_name, last_updated) VALUES ('Short-lived', '/x', 'x.json', "
                       "'2024-11-16') RETURNING design_id")
    second = {r.table: r for r in run_pipeline(mixed).ingest}
    assert second["design"].rows == snapshot("design").num_rows + 1
    assert second["sales_order"].rows == 0  # incremental tables: nothing new
    query(resources.source, "DELETE FROM design WHERE design_id = :d", d=design)
    third = {r.table: r for r in run_pipeline(mixed).ingest}
    assert (third["design"].vanished_rows, third["currency"].vanished_rows) == (1, 0)
    assert read_footer(resources.lake, third["design"].key).mode == "full"

    # The same warehouse as incremental runs over the same source: the vanished design stays.
    clean = Resources(resources.source, new_database("wh"), Lake(str(tmp_path / "l2")),
                      Lake(str(tmp_path / "p2")), CONFIG)
    query(resources.source, "INSERT INTO design (design_id, design_name, file_location, "
                            "file_name, last_updated) VALUES (:d, 'Short-lived', '/x', "
                            "'x.json', '2024-11-16')", d=design)
    run_pipeline(clean)
    assert content(clean.warehouse) == content(resources.warehouse)


def test_a_replayed_week_in_full_mode_builds_the_incremental_warehouse(
        tmp_path, new_database):
    runs = {}
    for name, settings in (("incremental", {}), ("full", {"extract_type": "full"})):
        source = new_database("src")
        base = Resources(source, new_database("wh"), Lake(str(tmp_path / name / "lake")),
                         Lake(str(tmp_path / name / "processed")), CONFIG)
        resources = with_config(base, tmp_path, name, **{t: settings for t in
                                                         ("sales_order", "payment",
                                                          "transaction", "staff")})
        replay(resources, datetime(2024, 11, 1), datetime(2024, 11, 4), timedelta(days=1))
        runs[name] = resources
    assert content(runs["full"].warehouse) == content(runs["incremental"].warehouse)


def test_a_reingest_extracts_everything_and_changes_nothing(resources):
    run_pipeline(resources)
    before, watermark = fingerprint(resources.warehouse), read_high_watermark(
        resources.lake, "sales_order")

    again = ingest_table(plan_of("sales_order").with_mode("reingest"), resources.source,
                         resources.lake)
    assert (again.mode, again.rows) == ("reingest", snapshot("sales_order").num_rows)
    assert read_high_watermark(resources.lake, "sales_order") == watermark
    assert transform(resources.lake, resources.processed).source_files == 1
    load(resources.processed, resources.warehouse)
    assert fingerprint(resources.warehouse) == before

    order = query(resources.source, "INSERT INTO sales_order (created_at, last_updated, "
                  "design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, "
                  "agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) "
                  "VALUES ('2024-11-16', '2024-11-16', 1, 1, 1, 1, 1.00, 1, '2024-11-20', "
                  "'2024-11-21', 1) RETURNING sales_order_id")[0][0]
    after = {r.table: r for r in run_pipeline(resources).ingest}
    assert after["sales_order"].rows == 1  # incremental continues after the reingest
    assert order in {i for i, _ in fact_versions(resources.warehouse, "fact_sales_order",
                                                 "sales_order_id")}


def test_a_backfill_restores_exactly_the_missing_versions_and_no_older_dimension(resources):
    run_pipeline(resources)
    query(resources.source, "UPDATE staff SET last_name = 'Latest', last_updated = "
                            "'2024-11-16' WHERE staff_id = 1")
    run_pipeline(resources)
    complete = content(resources.warehouse)
    watermarks = {t: read_high_watermark(resources.lake, t) for t in ("sales_order", "staff")}
    low, high = "2024-11-05 00:00:00", "2024-11-08 00:00:00"
    (lost,), = query(resources.warehouse, "WITH gone AS (DELETE FROM fact_sales_order WHERE "
                     "last_updated_date + last_updated_time >= CAST(:lo AS timestamp) AND "
                     "last_updated_date + last_updated_time < CAST(:hi AS timestamp) "
                     "RETURNING 1) SELECT count(*) FROM gone", lo=low, hi=high)
    expected = sum(1 for moment in snapshot("sales_order")["last_updated"].to_pylist()
                   if datetime.fromisoformat(low) <= moment < datetime.fromisoformat(high))
    assert lost == expected > 0

    results = [ingest_table(plan_of(t).with_mode("backfill", "2020-01-01" if t == "staff"
                                                 else low, high), resources.source,
                            resources.lake) for t in ("sales_order", "staff")]
    assert [r.rows for r in results] == [expected, snapshot("staff").num_rows - 1]
    assert all(r.mode == "backfill" and r.range for r in results)
    assert {t: read_high_watermark(resources.lake, t) for t in watermarks} == watermarks
    transform(resources.lake, resources.processed)
    loaded = load(resources.processed, resources.warehouse)

    counts = {t.table: t for t in loaded.tables}
    assert counts["fact_sales_order"].inserted == expected
    assert counts["dim_staff"].updated == 0  # older versions never replace newer ones
    assert content(resources.warehouse) == complete
    assert {r.table: r.rows for r in run_pipeline(resources).ingest}["sales_order"] == 0


def test_an_integer_watermark_extracts_each_row_once_and_waits_for_open_writers(
        empty_source, tmp_path):
    query(empty_source, "CREATE TABLE events (events_id bigserial PRIMARY KEY, body text)")
    lake = Lake(str(tmp_path))
    plan = TablePlan(table="events", primary_key="events_id", watermark_column="events_id")

    def add(n):
        query(empty_source, "INSERT INTO events (body) SELECT 'e' || i "
                            "FROM generate_series(1, :n) i", n=n)

    add(5)
    first = ingest_table(plan, empty_source, lake)
    add(3)
    second = ingest_table(plan, empty_source, lake)
    assert (first.rows, second.rows) == (5, 3)
    assert second.high_watermark.model_dump() == {"integer": 8, "primary_key": 8}

    writer = empty_source.connect("slow-writer")
    try:
        writer.run("START TRANSACTION")
        writer.run("INSERT INTO events (body) VALUES ('slow')")  # id 9, not committed
        add(1)                                                  # id 10, committed
        during = ingest_table(plan, empty_source, lake)
        writer.run("COMMIT")
    finally:
        writer.close()
    after = ingest_table(plan, empty_source, lake)
    assert during.rows == 0  # 10 waits for 9's writer: none jumped over
    assert after.rows == 2 and ingest_table(plan, empty_source, lake).rows == 0
    ids = [i for key in lake.keys_after("events", None)
           for i in lake.read_table(key)["events_id"].to_pylist()]
    assert sorted(ids) == list(range(1, 11)) and len(ids) == len(set(ids))


@pytest.mark.parametrize("document, message", [
    ({"tables": {"payment": {"extract_type": "sideways"}}},
     "tables.payment.extract_type: input should be 'incremental', 'full' or 'cdc'"),
])
def test_an_unknown_extract_type_names_the_table_and_key(document, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(document, "pipeline.yaml")


def test_bad_backfills_and_modes_fail_before_anything_is_written(resources):
    from totes.ingest.plan import plan

    lake = resources.lake
    payment = plan_of("payment")
    for low, high, message in (("2024-11-05", "2024-11-03", "--from '2024-11-05' must be "
                                "before --to '2024-11-03'"),
                               ("soon", "2024-11-03", "--from 'soon' is not a timestamp, the "
                                "type of payment.last_updated")):
        with pytest.raises(ConfigError, match=message):
            ingest_table(payment.with_mode("backfill", low, high), resources.source, lake)
    with pytest.raises(ConfigError, match="--from/--to make a backfill; they cannot go with "
                                          "reingest"):
        payment.with_mode("reingest", "2024-11-01", "2024-11-02")
    with pytest.raises(ConfigError, match="needs both --from and --to"):
        payment.with_mode("backfill", "2024-11-01")
    no_column = parse_config({"tables": {"currency": {"extract_type": "full",
                                                      "watermark_column": "changed_at"}}})
    with pytest.raises(SourceSchemaError, match="'currency' has no watermark column "
                                                "'changed_at'"):
        plan(no_column, resources.source)
    assert lake.keys_after("payment", None) == []
