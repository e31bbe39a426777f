"""The Spark engine of transform and load (the stages' ``glue`` job type) on a local Spark:
the same processed files and the same warehouse as the Lambda path, row for row and key for
key (the facts' serial keys included), for a first load into empty facts and for a second
batch merged into facts that have rows; the work of each fact split over Spark tasks."""
from __future__ import annotations

import logging

import pytest

from support import CONFIG, query, url_of
from totes.contracts.star_schema import TABLES
from totes.ingest.plan import plan
from totes.jobs import glue_stages
from totes.load.spark_load import load_on_spark
from totes.load.warehouse import load
from totes.local.runner import ingest_all
from totes.transform.run import transform
from totes.transform.spark_transform import transform_on_spark
from totes.utils.config_file import load_config
from totes.utils.job_results import job_result_key, read_job_result
from totes.utils.lake import Lake
from totes.utils.manifests import latest_manifest
from totes.utils.spark import DatabaseRef, row_ranges

pytest.importorskip("pyspark", reason="the Spark engine's tests need pyspark "
                                      "(requirements-dev.txt)")


def warehouse_rows(warehouse) -> dict:
    """Every row of every star-schema table, surrogate keys included, in a stable order."""
    found = {}
    for name in TABLES:
        rows = query(warehouse, f"SELECT * FROM {name}")  # nosec B608 (the schema's names)
        found[name] = sorted(tuple(str(v) for v in row) for row in rows)
    return found


def processed_rows(processed: Lake) -> dict:
    _, manifest = latest_manifest(processed)
    return {o.table: processed.read_table(o.key).to_pylist() for o in manifest.outputs}


def test_spark_transform_and_load_build_the_lambda_paths_warehouse(
        spark, seeded_source, new_database, tmp_path, caplog, monkeypatch):
    """Round 1: the Glue job's entry (every fact on Spark) against the Lambda path, into empty
    facts. Then the facts of one table on Spark: two batches transformed, then loaded by one
    load into facts that have rows."""
    lake = Lake(str(tmp_path / "lake"))
    ingest_all(seeded_source, lake, plan(load_config(CONFIG), seeded_source))
    by_lambda, by_spark = new_database("wh"), new_database("wh")
    lambda_processed = Lake(str(tmp_path / "lambda-processed"))
    spark_processed = Lake(str(tmp_path / "spark-processed"))

    def lambda_path() -> None:
        transform(lake, lambda_processed)
        load(lambda_processed, by_lambda)

    lambda_path()
    arguments = {"TOTES_LAKE": lake.uri, "TOTES_PROCESSED": spark_processed.uri,
                 "TOTES_WAREHOUSE_URL": url_of(by_spark)}
    for name, value in arguments.items():  # the job sets them: restored after the test
        monkeypatch.setenv(name, value)
    key = job_result_key("execution-1")
    with caplog.at_level(logging.INFO, logger="totes"):
        assert glue_stages.main(
            ["--tables", '["sales_order", "purchase_order", "payment"]', "--result_key", key,
             "--run_id", "execution-1"] + [item for name, value in arguments.items()
                                           for item in (f"--{name}", value)], spark) == 0
    transformed = read_job_result(spark_processed, key, "transform")
    assert transformed["manifest"] == latest_manifest(spark_processed)[0]
    assert read_job_result(spark_processed, key, "load")["batches"] == [transformed["manifest"]]
    assert processed_rows(spark_processed) == processed_rows(lambda_processed)
    assert warehouse_rows(by_spark) == warehouse_rows(by_lambda)
    said = caplog.text
    assert "fact_sales_order: 2 Spark tasks over" in said  # transform's tasks
    assert "fact_sales_order: 2 Spark tasks staging" in said  # load's tasks
    (sales,), = query(by_spark, "SELECT count(*) FROM fact_sales_order")
    assert sales == 11_187

    spark_warehouse = DatabaseRef(url=url_of(by_spark), role="warehouse")
    caplog.clear()
    for first, last in ((20, 2019), (1000, 1499)):  # two batches, loaded by one load
        query(seeded_source, "UPDATE sales_order SET units_sold = units_sold + 1, "
                             "last_updated = now() WHERE sales_order_id BETWEEN :first AND "
                             ":last", first=first, last=last)
        query(seeded_source, "UPDATE payment SET payment_amount = payment_amount + 1, "
                             "last_updated = now() WHERE payment_id BETWEEN :first AND :last",
              first=first, last=first + 299)
        ingest_all(seeded_source, lake, plan(load_config(CONFIG), seeded_source,
                                             tables=["sales_order", "payment"]))
        transform(lake, lambda_processed)
        with caplog.at_level(logging.INFO, logger="totes"):
            transform_on_spark(spark, lake.uri, spark_processed.uri, tasks=3,
                               tables={"sales_order"})
        assert processed_rows(spark_processed) == processed_rows(lambda_processed)
    load(lambda_processed, by_lambda)
    with caplog.at_level(logging.INFO, logger="totes"):
        loaded = load_on_spark(spark, spark_processed.uri, spark_warehouse, tasks=3,
                               tables={"sales_order"})
    assert len(loaded.batches) == 2
    assert warehouse_rows(by_spark) == warehouse_rows(by_lambda)
    said = caplog.text
    assert said.count("fact_sales_order: 3 Spark tasks over") == 2
    assert said.count("fact_sales_order: 3 Spark tasks staging") == 2  # one table per file
    assert "fact_payment: " not in said  # payment's facts: by the driver, as the Lambda's
    (sales,), = query(by_spark, "SELECT count(*) FROM fact_sales_order")
    assert sales == 11_187 + 2_000 + 500
    assert query(by_spark, "SELECT count(*) FROM pg_tables WHERE tablename LIKE "
                           "'spark_stage_%'") == [[0]]  # the load dropped its staging tables
    scratch = tmp_path / "spark-processed" / "_spark"  # the tasks' part files: removed
    assert sorted(p.name for p in scratch.iterdir()) == ["results"]

    again = load_on_spark(spark, spark_processed.uri, spark_warehouse)
    assert again.batches == [] and warehouse_rows(by_spark) == warehouse_rows(by_lambda)


