"""Bounded work per invocation (a first load of any size completes): ingest cuts a large
extract into lake batches of ``max_batch_rows``, transform takes whole lake batches up to
``TOTES_TRANSFORM_MAX_ROWS`` rows per source table, load at most ``TOTES_LOAD_MAX_BATCHES``
batches and whole batches up to ``TOTES_LOAD_MAX_ROWS`` rows; each says ``more`` when work
waits, and ``totes run`` (as the state machine's ``MorePending``) goes round until none
does. The warehouse equals the one an unbounded run builds, every version once."""
from __future__ import annotations

import yaml

from support import CONFIG, query
from totes.ingest.plan import plan
from totes.local.runner import Resources, ingest_all, run_pipeline
from totes.utils.config_file import load_config
from totes.contracts.source_tables import SOURCE_TABLES
from totes.load.warehouse import load
from totes.transform.run import transform
from totes.utils.lake import Lake


def _bounded_config(tmp_path, rows: int) -> str:
    config = yaml.safe_load(open(CONFIG))
    # Record batches of 64 KiB of CSV (a few hundred rows): batches end close to ``rows``.
    config.setdefault("defaults", {}).update(max_batch_rows=rows, record_batch_bytes=1 << 16)
    path = tmp_path / "bounded.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _facts(warehouse) -> dict:
    return {fact: sorted(tuple(r) for r in query(
        warehouse, f"SELECT {key}, last_updated_date, last_updated_time FROM {fact}"))
        for fact, key in (("fact_sales_order", "sales_order_id"),
                          ("fact_purchase_order", "purchase_order_id"),
                          ("fact_payment", "payment_id"))}  # nosec B608 (the schema's names)


def test_a_first_run_in_bounded_steps_builds_the_warehouse_an_unbounded_one_builds(
        seeded_source, new_database, tmp_path, monkeypatch):
    whole = Resources(seeded_source, new_database("wh"), Lake(str(tmp_path / "wl")),
                      Lake(str(tmp_path / "wp")), CONFIG)
    run_pipeline(whole, reconcile=False)

    monkeypatch.setenv("TOTES_TRANSFORM_MAX_ROWS", "4000")
    monkeypatch.setenv("TOTES_LOAD_MAX_BATCHES", "1")
    bounded = Resources(seeded_source, new_database("wh"), Lake(str(tmp_path / "bl")),
                        Lake(str(tmp_path / "bp")), _bounded_config(tmp_path, 3000))
    result = run_pipeline(bounded)

    sales = next(r for r in result.ingest if r.table == "sales_order")
    assert sales.rows == 11_187 and len(sales.keys) >= 3  # about 3,000 rows a batch
    # Transform takes about 2 of those per table at a time, and each load one batch.
    assert len(result.load.batches) >= 2 and not result.transform.more and not result.load.more
    assert sum(t.rows for t in result.transform.tables if t.table == "fact_sales_order") \
        == 11_187
    assert _facts(bounded.warehouse) == _facts(whole.warehouse)
    assert result.reconcile is not None and result.reconcile.equal, result.reconcile.summary()
    assert run_pipeline(bounded).load.batches == []  # nothing left behind


def test_transform_and_load_say_more_while_work_waits(seeded_source, warehouse, tmp_path,
                                                      monkeypatch):
    lake, processed = Lake(str(tmp_path / "lake")), Lake(str(tmp_path / "processed"))
    planned = plan(load_config(_bounded_config(tmp_path, 5000)), seeded_source)
    ingest_all(seeded_source, lake, planned)
    monkeypatch.setenv("TOTES_TRANSFORM_MAX_ROWS", "1")  # one lake batch per table a time
    batches = {t: len(lake.keys_after(t, None)) for t in SOURCE_TABLES}
    assert batches["sales_order"] == 3 and batches["payment"] >= 3  # 11,187 and 15,836 rows
    rounds = max(batches.values())
    done = []
    for i in range(rounds):
        result = transform(lake, processed)
        assert result.source_files == sum(1 for n in batches.values() if n > i)
        assert result.more == (i < rounds - 1)
        done.append(result.manifest)
    assert transform(lake, processed).manifest is None

    monkeypatch.setenv("TOTES_LOAD_MAX_ROWS", "1")  # whole batches, at least one: one a load
    one = load(processed, warehouse)
    assert one.batches == done[:1] and one.more
    monkeypatch.delenv("TOTES_LOAD_MAX_ROWS")
    monkeypatch.setenv("TOTES_LOAD_MAX_BATCHES", "2")
    two = load(processed, warehouse)
    assert two.batches == done[1:3] and two.more == (rounds > 3)
    rest = load(processed, warehouse)
    assert rest.batches == done[3:] and not rest.more
    (count,), = query(warehouse, "SELECT count(*) FROM fact_sales_order")
    assert count == 11_187
