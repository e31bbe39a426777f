"""Observability (docs/observability.md): the handlers' metric documents in CloudWatch's
embedded metric format and their JSON log lines, tied to one execution; the dashboard and the
alarms of main-terraform name only defined, emitted metrics; `totes status --json` and
`totes history --json` carry the same names, units and values as the documents."""
from __future__ import annotations

import json
import logging
import re

import hcl2
import jsonschema
import pytest
from typer.testing import CliRunner

from support import CONFIG, REPO, query, snapshot, url_of
from totes.cli import app
from totes.contracts.errors import ConfigError
from totes.contracts.metrics import BY_NAME, DEFAULT_NAMESPACE, METRICS, markdown_table
from totes.contracts.star_schema import TABLES
from totes.ingest.handler import ingest_handler, plan_handler, status_handler
from totes.load.handler import handler as load_handler
from totes.load.handler import pending_handler
from totes.reconcile.handler import handler as reconcile_handler
from totes.transform.handler import handler as transform_handler

EXECUTION = "arn:aws:states:eu-west-2:123456789012:execution:totes-test-pipeline:exec-1"
UNITS = ["Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes",
         "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits",
         "Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second",
         "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second",
         "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"]
#: The embedded metric format's specification, as JSON Schema (the `_aws` member; the rules on
#: the root members are checked by :func:`check_emf`).
EMF_SCHEMA = {
    "type": "object", "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object", "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer", "minimum": 0},
            "CloudWatchMetrics": {"type": "array", "items": {
                "type": "object", "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024,
                                  "pattern": r"^[a-zA-Z0-9._#:/-]+$"},
                    "Dimensions": {"type": "array", "items": {
                        "type": "array", "minItems": 1, "maxItems": 30,
                        "items": {"type": "string", "minLength": 1, "maxLength": 250}}},
                    "Metrics": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
                        "type": "object", "required": ["Name"],
                        "properties": {"Name": {"type": "string", "minLength": 1,
                                                "maxLength": 1024},
                                       "Unit": {"type": "string", "enum": UNITS},
                                       "StorageResolution": {"enum": [1, 60]}}}}}}}}}}}


def check_emf(document: dict) -> None:
    """The specification: the schema, and every dimension a root member holding a string,
    every metric a root member holding a number or up to 100 numbers."""
    jsonschema.validate(document, EMF_SCHEMA)
    assert 10 ** 12 < document["_aws"]["Timestamp"] < 10 ** 13  # milliseconds
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                assert isinstance(document[name], str), name
        for definition in directive["Metrics"]:
            value = document[definition["Name"]]
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100
            assert all(isinstance(v, (int, float)) for v in values), definition


def emitted(text: str) -> tuple[list[dict], list[dict]]:
    """The EMF documents and the JSON log lines of a handler's stdout."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [d for d in lines if "_aws" in d], [d for d in lines if "level" in d]


def values_of(documents: list[dict]) -> dict[tuple, float]:
    """``{(namespace, name, ((dimension, value), ...)): value}`` of the documents (a
    metric's list of values summed)."""
    found: dict[tuple, float] = {}
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            [dimensions] = directive["Dimensions"]
            key_dims = tuple((d, document[d]) for d in dimensions)
            for definition in directive["Metrics"]:
                value = document[definition["Name"]]
                total = sum(value) if isinstance(value, list) else value
                key = (directive["Namespace"], definition["Name"], key_dims)
                found[key] = found.get(key, 0) + total
                assert definition["Unit"] == BY_NAME[definition["Name"]].unit
                assert tuple(dimensions) == BY_NAME[definition["Name"]].dimensions
    return found


def invoked(handler, payload, retry=0, wrap=False):
    """A handler called as the state machine calls it: the payload with ``invocation``
    beside it (a Map item's payload wrapped in ``payload``), through JSON."""
    invocation = {"execution_id": EXECUTION, "retry": retry}
    event = {"payload": payload, "invocation": invocation} if wrap else \
        {**payload, "invocation": invocation}
    return json.loads(json.dumps(handler(json.loads(json.dumps(event)), None)))


@pytest.fixture
def environment(monkeypatch, tmp_path, seeded_source, warehouse):
    for name, value in {"TOTES_SOURCE_URL": url_of(seeded_source),
                        "TOTES_WAREHOUSE_URL": url_of(warehouse),
                        "TOTES_LAKE": str(tmp_path / "lake"),
                        "TOTES_PROCESSED": str(tmp_path / "processed"),
                        "TOTES_LEDGER": f"sqlite://{tmp_path}/ledger.sqlite3",
                        "TOTES_HOME": str(tmp_path / "home"),
                        "TOTES_CONFIG": CONFIG, "TOTES_METRICS_NAMESPACE": "totes-test"}.items():
        monkeypatch.setenv(name, value)
    return seeded_source, warehouse


def test_an_ingest_emits_valid_emf_documents_with_its_values_and_json_logs(environment,
                                                                           capsys):
    planned = invoked(plan_handler, {"run_id": "exec-1", "request": {}})
    capsys.readouterr()
    [item] = [i for i in planned["items"] if i["table"] == "sales_order"]
    result = invoked(ingest_handler, item, wrap=True)
    documents, logs = emitted(capsys.readouterr().out)

    assert result["table"] == "sales_order" and result["rows"] == snapshot("sales_order").num_rows
    assert documents and logs
    for document in documents:
        check_emf(document)
        assert document["execution_id"] == EXECUTION and document["run_id"] == "exec-1"
    values = values_of(documents)
    table = (("table", "sales_order"),)
    assert values[("totes-test", "RowsExtracted", table)] == result["rows"]
    assert values[("totes-test", "LakeBytesWritten", table)] == result["bytes"] > 0
    assert values[("totes-test", "StageErrors", (("stage", "ingest"),))] == 0
    assert ("totes-test", "StageRetries", (("stage", "ingest"),)) not in values
    assert all("run" not in name for d in documents
               for s in d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] for name in s)
    for line in logs:
        assert (line["execution_id"], line["run_id"], line["stage"], line["table"]) == \
            (EXECUTION, "exec-1", "ingest", "sales_order"), line
    assert [line["message"] for line in logs][0] == "ingest started"
    assert logs[-1]["message"] == "ingest finished" and logs[-1]["level"] == "INFO"


