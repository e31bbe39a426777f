"""Plan's payloads for the two engines: a partitioned lambda table carries what its parts
share (``distributed``: the state machine fans it out to one Lambda per part); a glue table
does not (its job plans its own parts under its lease), and keeps its workers."""
import yaml

from support import CONFIG
from totes.contracts.config import parse_config
from totes.ingest.plan import plan
from totes.utils.lake import Lake


def config_with(**tables):
    document = yaml.safe_load(open(CONFIG))
    document["tables"].update(tables)
    return parse_config(document)


def test_a_glue_table_is_left_to_its_job_to_plan_its_parts(seeded_source, tmp_path):
    config = config_with(
        sales_order={"partition_column": "sales_order_id", "num_partitions": 3},
        payment={"job_type": "glue", "worker_type": "G.2X", "worker_no": 4,
                 "partition_column": "payment_id", "num_partitions": 8})
    planned = {p.table: p for p in plan(config, seeded_source, run_id="execution-1",
                                        per_table_errors=True,
                                        lake=Lake(str(tmp_path / "lake"))).tables}

    payment = planned["payment"]
    assert payment.distributed is None and payment.check_error is None
    assert (payment.job_type, payment.worker_type, payment.worker_no) == ("glue", "G.2X", 4)
    assert (payment.num_partitions, payment.run_id) == (8, "execution-1")
    sales = planned["sales_order"]
    assert sales.job_type == "lambda" and len(sales.distributed.parts) == 3
    assert {p.job_type for name, p in planned.items() if name != "payment"} == {"lambda"}
    # The Map item is the payload's JSON: the Glue job reads it back from --payload.
    item = payment.model_dump(mode="json")
    assert (item["job_type"], item["worker_type"], item["worker_no"], item["distributed"]) == \
        ("glue", "G.2X", 4, None)


def test_a_glue_table_is_checked_against_the_source_like_any_other(seeded_source, tmp_path):
    from support import query

    query(seeded_source, "ALTER TABLE payment RENAME COLUMN payment_id TO id")
    config = config_with(payment={"job_type": "glue", "partition_column": "payment_id",
                                  "num_partitions": 2})
    [payment] = [p for p in plan(config, seeded_source, per_table_errors=True,
                                 lake=Lake(str(tmp_path / "lake"))).tables
                 if p.table == "payment"]
    assert payment.check_error["Error"] == "SourceSchemaError" and payment.distributed is None
