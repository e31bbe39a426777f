"""Stage results are typed: every field the state machine selects exists, and the JSON a
handler returns parses back into the same type."""
import json
import re

from support import REPO
from totes.ingest.extract import PartResult
from totes.ingest.status import ItemStatus
from totes.load.pending import PendingResult
from totes.notify.alerts import Alert
from totes.utils.stage_results import (IngestResult, LoadResult, PlanResult, ReconcileResult,
                                       TransformResult)
from totes.utils.watermark import Watermark

STATE_RESULTS = {"Plan": PlanResult, "IngestTable": IngestResult, "RecordSuccess": ItemStatus,
                 "RecordFailure": ItemStatus, "RecordCheckFailure": ItemStatus,
                 "Pending": PendingResult, "Transform": TransformResult, "Load": LoadResult,
                 "Reconcile": ReconcileResult, "Alert": Alert, "ExtractPart": PartResult,
                 "CommitParts": IngestResult}


def states(node):
    for name, state in node.get("States", {}).items():
        yield name, state
        if "ItemProcessor" in state:
            yield from states(state["ItemProcessor"])


def test_every_field_the_state_machine_selects_is_in_the_stage_result():
    text = (REPO / "main-terraform" / "state_machine.asl.json").read_text()
    # Template variables: ARNs inside strings, ${retry} and ${max_concurrency} bare.
    definition = json.loads(re.sub(r"\$\{[a-z_]+\}", "0", re.sub(r'"\$\{[a-z_]+\}"', '"x"', text)))
    selected = {}
    for name, state in states(definition):
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
