"""Bulk extracts through the ADBC PostgreSQL driver (``TOTES_BULK_READER=adbc``, the default):
the lake files hold exactly what the pg8000 path writes, in every bulk mode, whole and in
parts (which join the extract's exported snapshot); an incremental run after the first stays
on pg8000. Real PostgreSQL, the real snapshot."""
from __future__ import annotations

import pytest

from support import query
from totes.contracts.config import TablePlan
from totes.ingest.extract import ingest_table
from totes.utils import postgres_arrow
from totes.utils.footers import batch_files
from totes.utils.lake import Lake


def plan(**settings) -> TablePlan:
    return TablePlan(table="sales_order", primary_key="sales_order_id", **settings)


def files_of(lake: Lake, key: str) -> list:
    """The batch's rows (through its parts) and its footer."""
    return [(lake.read_table(file), lake.metadata(file).metadata)
            for file in batch_files(lake, key)]


@pytest.fixture
def bulk_reads(monkeypatch):
    """How many reads went through the ADBC driver."""
    calls = []
    real = postgres_arrow.snapshot_read

    def counted(*args, **kwargs):
        calls.append(args[6])  # the table
        return real(*args, **kwargs)
    monkeypatch.setattr(postgres_arrow, "snapshot_read", counted)
    return calls


@pytest.mark.parametrize("split", [{}, {"partition_column": "sales_order_id",
                                        "num_partitions": 3}])
def test_bulk_reads_write_what_pg8000_writes_in_every_mode(seeded_source, tmp_path, monkeypatch,
                                                           bulk_reads, split):
    # The widest price its numeric(10, 2) holds: the cast from the driver's text must keep it.
    query(seeded_source, "UPDATE sales_order SET unit_price = 99999999.99 "
          "WHERE sales_order_id = 7")
    steps = [("incremental", {}), ("full", {}), ("reingest", {}),
             ("backfill", {"backfill_from": "2023-01-01", "backfill_to": "2023-06-01"})]
    for mode, settings in steps:
        lakes = {}
        for reader in ("pg8000", "adbc"):
            monkeypatch.setenv("TOTES_BULK_READER", reader)
            lake = Lake(str(tmp_path / f"{mode}-{reader}"))
            result = ingest_table(plan(mode=mode, **settings, **split), seeded_source, lake)
            lakes[reader] = (result.rows, result.high_watermark, files_of(lake, result.key))
        pg8000, adbc = lakes["pg8000"], lakes["adbc"]
        assert adbc[:2] == pg8000[:2], mode
        assert [t.schema for t, _ in adbc[2]] == [t.schema for t, _ in pg8000[2]], mode
        assert [t.sort_by("sales_order_id") for t, _ in adbc[2]] == \
            [t.sort_by("sales_order_id") for t, _ in pg8000[2]], mode
        assert pg8000[0] > 0
    assert len(bulk_reads) == len(steps) * (3 if split else 1)


def test_an_incremental_run_after_the_first_reads_through_pg8000(seeded_source, tmp_path,
                                                                 bulk_reads):
    lake = Lake(str(tmp_path))
    first = ingest_table(plan(), seeded_source, lake)
    assert bulk_reads == ["sales_order"] and first.rows == 11187
    query(seeded_source, "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = "
          "CAST('2024-11-16' AS timestamp) WHERE sales_order_id <= 3")
    second = ingest_table(plan(), seeded_source, lake)
    assert second.rows == 3 and bulk_reads == ["sales_order"]


def test_a_lock_held_on_the_table_is_a_lock_timeout_of_the_bulk_read(
        seeded_source, tmp_path, monkeypatch, bulk_reads):
    from totes.contracts.errors import DatabaseUnavailable

    monkeypatch.setenv("TOTES_DB_TIMEOUT_SECONDS", "1")
    holder = seeded_source.connect("lock-holder")
    try:
        holder.run("START TRANSACTION")
        holder.run("LOCK TABLE sales_order IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseUnavailable, match="sales_order.*lock timeout.*55P03"):
            ingest_table(plan(mode="full"), seeded_source, Lake(str(tmp_path)))
    finally:
        holder.run("ROLLBACK")
        holder.close()
    assert not list((tmp_path).rglob("*.parquet"))


def test_a_password_reaches_libpq_whole():
    info = postgres_arrow.conninfo({"database": "db", "user": "u", "password": "a b'c\\d@/:",
                                    "host": "h", "port": 5432, "ssl_context": False}, "totes")
    assert "password='a b\\'c\\\\d@/:'" in info
    assert "sslmode='disable'" in info and "host='h'" in info and "port='5432'" in info
