"""The Lambda handlers as the state machine calls them: settings from environment variables,
JSON payloads in and out, one stage's output feeding the next."""
import json

import pytest

from support import CONFIG, query, snapshot
from totes.contracts.errors import ConfigError
from totes.ingest.handler import ingest_handler, plan_handler
from totes.load.handler import handler as load_handler
from totes.transform.handler import handler as transform_handler


def url(database) -> str:
    socket_dir = database.params["unix_sock"].rsplit("/", 1)[0]
    return f"postgresql://{database.params['user']}:@/{database.params['database']}" \
           f"?host={socket_dir}"


@pytest.fixture
def lambda_environment(monkeypatch, tmp_path, seeded_source, warehouse):
    for name, value in {"TOTES_SOURCE_URL": url(seeded_source),
                        "TOTES_WAREHOUSE_URL": url(warehouse),
                        "TOTES_LAKE": str(tmp_path / "lake"),
                        "TOTES_PROCESSED": str(tmp_path / "processed"),
                        "TOTES_CONFIG": CONFIG}.items():
        monkeypatch.setenv(name, value)
    return warehouse


def through_json(document):
    """What Step Functions passes on: the JSON text of a result, parsed again."""
    return json.loads(json.dumps(document))


def test_the_handlers_chained_as_the_state_machine_does(lambda_environment):
    tables = through_json(plan_handler({}, None))["tables"]
    ingested = [through_json(ingest_handler(item, None)) for item in tables]
    new_tables = [r["table"] for r in ingested if r["rows"] > 0]
    transformed = through_json(transform_handler({"new_tables": new_tables}, None))
    loaded = through_json(load_handler({"manifest": transformed["manifest"]}, None))

    assert len(new_tables) == 11
    assert loaded["batches"] == [transformed["manifest"]]
    (payments,), = query(lambda_environment, "SELECT count(*) FROM fact_payment")
    assert payments == snapshot("payment").num_rows

    again = [through_json(ingest_handler(item, None)) for item in tables]
    assert [r["key"] for r in again] == [None] * 11


def test_a_handler_without_its_settings_names_the_variable(monkeypatch):
    monkeypatch.delenv("TOTES_LAKE", raising=False)
    with pytest.raises(ConfigError, match="TOTES_LAKE is not set"):
        transform_handler({}, None)


def run_map(tables, ledger_env=True):
    """The Map as the state machine runs it: per item, the check, the ingest, the status
    step on success or through the Catch on failure; returns the items' outputs."""
    from totes.ingest.handler import status_handler

    items = []
    for item in tables:
        if item.get("check_error"):
            items.append(through_json(status_handler({"action": "failed", "item": item}, None)))
            continue
        try:
            result = through_json(ingest_handler(
                {"capture": item["capture"]} if item.get("job_type") == "capture" else item,
                None))
        except Exception as exc:  # what the item's Catch receives
            error = {"Error": type(exc).__name__, "Cause": json.dumps(
                {"errorType": type(exc).__name__, "errorMessage": str(exc),
                 "stackTrace": ["File ..."]})}
            items.append(through_json(status_handler(
                {"action": "failed", "item": item, "error": error}, None)))
            continue
        action = "captured" if item.get("job_type") == "capture" else "ingested"
        items.append(through_json(status_handler({"action": action, "result": result},
                                                 None)))
    return items


