"""The Lambda handlers as the state machine calls them: settings from environment variables,
JSON payloads in and out, one stage's output feeding the next."""
import json

import pytest

from support import CONFIG, query, snapshot
from totes.ingest.handler import ingest_handler, plan_handler
from totes.load.handler import handler as load_handler
from totes.transform.handler import handler as transform_handler
from totes.utils.errors import ConfigError


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
