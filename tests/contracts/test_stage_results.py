"""Stage results are typed: every field the state machine selects exists, and the JSON a
handler returns parses back into the same type."""
import json
import re

from support import REPO
from totes.contracts.stage_results import (CaptureResult, IngestResult, LoadResult, PlanResult,
                                           ReconcileResult, TransformResult)
from totes.contracts.watermark import Watermark
from totes.ingest.extract import PartResult
from totes.ingest.status import ItemStatus
from totes.load.pending import PendingResult
from totes.notify.alerts import Alert

STATE_RESULTS = {"Plan": PlanResult, "IngestTable": IngestResult, "RecordSuccess": ItemStatus,
                 "RecordFailure": ItemStatus, "RecordCheckFailure": ItemStatus,
                 "Pending": PendingResult, "Transform": TransformResult, "Load": LoadResult,
                 "Reconcile": ReconcileResult, "Alert": Alert, "ExtractPart": PartResult,
                 "CommitParts": IngestResult, "RecordJobRun": ItemStatus,
                 "CaptureChanges": CaptureResult, "RecordCaptured": ItemStatus,
                 "TransformedOnSpark": TransformResult, "LoadedOnSpark": LoadResult}
#: What IngestOnGlue selects from Glue's GetJobRun output (the JobRun structure).
JOB_RUN_FIELDS = {"Id", "JobRunState", "ExecutionTime", "ErrorMessage", "JobName", "Attempt"}


def states(node):
    for name, state in node.get("States", {}).items():
        yield name, state
        if "ItemProcessor" in state:
            yield from states(state["ItemProcessor"])


def definition() -> dict:
    text = (REPO / "main-terraform" / "state_machine.asl.json").read_text()
    # Template variables: ARNs inside strings, ${retry} and ${max_concurrency} bare.
    return json.loads(re.sub(r"\$\{[a-z_]+\}", "0", re.sub(r'"\$\{[a-z_]+\}"', '"x"', text)))


def test_every_field_the_state_machine_selects_is_in_the_stage_result():
    selected = {}
    for name, state in states(definition()):
        if state.get("Resource", "").startswith("arn:aws:states:::glue:"):
            assert {p.removeprefix("$.") for p in state["ResultSelector"].values()} <= \
                JOB_RUN_FIELDS, name
            continue
        for path in state.get("ResultSelector", {}).values():
            if path != "$.Payload":  # the whole result
                selected.setdefault(name, set()).add(
                    path.removeprefix("$.Payload.").split(".")[0])
            else:
                selected.setdefault(name, set())
    assert set(selected) == set(STATE_RESULTS)
    for name, fields in selected.items():
        assert fields <= set(STATE_RESULTS[name].model_fields), (name, fields)


def test_a_result_survives_json_as_step_functions_passes_it():
    mark = Watermark(timestamp="2024-11-15 14:40:10.123000", primary_key=3)
    result = IngestResult(table="payment", key=None, rows=0, row_groups=0, bytes=0,
                          low_watermark=mark, high_watermark=mark, cutoff="2026-01-01",
                          seconds=0.1, peak_arrow_bytes=0)
    document = json.loads(json.dumps(result.model_dump(mode="json")))
    assert document["high_watermark"] == {"timestamp": "2024-11-15 14:40:10.123000",
                                          "primary_key": 3}
    assert IngestResult.model_validate(document) == result


def test_the_reconcile_state_keeps_every_field_the_alert_reads_back():
    """The alert rebuilds the ReconcileResult from the state (its summary, its differences):
    the Reconcile state must select all of it."""
    text = (REPO / "main-terraform" / "state_machine.asl.json").read_text()
    definition = json.loads(re.sub(r"\$\{[a-z_]+\}", "0", re.sub(r'"\$\{[a-z_]+\}"', '"x"', text)))
    selector = definition["States"]["Reconcile"]["ResultSelector"]
    assert {path.removeprefix("$.Payload.") for path in selector.values()} == \
        set(ReconcileResult.model_fields)
    assert definition["States"]["Reconcile"]["ResultPath"] == "$.reconcile"


def test_a_glue_item_goes_to_the_glue_job_with_its_payload_and_workers():
    """The Map item's Choice on job_type: glue → the Glue job run (startJobRun.sync) with the
    item as --payload and its workers, then the status step that reads the job's ledger
    record back; a failed run goes through the Lambda path's Catch (RecordFailure). A lambda
    item keeps today's path: one Lambda, or one per part when plan split it."""
    item_states = dict(states(definition()["States"]["Ingest"]["ItemProcessor"]))
    assert item_states["CheckedByPlan"]["Default"] == "JobType"
    choice = item_states["JobType"]
    capture_rule, glue_rule, parts_rule = choice["Choices"]
    assert {"Variable": "$.job_type", "StringEquals": "capture"} in capture_rule["And"]
    assert capture_rule["Next"] == "CaptureChanges"
    assert item_states["CaptureChanges"]["Parameters"]["Payload"] == {
        "capture.$": "$.capture", "invocation": {"execution_id.$": "$$.Execution.Id",
                                                 "retry.$": "$$.State.RetryCount"}}
    assert item_states["CaptureChanges"]["Next"] == "RecordCaptured"
    assert {"Variable": "$.job_type", "StringEquals": "glue"} in glue_rule["And"]
    assert glue_rule["Next"] == "IngestOnGlue"
    assert parts_rule["Next"] == "ExtractParts" and choice["Default"] == "IngestTable"

    glue = item_states["IngestOnGlue"]
    assert glue["Resource"] == "arn:aws:states:::glue:startJobRun.sync"
    assert glue["Parameters"]["Arguments"] == {"--payload.$": "States.JsonToString($)"}
    assert glue["Parameters"]["WorkerType.$"] == "$.worker_type"
    assert glue["Parameters"]["NumberOfWorkers.$"] == "$.worker_no"
    assert glue["ResultPath"] == "$.job_run"  # the item stays the payload for what follows
    assert glue["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                              "Next": "RecordFailure"}]
    assert glue["Next"] == "RecordJobRun"
    recorded = item_states["RecordJobRun"]
    assert recorded["Parameters"]["Payload"] == {
        "action": "job_ran", "item.$": "$", "invocation": {
            "execution_id.$": "$$.Execution.Id", "retry.$": "$$.State.RetryCount"}}
    assert recorded["ResultSelector"] == item_states["RecordSuccess"]["ResultSelector"]
    assert recorded["Catch"][0]["Next"] == "RecordFailure" and recorded["End"] is True
    for name in ("IngestTable", "CommitParts"):  # the Lambda path is unchanged
        assert item_states[name]["Next"] == "RecordSuccess"