def test_a_failing_handler_raises_unchanged_and_counts_its_error(
        environment, monkeypatch, capsys):
    monkeypatch.delenv("TOTES_PROCESSED")
    with pytest.raises(ConfigError, match="TOTES_PROCESSED is not set"):
        invoked(transform_handler, {"run_id": "exec-2"}, retry=2)
    documents, logs = emitted(capsys.readouterr().out)
    for document in documents:
        check_emf(document)
    values = values_of(documents)
    stage = (("stage", "transform"),)
    assert values[("totes-test", "StageErrors", stage)] == 1
    assert values[("totes-test", "StageRetries", stage)] == 1
    [error] = [line for line in logs if line["level"] == "ERROR"]
    assert error["execution_id"] == EXECUTION and error["stage"] == "transform"
    assert "TOTES_PROCESSED is not set" in error["message"]
    assert error["error_type"] == "ConfigError"


def test_the_pipelines_metrics_match_the_warehouse_and_totes_status_and_history(
        environment, capsys):
    """One execution through the handlers: the documents' counts are the warehouse's; a table
    made to lag has the same LagSeconds in the status step's document and in `totes status
    --json`; `totes history --json` carries each ingest's, transform's and load's metrics with
    the documents' names, units and values."""
    source, warehouse = environment
    query(source, "INSERT INTO currency (currency_code, last_updated) VALUES ('XYZ', "
                  "'2024-11-16')")  # no ISO 4217 code: quarantined
    planned = invoked(plan_handler, {"run_id": "exec-3", "request": {}})
    items = []
    for item in planned["items"]:
        result = invoked(ingest_handler, item, wrap=True)
        items.append(invoked(status_handler, {"action": "ingested", "result": result,
                                              "item": {**item, "ingested": {"result": result}}}))
    # design falls behind: a newer row in the source, and its next ingest fails.
    query(source, "UPDATE design SET last_updated = (SELECT max(last_updated) FROM design) "
                  "+ interval '3 hours' WHERE design_id = 1")
    [design] = [i for i in planned["items"] if i["table"] == "design"]
    before = capsys.readouterr().out
    invoked(status_handler, {"action": "failed", "item": design, "error": {
        "Error": "SourceSchemaError", "Cause": "{}"}})
    lagging = values_of(emitted(capsys.readouterr().out)[0])
    design_lag = lagging[("totes-test", "LagSeconds", (("table", "design"),))]
    assert design_lag == 3 * 3600  # the source's newest design row against the lake's
    invoked(pending_handler, {"items": items})
    transformed = invoked(transform_handler, {"run_id": "exec-3"})
    loaded = invoked(load_handler, {"run_id": "exec-3"})
    reconciled = invoked(reconcile_handler, {})
    documents, logs = emitted(before + capsys.readouterr().out)
    for document in documents:
        check_emf(document)
    values = values_of(documents)

    def value(name, **dimensions):
        return values.get(("totes-test", name, tuple(dimensions.items())))

    (payments,), = query(warehouse, "SELECT count(*) FROM fact_payment")
    assert value("RowsInserted", table="fact_payment") == payments > 0
    assert value("RowsTransformed", table="fact_payment") == payments
    assert value("RowsQuarantined", table="currency") == transformed["quarantined"]["currency"] \
        == 1
    assert value("VersionsSkipped", table="fact_payment") == 0
    assert reconciled["equal"] is True
    reconciled = [t for t in TABLES if t != "dim_date"]  # dim_date is generated
    assert {t: value("ReconcileDifferences", table=t) for t in reconciled} == \
        {t: 0 for t in reconciled}
    for stage in ("plan", "ingest", "status", "pending", "transform", "load", "reconcile"):
        assert value("StageSeconds", stage=stage) > 0, stage
    assert value("LagSeconds", table="sales_order") == 0
    assert value("LagSeconds", table="design") == 0  # right after its ingest
    assert {line["execution_id"] for line in logs} == {EXECUTION}
    assert loaded["batches"]

    runner = CliRunner()
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    shown = {t["table"]: t["metrics"] for t in json.loads(status.stdout)["tables"]}
    assert shown["design"] == [{"name": "LagSeconds", "unit": "Seconds", "value": design_lag,
                                "dimensions": {"table": "design"}}]
    history = runner.invoke(app, ["history", "--json", "--limit", "100"])
    assert history.exit_code == 0, history.output
    compared = 0
    for record in json.loads(history.stdout):
        for shown_metric in record["metrics"]:
            assert shown_metric["unit"] == BY_NAME[shown_metric["name"]].unit
            if shown_metric["name"] == "StageSeconds":
                continue  # the stage's own time, not the invocation's
            assert value(shown_metric["name"], **shown_metric["dimensions"]) == \
                shown_metric["value"], (record["stage"], record["table"], shown_metric)
            compared += 1
    assert compared >= 2 * 11 + 11 + 2 * 11  # ingest, transform and load metrics


