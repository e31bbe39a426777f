"""Configuration: defaults and overrides, and errors that name the key."""
import pytest

from support import CONFIG
from totes.contracts.config import parse_config, resolve_tables
from totes.contracts.errors import ConfigError, SourceSchemaError
from totes.ingest.plan import plan
from totes.utils.config_file import load_config


def test_a_table_setting_wins_over_the_defaults():
    config = parse_config({"defaults": {"watermark_column": "changed_at",
                                        "record_batch_bytes": 4096},
                           "tables": {"payment": {"watermark_column": "last_updated"},
                                      "staff": None}})
    payment, staff = resolve_tables(config)
    assert (payment.table, payment.primary_key, payment.watermark_column,
            payment.record_batch_bytes) == ("payment", "payment_id", "last_updated", 4096)
    assert (staff.primary_key, staff.watermark_column) == ("staff_id", "changed_at")


def test_the_shipped_configuration_lists_the_eleven_tables():
    tables = [p.table for p in resolve_tables(load_config(CONFIG))]
    assert sorted(tables) == sorted(["address", "counterparty", "currency", "department",
                                     "design", "staff", "payment_type", "sales_order",
                                     "purchase_order", "transaction", "payment"])


@pytest.mark.parametrize("document, message", [
    ({"tables": {"payment": {"watermark_colum": "x"}}},
     "tables.payment.watermark_colum: extra inputs are not permitted"),
    ({"tables": {"payment": {"record_batch_bytes": "big"}}},
     "tables.payment.record_batch_bytes: input should be a valid integer"),
    ({"defaults": {"in_flight_safety_lag_seconds": -1}, "tables": {"payment": {}}},
     "defaults.in_flight_safety_lag_seconds: input should be greater than or equal to 0"),
    ({"tables": {}}, "tables: "),
    ({"tablez": {"payment": {}}}, "tablez: extra inputs are not permitted"),
    ({"tables": {"Payment; DROP": {}}}, "tables.Payment; DROP: 'Payment; DROP' is not a valid"),
    ({"tables": {"payment": {"primary_key": "id\""}}}, "tables.payment.primary_key: "),
])
def test_an_invalid_configuration_names_the_key(document, message):
    with pytest.raises(ConfigError) as error:
        resolve_tables(parse_config(document, "pipeline.yaml"))
    assert "pipeline.yaml is invalid" in str(error.value)
    assert message in str(error.value)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tables: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_plan_names_a_table_missing_from_the_source(seeded_source):
    config = parse_config({"tables": {"payment": {}, "refund": {}}})
    with pytest.raises(SourceSchemaError, match="table 'refund' does not exist"):
        plan(config, seeded_source)


def test_plan_names_a_missing_watermark_column(seeded_source):
    config = parse_config({"tables": {"payment": {"watermark_column": "changed_at"}}})
    with pytest.raises(SourceSchemaError, match="'payment' has no watermark column 'changed_at'"):
        plan(config, seeded_source)


def test_plan_gives_one_payload_per_table(seeded_source):
    payload = plan(load_config(CONFIG), seeded_source)
    assert payload.tables[0].model_dump() == {
        "table": "address", "primary_key": "address_id", "extract_type": "incremental",
        "mode": "incremental", "watermark_column": "last_updated",
        "record_batch_bytes": 8388608, "max_batch_rows": 5_000_000,
        "in_flight_safety_lag_seconds": 300.0,
        "backfill_from": None, "backfill_to": None, "partition_column": None,
        "num_partitions": 1, "lower_bound": None, "upper_bound": None, "job_type": "lambda",
        "worker_type": "G.1X", "worker_no": 2, "run_id": None, "check_error": None,
        "distributed": None, "delete_detection": "none", "delete_detection_every": 1,
        "schema_contract": {"columns": "evolve", "data_type": "freeze"},
        "freshness_target_seconds": 3600.0, "raw": False}
    assert len(payload.tables) == 11


def test_job_types_are_lambda_or_glue_and_name_the_table():
    config = parse_config({"tables": {"sales_order": {"job_type": "glue", "worker_no": 4},
                                      "payment": {}}})
    glue, lambda_ = resolve_tables(config)
    assert (glue.job_type, glue.worker_type, glue.worker_no) == ("glue", "G.1X", 4)
    assert lambda_.job_type == "lambda"
    with pytest.raises(ConfigError, match="tables.payment.job_type: input should be 'lambda' "
                                          "or 'glue'"):
        parse_config({"tables": {"payment": {"job_type": "emr"}}})
    with pytest.raises(ConfigError, match="tables.payment.worker_type"):
        parse_config({"tables": {"payment": {"job_type": "glue", "worker_type": "G.16X"}}})


def test_the_configuration_is_read_from_s3(s3_server, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="artifacts",
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    s3.put_object(Bucket="artifacts", Key="config/totesys/pipeline.yaml",
                  Body=open(CONFIG, "rb").read())
    config = load_config("s3://artifacts/config/totesys/pipeline.yaml")
    assert len(config.tables) == 11
    with pytest.raises(ConfigError, match="cannot read configuration s3://artifacts/missing."
                                          "yaml: NoSuchKey"):
        load_config("s3://artifacts/missing.yaml")
    s3.put_object(Bucket="artifacts", Key="bad.yaml", Body=b"tables:\n  payment: {extract: 1}")
    with pytest.raises(ConfigError, match="s3://artifacts/bad.yaml is invalid: "
                                          "tables.payment.extract"):
        load_config("s3://artifacts/bad.yaml")


def test_the_raw_layer_is_on_for_a_table_no_rule_reads_and_raw_true_turns_it_on():
    from totes.contracts.config import raw_tables

    config = parse_config({"tables": {"widget": {}, "staff": {"raw": True}, "design": {},
                                      "gadget": {"raw": False}}})
    assert [p.table for p in raw_tables(config)] == ["widget", "staff"]
    everything = parse_config({"defaults": {"raw": True}, "tables": {"design": {},
                                                                     "gadget": {"raw": False}}})
    assert [p.table for p in raw_tables(everything)] == ["design"]
    clash = parse_config({"tables": {"widget": {}, "widget_current": {"raw": False}}})
    with pytest.raises(ConfigError, match="view widget_current would take the name of the "
                                          "configured table widget_current"):
        raw_tables(clash)