def test_row_ranges_cover_every_row_once_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Lake(str(tmp_path))
    for name, rows in (("a.parquet", 10), ("b.parquet", 7)):
        pq.write_table(pa.table({"n": list(range(rows))}), str(tmp_path / name),
                       row_group_size=4)
    for tasks in (1, 2, 3, 5, 17, 40):
        ranges = row_ranges(store, ["a.parquet", "b.parquet"], tasks)
        assert len(ranges) == min(tasks, 17)
        pieces = [piece for chunk in ranges for piece in chunk]
        assert [p.offset for p in pieces] == \
            [sum(q.stop - q.start for q in pieces[:i]) for i in range(len(pieces))]
        assert sum(p.stop - p.start for p in pieces) == 17
        sizes = [sum(p.stop - p.start for p in chunk) for chunk in ranges]
        assert max(sizes) - min(sizes) <= 1
    assert row_ranges(store, [], 3) == []


def test_a_staging_task_attempt_retried_after_it_committed_stages_each_row_once(
        seeded_source, new_database, tmp_path):
    """Spark retries a task whose first attempt committed its COPY (and then died): the
    second attempt replaces the first's rows, so the staged rows are the file's, once."""
    from totes.load.spark_load import _stage_part, create_staging_table

    lake, processed = Lake(str(tmp_path / "lake")), Lake(str(tmp_path / "processed"))
    ingest_all(seeded_source, lake, plan(load_config(CONFIG), seeded_source,
                                         tables=["payment"]))
    transform(lake, processed)
    key = latest_manifest(processed)[1].output("fact_payment").key
    warehouse = new_database("wh")
    ref = DatabaseRef(url=url_of(warehouse), role="warehouse")
    relation = create_staging_table(ref, TABLES["fact_payment"])
    ranges = row_ranges(processed, [key], 3)
    for chunk in (ranges[1], ranges[0], ranges[1], ranges[2], ranges[1]):  # 1: three attempts
        status, answer = _stage_part(chunk, TABLES["fact_payment"], relation, processed.uri,
                                     ref)
        assert status == "ok", answer
    staged = query(warehouse, f"SELECT count(*), count(DISTINCT _totes_ordinal), "
                              f"min(_totes_ordinal), max(_totes_ordinal) FROM "
                              f"{relation[0]}.{relation[1]}")  # nosec B608 (our own names)
    rows = processed.metadata(key).num_rows
    assert staged == [[rows, rows, 0, rows - 1]]
