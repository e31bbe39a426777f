"""Values the lake's types cannot hold (numeric NaN, timestamps at infinity or outside years
1-9999, MySQL zero dates, bytes that are not UTF-8) stop nothing and are not lost: the
version lands with the value NULL and its source text in ``_totes_unreadable``, and
transform quarantines it with its key, column and text, on real servers and the snapshot."""
from __future__ import annotations

import json

import pytest

from support import query
from totes.contracts.config import TablePlan
from totes.contracts.quarantine import UNREADABLE
from totes.ingest.extract import ingest_table
from totes.local.runner import run_pipeline
from totes.utils.lake import Lake

KINDS = ("CREATE TABLE kinds (kinds_id int PRIMARY KEY, amount numeric(10, 2), ratio float8, "
         "at timestamp(6), zoned timestamptz, day date, last_updated timestamp(3) NOT NULL)")
#: (column, the value as SQL, what the lake keeps of it: None for a value it holds)
VALUES = [
    ("amount", "'NaN'", "NaN"),
    ("ratio", "'Infinity'", None),  # a float holds infinity
    ("ratio", "'NaN'", None),
    ("at", "'infinity'", "infinity"),
    ("at", "'-infinity'", "-infinity"),
    ("at", "'20000-01-01'", "20000-01-01 00:00:00"),
    ("at", "'0044-03-15 BC'", "0044-03-15 00:00:00 BC"),
    ("zoned", "'infinity'", "infinity"),
    ("day", "'infinity'", "infinity"),
    ("day", "'-infinity'", "-infinity"),
    ("day", "'12000-01-01'", "12000-01-01"),
    ("amount", "12.50", None),
]


def test_every_postgres_value_outside_the_lakes_types_lands_null_with_its_text(
        empty_source, tmp_path):
    query(empty_source, KINDS)
    for i, (column, value, _) in enumerate(VALUES, start=1):
        query(empty_source, f"INSERT INTO kinds (kinds_id, {column}, last_updated) VALUES "
                            f"(CAST(:i AS int), {value}, timestamp '2024-01-01' + "
                            "CAST(:i AS int) * interval '1 s')", i=i)
    lake = Lake(str(tmp_path))
    result = ingest_table(TablePlan(table="kinds", primary_key="kinds_id"), empty_source, lake)
    assert result.rows == len(VALUES)
    rows = {r["kinds_id"]: r for r in lake.read_table(result.key).to_pylist()}
    for i, (column, value, kept) in enumerate(VALUES, start=1):
        found = json.loads(rows[i][UNREADABLE]) if rows[i][UNREADABLE] else {}
        if kept is None:
            assert found == {} and rows[i][column] is not None, (column, value)
        else:
            assert found == {column: kept} and rows[i][column] is None, (column, value)


def test_a_nan_in_one_row_is_quarantined_and_every_other_table_lands(resources):
    run_pipeline(resources)
    query(resources.source, "UPDATE sales_order SET unit_price = 'NaN', last_updated = now() "
                            "WHERE sales_order_id = 20")
    query(resources.source, "UPDATE staff SET last_name = 'Renamed', last_updated = now() "
                            "WHERE staff_id = 1")

    result = run_pipeline(resources)  # no error: the rest of every batch lands

    assert result.transform.quarantined == {"sales_order": 1}
    from totes.utils.manifests import latest_manifest

    _, manifest = latest_manifest(resources.processed)
    [held] = resources.processed.read_table(manifest.quarantine[-1]).to_pylist()
    assert (held["sales_order_id"], held["_totes_column"], held["_totes_value"],
            held["_totes_rule"]) == (20, "unit_price", "NaN", "unreadable")
    assert held["_totes_message"].startswith("sales_order row sales_order_id=20: unit_price "
                                             "'NaN'")
    assert query(resources.warehouse, "SELECT last_name FROM dim_staff WHERE staff_id = 1") \
        == [["Renamed"]]


def test_an_unreadable_last_updated_is_quarantined_and_loads_go_on(resources):
    """A version whose last_updated is '-infinity' has no time the lake can hold (a first
    or full extract reads it; an incremental one starts after it): it is
    quarantined without one, the load records nothing for it and goes on, and totes
    quarantine lists it held."""
    from totes.load.quarantine import quarantine_report

    query(resources.source, "UPDATE sales_order SET last_updated = '-infinity' "
                            "WHERE sales_order_id = 20")

    result = run_pipeline(resources)

    assert result.transform.quarantined == {"sales_order": 1} and result.load.batches
    report = quarantine_report(resources.processed, resources.warehouse)
    assert [(e.table, e.row_id, e.rule, e.status) for e in report.entries] == [
        ("sales_order", 20, "unreadable", "held")]
    assert query(resources.warehouse, "SELECT count(*) FROM totes.quarantined") == [[0]]
    query(resources.source, "UPDATE staff SET last_name = 'Next', last_updated = now() "
                            "WHERE staff_id = 1")
    assert run_pipeline(resources).load.batches  # the next load goes on


def test_bytes_that_are_not_utf8_land_null_with_their_escaped_text(server, tmp_path):
    from totes.contracts.identifiers import quote_ident
    from totes.utils.postgres import Database

    name = f"ascii_{tmp_path.name[-12:].lower().replace('-', '_')}"
    query(server, f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING "
                  "'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    source = Database("source", {**server.params, "database": name})
    query(source, "CREATE TABLE notes (notes_id int PRIMARY KEY, body text, "
                  "last_updated timestamp NOT NULL)")
    query(source, "INSERT INTO notes VALUES (1, 'plain', '2024-01-01'), "
                  "(2, convert_from('\\x636166e9'::bytea, 'SQL_ASCII'), '2024-01-02')")
    lake = Lake(str(tmp_path / "lake"))
    result = ingest_table(TablePlan(table="notes", primary_key="notes_id"), source, lake)
    rows = {r["notes_id"]: r for r in lake.read_table(result.key).to_pylist()}
    assert rows[1]["body"] == "plain" and rows[1][UNREADABLE] is None
    assert rows[2]["body"] is None
    assert json.loads(rows[2][UNREADABLE]) == {"body": "caf\\xe9"}


@pytest.fixture
def zero_dates(empty_mysql_source):
    from ingest.test_mysql_source import run_sql

    run_sql(empty_mysql_source, "SET SESSION sql_mode = ''",
            "CREATE TABLE dated (dated_id INT PRIMARY KEY, due DATE, at DATETIME(3), "
            "last_updated DATETIME(3) NOT NULL)",
            "INSERT INTO dated VALUES (1, '0000-00-00', '0000-00-00 00:00:00', "
            "'2024-01-01'), (2, '2024-02-29', '2024-02-29 10:00:00', '2024-01-02')")
    return empty_mysql_source


def test_a_mysql_zero_date_lands_null_with_its_text(zero_dates, tmp_path):
    lake = Lake(str(tmp_path))
    result = ingest_table(TablePlan(table="dated", primary_key="dated_id"), zero_dates, lake)
    rows = {r["dated_id"]: r for r in lake.read_table(result.key).to_pylist()}
    assert rows[1]["due"] is None and rows[1]["at"] is None
    assert json.loads(rows[1][UNREADABLE]) == {"due": "0000-00-00",
                                               "at": "0000-00-00 00:00:00.000"}
    assert rows[2][UNREADABLE] is None and str(rows[2]["due"]) == "2024-02-29"