def test_the_change_log_is_read_by_one_map_item_for_every_cdc_table(
        lambda_environment, monkeypatch, tmp_path, resources, with_cdc):
    """Plan gives the cdc tables one item (job_type capture); the Map's Capture step reads
    the log for all of them and records each table; a change and a delete reach the
    warehouse through the handlers, as in AWS."""
    from totes.load.handler import pending_handler
    from totes.utils.ledger import SqliteLedger

    cdc = with_cdc(resources, tables=("payment",))
    monkeypatch.setenv("TOTES_CONFIG", cdc.config_path)
    monkeypatch.setenv("TOTES_SOURCE_URL", url(resources.source))
    monkeypatch.setenv("TOTES_LEDGER", f"sqlite://{tmp_path}/ledger.sqlite3")
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))

    def execution(name: str) -> list:
        planned = through_json(plan_handler({"run_id": name}, None))
        assert [i["table"] for i in planned["items"] if i.get("job_type") == "capture"] == \
            [f"capture:{planned['capture']['slot']}"]
        assert "payment" not in [t["table"] for t in planned["tables"]]
        items = run_map(planned["items"])
        through_json(pending_handler({"items": items}, None))
        transform_handler({"run_id": name}, None)
        load_handler({"run_id": name}, None)
        return items

    first = execution("execution-1")
    assert [i["status"] for i in first] == ["succeeded"] * 11
    query(resources.source, "UPDATE payment SET paid = NOT paid WHERE payment_id = 9")
    query(resources.source, "DELETE FROM payment WHERE payment_id = 10")
    second = execution("execution-2")
    [captured] = [i for i in second if i["table"].startswith("capture:")]
    assert captured["rows"] == 2 and captured["status"] == "succeeded"
    record = ledger.last("ingest", "payment", "succeeded")
    assert record is not None and record.run_id == "execution-2" and record.rows == 2
    assert query(resources.warehouse, "SELECT count(*) FROM fact_payment_current WHERE "
                 "payment_id IN (9, 10)") == [[1]]


def test_one_failing_table_is_recorded_and_the_others_land(lambda_environment, monkeypatch,
                                                           tmp_path, seeded_source):
    from totes.load.handler import pending_handler
    from totes.notify.handler import handler as alert_handler
    from totes.utils.ledger import SqliteLedger

    monkeypatch.setenv("TOTES_LEDGER", f"sqlite://{tmp_path}/ledger.sqlite3")
    query(seeded_source, "ALTER TABLE design RENAME COLUMN design_name TO name")
    query(seeded_source, f"REVOKE SELECT ON payment_type FROM {seeded_source.params['user']}")
    planned = through_json(plan_handler({"run_id": "execution-1"}, None))
    checked = {t["table"]: t["check_error"] for t in planned["tables"]}
    assert checked["design"]["Error"] == "SourceSchemaError"
    assert sum(1 for error in checked.values() if error) == 1  # a superuser reads everything

    items = run_map(planned["tables"])
    pending = through_json(pending_handler({"items": items}, None))

    statuses = {i["table"]: i["status"] for i in items}
    assert statuses.pop("design") == "failed" and set(statuses.values()) == {"succeeded"}
    assert [t["table"] for t in pending["failed_tables"]] == ["design"]
    assert pending["transform"] and pending["lake_files"] == 10
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    [design] = ledger.history("ingest", "design")
    assert (design.status, design.error_type, design.run_id) == ("failed", "SourceSchemaError",
                                                                 "execution-1")
    assert "design_name" in design.error_message
    assert {r.status for r in ledger.history("ingest", limit=100) if r.table != "design"} == \
        {"succeeded"}
    alert = alert_handler({"environment": "test", "region": "eu-west-2", "state": "Ingest",
                           "execution": "arn:aws:states:eu-west-2:1:execution:p:execution-1",
                           "input": {"pending": pending}}, None)
    assert alert["subject"] == "totes test: Ingest of design failed (SourceSchemaError)"
    assert "design: SourceSchemaError: table 'design' has no column design_name" in \
        alert["message"]


