"""The run ledger on both backends: SQLite for real, DynamoDB on moto's server. Records in
order, leases granted to one holder at a time, renewed, released, taken over once expired;
a running record whose lease is gone reads as abandoned."""
from __future__ import annotations

import threading
import time

import boto3
import pytest

from totes.utils.ledger import DynamoLedger, LedgerRecord, SqliteLedger, ledger_from_uri


@pytest.fixture(params=["sqlite", "dynamodb"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        return SqliteLedger(str(tmp_path / "ledger.sqlite3"))
    request.getfixturevalue("s3_server")  # moto's server; the AWS variables point at it
    boto3.client("dynamodb").create_table(
        TableName="totes-ledger", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}])
    return DynamoLedger("totes-ledger")


def record(stage, table, started, run="run-a", status="succeeded", rows=1) -> LedgerRecord:
    return LedgerRecord(stage=stage, table=table, run_id=run, status=status, rows=rows,
                        started_at=f"2026-12-01T10:00:{started:02d}.000000+00:00")


def test_records_come_back_newest_first_and_by_table(ledger):
    for second, table in enumerate(["payment", "staff", "payment", "staff", "payment"]):
        ledger.put(record("ingest", table, second, rows=second))
    ledger.put(record("load", "*", 9))
    ledger.put(record("ingest", "payment", 4, status="failed"))  # the same record, rewritten

    payment = ledger.history("ingest", "payment")
    assert [(r.started_at[17:19], r.status) for r in payment] == [("04", "failed"),
                                                                  ("02", "succeeded"),
                                                                  ("00", "succeeded")]
    assert [r.stage for r in ledger.history(limit=2)] == ["load", "ingest"]
    assert len(ledger.history()) == 6
    assert ledger.last("ingest", "payment", "succeeded").rows == 2


def test_a_lease_has_one_holder_until_it_is_released_or_expires(ledger):
    assert ledger.try_lease("ingest:payment", "run-a", 30) is None
    held = ledger.try_lease("ingest:payment", "run-b", 30)
    assert held.owner == "run-a"
    assert ledger.try_lease("ingest:payment", "run-a", 30) is None  # renewed by its holder
    ledger.release("ingest:payment", "run-b")  # not b's to release
    assert ledger.holder("ingest:payment").owner == "run-a"
    ledger.release("ingest:payment", "run-a")
    assert ledger.holder("ingest:payment") is None
    assert ledger.try_lease("ingest:payment", "run-b", 0.3) is None
    time.sleep(0.5)  # b was killed: its lease runs out
    assert ledger.holder("ingest:payment") is None
    assert ledger.try_lease("ingest:payment", "run-c", 30) is None


def test_of_many_runs_racing_for_a_lease_exactly_one_wins(ledger):
    start, granted = threading.Barrier(8), []

    def race(n):
        start.wait()
        if ledger.try_lease("transform", f"run-{n}", 30) is None:
            granted.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 1
    assert ledger.holder("transform").owner == f"run-{granted[0]}"


def test_a_held_lease_is_renewed_and_a_dead_runs_record_reads_abandoned(ledger):
    with ledger.lease("ingest:staff", "run-live", seconds=0.6) as lease:
        assert lease.holder is None
        ledger.put(record("ingest", "staff", 1, run="run-live", status="running", rows=-1))
        time.sleep(1.5)  # past the first expiry: the renewals keep it
        assert ledger.try_lease("ingest:staff", "run-other", 0.6).owner == "run-live"
        assert ledger.resolved(ledger.history("ingest", "staff"))[0].status == "running"
    assert ledger.holder("ingest:staff") is None  # released at the end
    ledger.put(record("ingest", "staff", 2, run="run-killed", status="running", rows=-1))
    [killed, live] = ledger.resolved(ledger.history("ingest", "staff"))
    assert (killed.run_id, killed.status, killed.rows) == ("run-killed", "abandoned", -1)
    assert live.status == "abandoned"  # its run ended without a final record


def test_the_ledger_uri_names_the_backend(tmp_path):
    assert isinstance(ledger_from_uri(f"sqlite://{tmp_path}/l.sqlite3"), SqliteLedger)
    assert isinstance(ledger_from_uri(str(tmp_path / "l.sqlite3")), SqliteLedger)
    from totes.contracts.errors import ConfigError
    with pytest.raises(ConfigError, match="use sqlite:///path/ledger.sqlite3 or dynamodb://"):
        ledger_from_uri("redis://x")


def test_work_whose_lease_was_taken_over_publishes_nothing(ledger, tmp_path):
    from totes.contracts.errors import TransientError
    from totes.utils.lake import Lake
    from totes.contracts.errors import LeaseLost
    from totes.utils.run_tracking import check_lease, tracked

    lake = Lake(str(tmp_path / "lake"))

    def work():
        ledger.release("ingest:payment", ledger.holder("ingest:payment").owner)
        assert ledger.try_lease("ingest:payment", "run-other", 30) is None  # taken over
        check_lease()
        lake.put_bytes("payment/2024/01/01/000000000000.parquet", b"x")

    with pytest.raises(LeaseLost, match="lease ingest:payment of run-1/.* was lost "
                                        r"\(run-other took it over\)") as error:
        tracked(ledger, "ingest", "payment", "run-1", "incremental", work,
                lambda holder: None, lambda result: {})
    assert isinstance(error.value, TransientError)
    assert lake.newest_key("payment") is None
    assert ledger.holder("ingest:payment").owner == "run-other"  # not released by the loser
    [record] = ledger.history("ingest", "payment")
    assert (record.status, record.error_type) == ("failed", "LeaseLost")


def test_a_retry_of_the_same_run_does_not_share_its_lease(ledger):
    from totes.utils.run_tracking import tracked

    inner = []

    def first_attempt():
        inner.append(tracked(ledger, "ingest", "staff", "run-1", None, lambda: "ran",
                             lambda holder: f"skipped: {holder.owner}", lambda r: {}))
        return "first"

    tracked(ledger, "ingest", "staff", "run-1", None, first_attempt, lambda h: "skip",
            lambda r: {})
    assert inner[0].startswith("skipped: run-1/")  # the same run, another attempt: skipped
