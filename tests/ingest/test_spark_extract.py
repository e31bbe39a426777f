"""The Spark engine (the ``glue`` job type) on a local Spark: the same rows, footers and ledger
records as the Lambda path in every mode, one batch committed atomically, failures recorded
and raised by their own type."""
from __future__ import annotations

from collections import Counter

import pytest

from totes.contracts.config import TablePlan
from totes.contracts.errors import LakeError, SourceSchemaError, StorageUnavailable
from totes.ingest.extract import ingest_table
from totes.ingest.spark_extract import SourceRef, extract_on_spark
from totes.utils.footers import batch_files, read_footer
from totes.utils.lake import Lake
from totes.utils.ledger import SqliteLedger

pytest.importorskip("pyspark", reason="the Spark engine's tests need pyspark "
                                      "(requirements-dev.txt)")


def url_of(database) -> str:
    socket_dir = database.params["unix_sock"].rsplit("/", 1)[0]
    return f"postgresql://{database.params['user']}:@/{database.params['database']}" \
           f"?host={socket_dir}"


def versions(lake: Lake, table: str) -> Counter:
    found = Counter()
    for key in lake.keys_after(table, None):
        for file in batch_files(lake, key):
            found.update(tuple(r.values()) for r in lake.read_table(file).to_pylist())
    return found


@pytest.mark.parametrize("mode", ["incremental", "full", "backfill"])
def test_spark_extracts_exactly_the_rows_of_the_lambda_path(spark, seeded_source, tmp_path,
                                                            mode):
    extra = {"backfill_from": "2023-01-01", "backfill_to": "2024-01-01"} \
        if mode == "backfill" else {}
    plan = TablePlan(table="sales_order", primary_key="sales_order_id", mode=mode,
                     watermark_column="last_updated", partition_column="sales_order_id",
                     num_partitions=3, job_type="glue", **extra)
    python_lake, spark_lake = Lake(str(tmp_path / "python")), Lake(str(tmp_path / "spark"))
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    by_python = ingest_table(plan, seeded_source, python_lake)
    by_spark = extract_on_spark(spark, plan, SourceRef(url=url_of(seeded_source)),
                                spark_lake.root, ledger)
    assert by_spark.rows == by_python.rows > 0 and len(by_spark.parts) >= 2
    assert versions(spark_lake, "sales_order") == versions(python_lake, "sales_order")
    python_footer = read_footer(python_lake, by_python.key)
    spark_footer = read_footer(spark_lake, by_spark.key)
    assert (spark_footer.high, spark_footer.low, spark_footer.mode, spark_footer.range) == \
        (python_footer.high, python_footer.low, python_footer.mode, python_footer.range)
    # One batch: its commit lists the parts, and only the commit is a visible key.
    assert list(spark_lake.keys_after("sales_order", None)) == [by_spark.key]
    assert [p["key"] for p in spark_footer.parts] == [p["key"] for p in by_spark.parts]
    [record] = ledger.history(stage="ingest", table="sales_order")
    assert (record.status, record.rows, record.key) == ("succeeded", by_spark.rows,
                                                        by_spark.key)
    assert record.details["parts"] == by_spark.parts
    if mode == "incremental":  # the next run starts after it, on either engine
        again = extract_on_spark(spark, plan, SourceRef(url=url_of(seeded_source)),
                                 spark_lake.root, ledger)
        assert again.rows == 0 and again.key is None


def test_a_failed_spark_job_is_recorded_failed_and_raises_its_own_error(spark, seeded_source,
                                                                        tmp_path):
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    source = SourceRef(url=url_of(seeded_source))
    missing = TablePlan(table="sales_order", primary_key="sales_order_id",
                        partition_column="no_such_column", num_partitions=2)
    with pytest.raises(SourceSchemaError, match="no partition column 'no_such_column'"):
        extract_on_spark(spark, missing, source, str(tmp_path / "lake"), ledger)
    # A part that fails on an executor: its parts folder cannot be created.
    lake = tmp_path / "blocked"
    (lake / "sales_order").mkdir(parents=True)
    (lake / "sales_order" / "_parts").write_text("a file where the parts folder goes")
    split = missing.model_copy(update={"partition_column": "sales_order_id"})
    with pytest.raises((StorageUnavailable, LakeError)):
        extract_on_spark(spark, split, source, str(lake), ledger)
    assert not list(Lake(str(lake)).keys_after("sales_order", None))  # nothing visible
    failed = [r for r in ledger.history(stage="ingest", table="sales_order")
              if r.status == "failed"]
    assert len(failed) == 2 and failed[-1].error_type == "SourceSchemaError"
    assert failed[0].error_type in ("StorageUnavailable", "LakeError")


def test_the_glue_job_script_runs_a_payload_as_the_state_machine_passes_it(seeded_source,
                                                                           tmp_path):
    import json
    import subprocess  # nosec B404: the job script, fixed arguments
    import sys

    from totes.ingest.glue_job import parse_arguments
    from totes.contracts.errors import ConfigError

    payload = TablePlan(table="payment", primary_key="payment_id", job_type="glue",
                        partition_column="payment_id", num_partitions=2,
                        run_id="deploy-glue-1").model_dump(mode="json")
    lake = tmp_path / "lake"
    ledger = tmp_path / "ledger.sqlite3"
    job = subprocess.run(  # nosec B603
        [sys.executable, "-m", "totes.ingest.glue_job", "--payload", json.dumps(payload),
         "--TOTES_LAKE", str(lake), f"--TOTES_SOURCE_URL={url_of(seeded_source)}",
         "--TOTES_LEDGER", f"sqlite://{ledger}"], capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    result = json.loads(job.stdout.strip().splitlines()[-1])
    assert (result["table"], result["rows"], len(result["parts"])) == ("payment", 15836, 2)
    [record] = SqliteLedger(str(ledger)).history(stage="ingest", table="payment")
    assert (record.run_id, record.status, record.key) == ("deploy-glue-1", "succeeded",
                                                          result["key"])
    assert sum(Lake(str(lake)).read_table(f).num_rows
               for f in batch_files(Lake(str(lake)), result["key"])) == 15836
    with pytest.raises(ConfigError, match="--TOTES_LAKE has no value"):
        parse_arguments(["--payload", "{}", "--TOTES_LAKE"])