def test_a_lambda_killed_by_its_time_limit_is_recorded_as_failed(lambda_environment,
                                                                 monkeypatch, tmp_path):
    from totes.ingest.handler import status_handler
    from totes.utils.ledger import LedgerRecord, SqliteLedger

    monkeypatch.setenv("TOTES_LEDGER", f"sqlite://{tmp_path}/ledger.sqlite3")
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    ledger.put(LedgerRecord(stage="ingest", table="payment", run_id="execution-2",
                            status="running", started_at="2026-12-01T10:00:00.000000+00:00",
                            attempt="execution-2/dead"))
    item = {"table": "payment", "run_id": "execution-2", "mode": "incremental"}
    status = status_handler({"action": "failed", "item": item, "error": {
        "Error": "States.Timeout", "Cause": "Task timed out after 600.00 seconds"}}, None)
    assert (status["status"], status["error_type"]) == ("failed", "States.Timeout")
    [record] = ledger.history("ingest", "payment")
    assert (record.status, record.error_message) == ("failed", "Task timed out after 600.00 "
                                                               "seconds")


def test_pending_work_runs_transform_and_load_without_new_rows(lambda_environment):
    from totes.load.handler import pending_handler

    tables = through_json(plan_handler({}, None))["tables"]
    for item in tables:
        ingest_handler(item, None)
    assert pending_handler({"items": []}, None)["transform"] is True
    transform_handler({}, None)  # the execution that failed in load, say
    pending = pending_handler({"items": []}, None)
    assert (pending["transform"], pending["load"], pending["batches"]) == (False, True, 1)
    load_handler({}, None)
    pending = pending_handler({"items": []}, None)
    assert (pending["transform"], pending["load"]) == (False, False)


def test_plan_takes_the_tables_of_this_run_and_names_the_rest(lambda_environment):
    planned = plan_handler({"request": {"tables": ["sales_order", {
        "table": "payment", "mode": "backfill", "from": "2024-11-01", "to": "2024-11-03"}]}},
        None)
    assert [(t["table"], t["mode"]) for t in planned["tables"]] == [
        ("sales_order", "incremental"), ("payment", "backfill")]
    assert len(planned["left_out"]) == 9 and "staff" in planned["left_out"]
    with pytest.raises(ConfigError, match="table refund is not in the configuration"):
        plan_handler({"request": {"tables": ["refund"]}}, None)


def test_a_partitioned_table_is_read_by_one_worker_per_part(lambda_environment, monkeypatch,
                                                            tmp_path, seeded_source):
    import yaml

    from totes.utils.lake import Lake
    from totes.utils.footers import batch_files

    document = yaml.safe_load(open(CONFIG))
    document["tables"]["sales_order"] = {"partition_column": "sales_order_id",
                                         "num_partitions": 3}
    path = tmp_path / "parted.yaml"
    path.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("TOTES_CONFIG", str(path))
    monkeypatch.setenv("TOTES_LEDGER", f"sqlite://{tmp_path}/ledger.sqlite3")
    tables = through_json(plan_handler({"run_id": "execution-9"}, None))["tables"]
    [sales] = [t for t in tables if t["distributed"]]
    assert sales["table"] == "sales_order" and len(sales["distributed"]["parts"]) == 3

    parts = [through_json(ingest_handler({"plan": sales, "part": part}, None))
             for part in sales["distributed"]["parts"]]
    retried = through_json(ingest_handler({"plan": sales, "part": sales["distributed"]
                                           ["parts"][1]}, None))  # a retried part
    assert retried == parts[1]
    lake = Lake(str(tmp_path / "lake"))
    assert lake.newest_key("sales_order") is None  # parts only: nothing visible yet
    committed = through_json(ingest_handler({"commit": {**sales, "part_results": parts}},
                                            None))
    assert committed["rows"] == snapshot("sales_order").num_rows
    assert len(batch_files(lake, committed["key"])) == 3
    again = through_json(ingest_handler({"commit": {**sales, "part_results": parts}}, None))
    assert again["skipped"] == ("another run committed a batch of the table since its parts "
                                "were read")  # a second execution's commit: no double batch

    for item in tables:
        if not item["distributed"]:
            ingest_handler(item, None)
    transform_handler({}, None)
    load_handler({}, None)
    versions = query(lambda_environment, "SELECT count(*), count(DISTINCT (sales_order_id, "
                     "last_updated_date, last_updated_time)) FROM fact_sales_order")
    assert versions == [[snapshot("sales_order").num_rows] * 2]