def plain(value):
    """python-hcl2's output with its string literals unquoted (``'"totes"'`` → ``totes``);
    expressions stay as ``${...}``."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def terraform(name: str) -> dict:
    """A file of main-terraform, parsed by python-hcl2."""
    return plain(hcl2.loads((REPO / "main-terraform" / name).read_text()))


def test_every_metric_the_dashboard_and_alarms_name_is_defined_and_emitted():
    """The dashboard's widgets and the alarms of main-terraform (read from the Terraform)
    name metrics of src/contracts/metrics.py with its dimensions, under the namespace the
    functions are given; each is built by the code (a metric(...) call in src/)."""
    observability = terraform("observability.tf")
    variables = {name: body for block in terraform("variables.tf")["variable"]
                 for name, body in block.items()}
    assert variables["metrics_namespace"]["default"] == DEFAULT_NAMESPACE
    assert variables["warehouse_tables"]["default"] == list(TABLES)
    main = (REPO / "main-terraform" / "main.tf").read_text()
    assert "TOTES_METRICS_NAMESPACE = var.metrics_namespace" in main

    named = []
    [locals_block] = [b for b in observability["locals"] if "widgets" in b]
    for widget in locals_block["widgets"]:
        named.append((widget["metric"], (widget["dimension"],)))
    assert "var.metrics_namespace" in json.dumps(locals_block["dashboard_body"])
    alarms = {name: body for block in observability["resource"]
              for kind, resources in block.items() if kind == "aws_cloudwatch_metric_alarm"
              for name, body in resources.items()}
    assert set(alarms) == {"lag", "quarantined", "differences", "retained_wal"}
    for name, alarm in alarms.items():
        assert alarm["namespace"] == "${var.metrics_namespace}", name
        assert "alert_topic_arn" in json.dumps(alarm["alarm_actions"]), name
        assert len(alarm["alarm_description"]) > 80, name  # says what to do
        named.append((alarm["metric_name"], tuple(alarm["dimensions"])))

    code = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.py"))
    assert {m for m, _ in named} >= {"LagSeconds", "RowsQuarantined", "ReconcileDifferences",
                                     "RetainedWalBytes", "StageSeconds", "RowsHeld"}
    for metric_name, dimensions in named:
        assert metric_name in BY_NAME, metric_name
        assert dimensions == BY_NAME[metric_name].dimensions, metric_name
        assert re.search(rf'metric\("{metric_name}"', code), f"{metric_name} is never built"
    # The freshness alarm on the state machine's executions stays.
    assert "ExecutionsSucceeded" in (REPO / "main-terraform" / "alerts.tf").read_text()


def test_the_observability_page_lists_the_metrics():
    text = (REPO / "docs" / "observability.md").read_text()
    block = re.search(r"<!-- metrics:start -->\n(.*?)\n<!-- metrics:end -->", text, re.S)
    assert block, "docs/observability.md lost its metrics markers"
    assert block.group(1) == markdown_table(), (
        "docs/observability.md differs from src/contracts/metrics.py: paste the output of "
        "`python -m totes.contracts.metrics` between the markers")
    for metric in METRICS:
        assert f"`{metric.name}`" in block.group(1)


def test_json_logs_leave_the_totes_logger_as_it_was(capsys):
    from totes.utils.observability import json_logs

    target = logging.getLogger("totes")
    before = (list(target.handlers), target.level, target.propagate)
    with json_logs(execution_id="e", stage="load", table=None) as log:
        logging.getLogger("totes.load.warehouse").info("loading %s", "fact_payment")
        assert log is target
    [line] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["message"] == "loading fact_payment" and line["execution_id"] == "e"
    assert line["stage"] == "load" and line["level"] == "INFO"
    assert (list(target.handlers), target.level, target.propagate) == before
