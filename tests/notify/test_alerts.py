"""The one alert a failed execution sends, for each kind of failure: subject and body name the
environment, the state, the table(s), the error type and message (no traceback), the console
link and what to do next."""
import json

from totes.notify.alerts import render

EXECUTION = "arn:aws:states:eu-west-2:123456789012:execution:totes-prod-pipeline:sched-1"


def lambda_error(kind, message):
    return {"Error": kind, "Cause": json.dumps({
        "errorType": kind, "errorMessage": message, "requestId": "r",
        "stackTrace": ["  File \"/var/task/totes/load/warehouse.py\", line 12, in load\n"]})}


def alert(**event):
    return render({"environment": "prod", "region": "eu-west-2", "execution": EXECUTION,
                   **event})


def test_a_stage_that_fails_is_named_with_its_error_and_what_to_do():
    sent = alert(state="Load", error=lambda_error(
        "DatabaseRejected", "the warehouse database warehouse at db:5432 refused the "
                            "connection: password authentication failed (SQLSTATE 28P01)"))
    assert sent.subject == "totes prod: Load failed (DatabaseRejected)"
    lines = sent.message.splitlines()
    assert lines[0] == "The totes pipeline (prod) failed in Load."
    assert lines[1] == ("Error: DatabaseRejected: the warehouse database warehouse at db:5432 "
                        "refused the connection: password authentication failed (SQLSTATE "
                        "28P01)")
    assert "fix the secret; the next execution resumes" in sent.message
    assert "Traceback" not in sent.message and "stackTrace" not in sent.message
    assert "warehouse.py" not in sent.message
    assert lines[-1] == ("Execution: https://eu-west-2.console.aws.amazon.com/states/home?"
                         "region=eu-west-2#/v2/executions/details/" + EXECUTION)
    assert "totes status" in sent.message


def test_tables_that_failed_inside_the_map_are_each_named():
    sent = alert(state="Ingest", failed_tables=[
        {"table": "design", "error_type": "SourceSchemaError",
         "error_message": "table 'design' has no column design_name, which transform reads"},
        {"table": "payment", "error_type": "PermissionDenied",
         "error_message": "the source role may not read table 'payment'"}],
        skipped_tables=[{"table": "staff", "reason": "leased by run-x"}])
    assert sent.subject == "totes prod: Ingest of design, payment failed (SourceSchemaError)"
    assert "  - design: SourceSchemaError: table 'design' has no column design_name" in \
        sent.message
    assert "  - payment: PermissionDenied: the source role may not read" in sent.message
    assert "The other tables landed: this execution transformed and loaded them" in \
        sent.message
    assert "Skipped, because another execution was extracting them: staff." in sent.message


def test_a_timeout_a_transient_error_and_an_unknown_error_read_well():
    timed_out = alert(state="Transform", error={"Error": "States.Timeout", "Cause": ""})
    assert timed_out.subject == "totes prod: Transform failed (States.Timeout)"
    assert "ran longer than its time limit" in timed_out.message
    assert "the next execution resumes by itself" in timed_out.message
    transient = alert(state="Pending", error=lambda_error(
        "DatabaseUnavailable", "cannot reach the warehouse database"))
    assert "even after the retries" in transient.message
    odd = alert(state="Plan", error={"Error": "Lambda.Unknown", "Cause": "The cause could "
                                     "not be determined\nsecond line"})
    assert "Error: Lambda.Unknown: The cause could not be determined" in odd.message
    assert "second line" not in odd.message


def test_the_subject_fits_sns():
    many = [{"table": f"table_number_{i}", "error_type": "SourceSchemaError",
             "error_message": "x"} for i in range(10)]
    assert len(alert(state="Ingest", failed_tables=many).subject) <= 100