def reconcile_alert(reconciled):
    """The alert the state machine sends when Reconcile's result is not equal (Differences →
    Alert, with the execution's state as input)."""
    from totes.notify.handler import handler as alert_handler

    return alert_handler({"environment": "test", "region": "eu-west-2", "state": "Reconcile",
                          "execution": "arn:aws:states:eu-west-2:1:execution:p:execution-7",
                          "input": {"load": {"batches": ["b"]}, "reconcile": reconciled,
                                    "failed_state": "Reconcile"}}, None)


def test_reconcile_after_a_load_agrees_and_a_tampered_value_is_alerted(lambda_environment):
    from totes.reconcile.handler import STATE_LIMIT
    from totes.reconcile.handler import handler as reconcile_handler

    for item in through_json(plan_handler({}, None))["tables"]:
        ingest_handler(item, None)
    transform_handler({}, None)
    load_handler({}, None)
    clean = through_json(reconcile_handler({}, None))
    assert clean["equal"] is True and clean["differences"] == 0, clean
    assert {t["table"] for t in clean["tables"]} >= {"fact_payment", "dim_staff"}

    (before,), = query(lambda_environment, "SELECT payment_amount FROM fact_payment "
                                           "WHERE payment_id = 2")
    query(lambda_environment, "UPDATE fact_payment SET payment_amount = 1.00 "
                              "WHERE payment_id = 2")
    dirty = through_json(reconcile_handler({}, None))
    assert dirty["equal"] is False
    [payment] = [t for t in dirty["tables"] if t["differences"]]
    assert payment["table"] == "fact_payment" and payment["listed"] == [
        {"table": "fact_payment", "key": {"payment_id": 2}, "column": "payment_amount",
         "source": str(before), "warehouse": "1.00", "problem": "value differs"}]

    alert = reconcile_alert(dirty)
    assert alert["subject"] == "totes test: Reconcile found differences in fact_payment"
    lines = alert["message"].splitlines()
    assert lines[0].startswith("The totes pipeline (test) loaded its batch, but the warehouse "
                               "disagrees with the source: 2 differences (fact_payment 1; "
                               "1 sum differs)")
    assert (f"  - fact_payment payment_id=2 payment_amount: value differs (source {before}, "
            "warehouse 1.00)") in lines
    assert any(line.startswith("  - fact_payment.payment_amount in ") for line in lines)
    assert "totes reconcile" in alert["message"]
    assert "docs/how-to/reconcile-differences.md" in alert["message"]
    assert lines[-1].startswith("Execution: https://eu-west-2.console.aws.amazon.com/")

    # More differences than the state lists: the alert counts them all.
    query(lambda_environment, "UPDATE fact_payment SET payment_amount = 1.00 "
                              "WHERE payment_id BETWEEN 3 AND 9")
    many = through_json(reconcile_handler({}, None))
    [payment] = [t for t in many["tables"] if t["differences"]]
    assert (payment["differences"], len(payment["listed"])) == (8, STATE_LIMIT)
    assert "  … and 3 more (totes reconcile lists every one)." in \
        reconcile_alert(many)["message"].splitlines()


def test_reconcile_steps_through_the_facts_as_the_state_machine_loops_it(lambda_environment,
                                                                         monkeypatch):
    """With TOTES_RECONCILE_MAX_ROWS below a fact's size, each invocation compares one
    bounded step and returns where the next begins; fed back as the state machine does
    (``{"resume": <the last step's resume>}``), the steps cover every fact and end with
    ``resume: null``; a bad cursor is a ConfigError naming it."""
    from totes.contracts.errors import ConfigError
    from totes.reconcile.handler import handler as reconcile_handler

    for item in through_json(plan_handler({}, None))["tables"]:
        ingest_handler(item, None)
    transform_handler({}, None)
    load_handler({}, None)
    monkeypatch.setenv("TOTES_RECONCILE_MAX_ROWS", "5000")

    def steps_as_the_state_machine_runs_them() -> list[dict]:
        """FirstReconcileStep's empty result, then Reconcile with the last result's resume
        and the last result as ``earlier``, until resume is null."""
        state = {"equal": True, "differences": 0, "tables": [], "sums": [], "seconds": 0,
                 "resume": None}
        steps = []
        while not steps or state["resume"] is not None:
            state = through_json(reconcile_handler({"resume": state["resume"],
                                                    "earlier": state}, None))
            steps.append(state)
            assert len(steps) < 30
        return steps

    steps = steps_as_the_state_machine_runs_them()
    assert all(step["equal"] for step in steps) and len(steps) >= 3
    assert steps[0]["resume"] == {"fact": "fact_sales_order", "raw_table": None,
                                  "start": steps[1]["tables"][0]["key_range"][0]}
    compared = {}
    for step in steps:
        for table in step["tables"]:
            compared[table["table"]] = compared.get(table["table"], 0) + table["source_rows"]
    for fact, source_table in (("fact_sales_order", "sales_order"),
                               ("fact_purchase_order", "purchase_order"),
                               ("fact_payment", "payment")):
        assert compared[fact] == snapshot(source_table).num_rows

    # A difference in the first range does not hide one in the last: the last step's result
    # carries both, and the alert names both.
    query(lambda_environment, "UPDATE fact_sales_order SET units_sold = units_sold + 1 "
                              "WHERE sales_order_id = (SELECT min(sales_order_id) "
                              "FROM fact_sales_order)")
    query(lambda_environment, "UPDATE fact_payment SET payment_amount = 1.00 WHERE "
                              "payment_id = (SELECT max(payment_id) FROM fact_payment)")
    steps = steps_as_the_state_machine_runs_them()
    assert steps[0]["equal"] is False and steps[-1]["equal"] is False
    assert steps[-1]["differences"] == 2 + 1  # two values, and the sum of payment_amount
    named = sorted((d["table"], d["column"]) for t in steps[-1]["tables"] for d in t["listed"])
    assert named == [("fact_payment", "payment_amount"), ("fact_sales_order", "units_sold")]
    subject = reconcile_alert(steps[-1])["subject"]
    assert subject == "totes test: Reconcile found differences in fact_sales_order, " \
        "fact_payment", subject

    with pytest.raises(ConfigError, match="cannot resume at 'fact_sales'"):
        reconcile_handler({"resume": {"fact": "fact_sales", "start": 1}}, None)


def test_a_reconcile_that_cannot_run_alerts_with_its_error():
    from totes.notify.handler import handler as alert_handler

    error = {"Error": "DatabaseUnavailable", "Cause": json.dumps({
        "errorType": "DatabaseUnavailable", "stackTrace": ["File ..."],
        "errorMessage": "the source database totesys at db:5432 did not answer"})}
    alert = alert_handler({"environment": "test", "region": "eu-west-2", "state": "Reconcile",
                           "execution": "arn:aws:states:eu-west-2:1:execution:p:execution-8",
                           "input": {"error": error, "failed_state": "Reconcile"}}, None)
    assert alert["subject"] == "totes test: Reconcile failed (DatabaseUnavailable)"
    assert "Error: DatabaseUnavailable: the source database totesys at db:5432 did not " \
           "answer" in alert["message"]


def glue_config(monkeypatch, tmp_path) -> None:
    """payment on the Glue job (job_type glue, 2 parts), the other tables on Lambda."""
    import yaml

    document = yaml.safe_load(open(CONFIG))
    document["tables"]["payment"] = {"job_type": "glue", "worker_type": "G.1X",
                                     "worker_no": 4, "partition_column": "payment_id",
                                     "num_partitions": 2}
    path = tmp_path / "glue.yaml"
    path.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("TOTES_CONFIG", str(path))
    monkeypatch.setenv("TOTES_LEDGER", f"sqlite://{tmp_path}/ledger.sqlite3")


def test_a_glue_job_run_ends_its_item_from_the_jobs_own_ledger_record(lambda_environment,
                                                                      monkeypatch, tmp_path):
    """After a glue item's job run succeeded (RecordJobRun), the status step reads the job's
    record back: the item's summary is the Lambda path's, and nothing is recorded twice."""
    from totes.ingest.extract import ingest_table
    from totes.ingest.handler import status_handler
    from totes.contracts.config import TablePlan
    from totes.contracts.errors import TransientError
    from totes.utils.ledger import LedgerRecord, SqliteLedger
    from totes.utils import resources

    glue_config(monkeypatch, tmp_path)
    tables = through_json(plan_handler({"run_id": "execution-g"}, None))["tables"]
    [payment] = [t for t in tables if t["job_type"] == "glue"]
    assert payment["table"] == "payment" and payment["distributed"] is None
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    with pytest.raises(TransientError, match="no finished ingest of run execution-g"):
        status_handler({"action": "job_ran", "item": payment}, None)  # no record (yet)

    # What the job records (extract_on_spark: the same lease, record and summary as here).
    result = ingest_table(TablePlan.model_validate(payment), resources.database("source"),
                          resources.storage("lake"), ledger)
    expected = through_json(status_handler({"action": "ingested",
                                            "result": result.model_dump(mode="json")}, None))
    item = {**payment, "job_run": {"id": "jr_1", "state": "SUCCEEDED"}}
    status = through_json(status_handler({"action": "job_ran", "item": item}, None))
    assert status == expected == {"table": "payment", "status": "succeeded",
                                  "rows": snapshot("payment").num_rows, "key": result.key,
                                  "reason": None, "error_type": None, "error_message": None,
                                  "warning": None}
    [record] = ledger.history("ingest", "payment")
    assert record.details.get("recorded_by") is None  # the job's record, not the step's

    ledger.put(LedgerRecord(stage="ingest", table="payment", run_id="execution-h",
                            status="skipped", started_at="2099-01-01T00:00:00.000000+00:00",
                            rows=0, details={"lease_holder": "execution-g/1",
                                             "lease_expires_at": "2099-01-01T00:10:00"}))
    skipped = status_handler({"action": "job_ran",
                              "item": {**payment, "run_id": "execution-h"}}, None)
    assert (skipped["status"], skipped["reason"]) == (
        "skipped", "leased by execution-g/1 until 2099-01-01T00:10:00")


def test_a_failed_glue_job_run_is_recorded_failed_and_alerted_like_a_lambda(
        lambda_environment, monkeypatch, tmp_path):
    """A failed job run reaches the item's Catch as States.TaskFailed with the job run as the
    cause: RecordFailure records the table failed with the script's own error (the run died
    before the job could record it), and the one alert names it as a failed Lambda's."""
    from totes.ingest.handler import status_handler
    from totes.load.handler import pending_handler
    from totes.notify.handler import handler as alert_handler
    from totes.utils.ledger import SqliteLedger

    glue_config(monkeypatch, tmp_path)
    tables = through_json(plan_handler({"run_id": "execution-f"}, None))["tables"]
    [payment] = [t for t in tables if t["job_type"] == "glue"]
    cause = {"Id": "jr_2", "JobName": "totes-test-extract", "JobRunState": "FAILED",
             "Attempt": 0, "ExecutionTime": 31, "ErrorMessage":
             "Error Category: UNCLASSIFIED_ERROR; totes.contracts.errors.DatabaseRejected: the "
             "source database refused the connection (password authentication failed)"}
    error = {"Error": "States.TaskFailed", "Cause": json.dumps(cause)}
    caught = {"action": "failed", "item": {**payment, "error": error}, "error": error}
    items = [through_json(status_handler(caught, None))]
    assert items == [{"table": "payment", "status": "failed", "rows": 0, "key": None,
                      "reason": None, "error_type": "DatabaseRejected", "error_message":
                      "the source database refused the connection (password authentication "
                      "failed)", "warning": None}]
    [record] = SqliteLedger(str(tmp_path / "ledger.sqlite3")).history("ingest", "payment")
    assert (record.status, record.run_id, record.error_type) == ("failed", "execution-f",
                                                                 "DatabaseRejected")
    pending = through_json(pending_handler({"items": items}, None))
    alert = alert_handler({"environment": "test", "region": "eu-west-2", "state": "Ingest",
                           "execution": "arn:aws:states:eu-west-2:1:execution:p:execution-f",
                           "input": {"pending": pending}}, None)
    assert alert["subject"] == "totes test: Ingest of payment failed (DatabaseRejected)"
    assert "payment: DatabaseRejected: the source database refused the connection" in \
        alert["message"]
    assert "Error Category" not in alert["message"] and "jr_2" not in alert["message"]

    # A run that ended without the script's exception (a timeout): named after its state.
    timeout = {"Error": "States.TaskFailed", "Cause": json.dumps(
        {"Id": "jr_3", "JobRunState": "TIMEOUT", "ErrorMessage": ""})}
    timed_out = status_handler({"action": "failed", "item": {**payment, "run_id": "x"},
                                "error": timeout}, None)
    assert (timed_out["error_type"], timed_out["error_message"]) == (
        "GlueJobTimeout", "the Glue job run jr_3 ended TIMEOUT")


def test_pending_sends_transform_and_load_to_spark_while_a_glue_table_has_lake_files(
        lambda_environment, monkeypatch, tmp_path):
    """payment's job_type is glue: while its lake files wait for transform, Pending names
    the Spark job's work; the transform and load functions hand the state machine the
    results that job wrote, as their own."""
    from totes.load.handler import pending_handler
    from totes.utils.job_results import job_result_key, write_job_result
    from totes.utils.lake import Lake

    glue_config(monkeypatch, tmp_path)
    tables = through_json(plan_handler({}, None))["tables"]
    for item in tables:
        if item["job_type"] == "lambda":
            ingest_handler(item, None)
    pending = through_json(pending_handler({"items": []}, None))
    assert pending["transform"] is True and pending["spark"] is None  # payment: no files yet

    from totes.ingest.extract import ingest_table
    from totes.contracts.config import TablePlan
    from totes.utils.databases import database_from_url
    import os

    payment = TablePlan.model_validate(next(t for t in tables if t["table"] == "payment"))
    ingest_table(payment.model_copy(update={"num_partitions": 1, "partition_column": None}),
                 database_from_url("source", os.environ["TOTES_SOURCE_URL"]),
                 Lake(os.environ["TOTES_LAKE"]))
    pending = through_json(pending_handler({"items": []}, None))
    assert pending["spark"] == {"tables": ["payment"], "worker_type": "G.1X", "worker_no": 4}

    transformed = through_json(transform_handler({}, None))
    loaded = through_json(load_handler({}, None))
    assert through_json(pending_handler({"items": []}, None))["spark"] is None

    key = job_result_key("execution-9")
    write_job_result(Lake(os.environ["TOTES_PROCESSED"]), key,
                     {"transform": transformed, "load": loaded})
    assert through_json(transform_handler({"spark_result": key}, None)) == transformed
    assert through_json(load_handler({"spark_result": key}, None)) == loaded
    (payments,), = query(lambda_environment, "SELECT count(*) FROM fact_payment")
    assert payments == snapshot("payment").num_rows  # read back: nothing loaded twice
