"""The run ledger: what ran, when, with what result; and the leases that keep two runs off the
same work.

**Records.** One per table per stage run (ingest: one per table; transform and load: one per
run, table ``*``). It is written when the work starts (``running``, rows -1) and again when
it ends: ``succeeded`` (mode, rows, bytes, low and high watermark, lake or manifest key,
seconds, details), ``failed`` (the error's type and message) or ``skipped`` (another run held
the lease). A record still ``running`` whose run no longer holds the lease (it was killed, or
its lease expired and another run took over) reads as ``abandoned``. The lake stays the truth
for watermarks; the ledger records and explains.

**Leases.** A lease is a named row with an owner and an expiry, taken by a conditional write:
it is granted when nobody holds it or its holder's lease has expired. The holder renews it
while it works (every third of its duration) and releases it at the end. Names:
``ingest:<table>``, ``transform``, ``load``, ``capture:<slot>``. Locally (SQLite) a lease also
keeps its holder's process (boot id, PID and start time): a holder that provably died (killed,
crashed) is taken over at once, so the first run after a crash completes the work; in AWS
(DynamoDB) a dead holder's lease expires.

Backends behind one interface (:class:`Ledger`): :class:`SqliteLedger`, a file under
``TOTES_HOME`` that needs no server (the local default), and :class:`DynamoLedger`, a DynamoDB
table (AWS), whose conditional puts give the same semantics. ``TOTES_LEDGER`` chooses:
``sqlite:///path/ledger.sqlite3`` or ``dynamodb://table-name``.

Times are UTC, ISO 8601 with microseconds; durations in seconds.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Optional

from pydantic import BaseModel

from totes.contracts.errors import ConfigError, LeaseLost, StorageUnavailable, TotesError
from totes.utils import settings

log = logging.getLogger(__name__)

ALL_TABLES = "*"
#: The stages the ledger records.
STAGES = ("ingest", "transform", "load")


def now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def lease_seconds() -> float:
    """How long a lease lasts without renewal, in seconds: ``TOTES_LEASE_SECONDS`` (60).

    Raises:
        ConfigError: not a positive number.
    """
    return settings.current().lease_seconds


class LedgerRecord(BaseModel):
    """One stage run of one table, as ``totes history --json`` shows it::

        {"stage": "ingest", "table": "payment", "run_id": "run-…", "status": "succeeded",
         "mode": "incremental", "started_at": "2026-12-01T10:00:00.000000+00:00",
         "ended_at": "...", "seconds": 0.41, "rows": 12, "bytes": 4096,
         "low_watermark": {...}, "high_watermark": {...},
         "key": "payment/2024/11/16/...parquet", "error_type": null, "error_message": null,
         "details": {}}
    """

    stage: str
    table: str
    run_id: str
    status: str
    mode: Optional[str] = None
    started_at: str
    ended_at: Optional[str] = None
    seconds: Optional[float] = None
    rows: int = -1
    bytes: Optional[int] = None
    low_watermark: Optional[dict] = None
    high_watermark: Optional[dict] = None
    key: Optional[str] = None
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    attempt: Optional[str] = None   # the lease owner of this attempt (a run may retry a step)
    details: dict[str, Any] = {}


class LeaseHolder(BaseModel):
    """Who holds a lease, and until when (UTC)."""

    name: str
    owner: str
    expires_at: str


class Ledger(ABC):
    """The ledger's interface; see the module docstring."""

    @abstractmethod
    def put(self, record: LedgerRecord) -> None:
        """Write ``record``, replacing the one with the same stage, table, start and run."""

    @abstractmethod
    def history(self, stage: Optional[str] = None, table: Optional[str] = None,
                limit: int = 20) -> list[LedgerRecord]:
        """Records, newest first, of ``stage``/``table`` (all when None), at most ``limit``."""

    @abstractmethod
    def try_lease(self, name: str, owner: str, seconds: float) -> Optional[LeaseHolder]:
        """Take or renew lease ``name`` for ``owner`` for ``seconds``; returns None when
        granted, else who holds it."""

    @abstractmethod
    def release(self, name: str, owner: str) -> None:
        """Give lease ``name`` back, if ``owner`` still holds it."""

    @abstractmethod
    def holder(self, name: str) -> Optional[LeaseHolder]:
        """Who holds lease ``name`` now (None when nobody does or it expired)."""

    # ---- derived ------------------------------------------------------------------------
    def describe(self) -> str:
        """How messages name the ledger: ``ledger /home/me/.totes/ledger.sqlite3`` or
        ``ledger DynamoDB table totes-prod-ledger``."""
        return f"ledger {self!r}"

    def resolved(self, records: list[LedgerRecord]) -> list[LedgerRecord]:
        """``records`` with ``running`` ones whose attempt no longer holds the lease shown as
        ``abandoned``."""
        out = []
        for record in records:
            if record.status == "running":
                holder = self.holder(lease_name(record.stage, record.table))
                if holder is None or holder.owner != (record.attempt or record.run_id):
                    record = record.model_copy(update={"status": "abandoned"})
            out.append(record)
        return out

    def last(self, stage: str, table: str, status: Optional[str] = None,
             scan: int = 50) -> Optional[LedgerRecord]:
        """The newest record of ``stage``/``table`` (with ``status``, when given)."""
        for record in self.resolved(self.history(stage, table, scan)):
            if status is None or record.status == status:
                return record
        return None

    @contextmanager
    def lease(self, name: str, owner: str, wait_seconds: float = 0.0,
              seconds: Optional[float] = None) -> Iterator["Lease"]:
        """Hold lease ``name`` for the block, renewing it in the background. Yields a
        :class:`Lease`: ``lease.holder`` is None when it is held, or the other holder when it
        could not be taken within ``wait_seconds`` (the block must then skip its work). Before
        it makes its work visible (a publish, a commit), the block calls ``lease.check()``,
        which raises :class:`LeaseLost` when a renewal failed or another run took it over."""
        seconds = seconds or lease_seconds()
        deadline = time.monotonic() + wait_seconds
        while True:
            holder = self.try_lease(name, owner, seconds)
            if holder is None or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        lease = Lease(self, name, owner, seconds, holder)
        if holder is not None:
            yield lease
            return
        stop = threading.Event()

        def renew():
            while not stop.wait(seconds / 3):
                try:
                    other = self.try_lease(name, owner, seconds)
                except Exception as exc:  # handed to the work through lease.check()
                    lease.lost = f"renewing it failed: {exc}"
                    return
                if other is not None:
                    lease.lost = f"{other.owner} took it over"
                    return

        renewer = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
            if lease.lost is None:
                self.release(name, owner)


class Lease:
    """A lease being held (or not) by a block of work; see :meth:`Ledger.lease`."""

    def __init__(self, ledger: Ledger, name: str, owner: str, seconds: float,
                 holder: Optional[LeaseHolder]):
        self.ledger, self.name, self.owner, self.seconds = ledger, name, owner, seconds
        self.holder = holder
        self.lost: Optional[str] = None
        self._renewed_at = time.monotonic()

    def check(self) -> None:
        """Confirm the lease is still ours, renewing it now.

        Raises:
            LeaseLost: it was lost (and the work must not be made visible).
        """
        if self.lost is None:
            try:
                other = self.ledger.try_lease(self.name, self.owner, self.seconds)
            except TotesError as exc:
                self.lost = f"renewing it failed: {exc}"
            else:
                if other is not None:
                    self.lost = f"{other.owner} took it over"
        if self.lost is not None:
            raise LeaseLost(f"lease {self.name} of {self.owner} was lost ({self.lost}); "
                            "nothing was published")


def lease_name(stage: str, table: str) -> str:
    """``ingest:payment``, ``transform``, ``load``."""
    return f"{stage}:{table}" if table != ALL_TABLES else stage


def new_run_id() -> str:
    """``run-20261201T100000-1a2b3c4d``: sortable, unique."""
    return f"run-{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


# ---- a lease's holder process ----------------------------------------------------------------
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> Optional[str]:
    try:
        with open(_BOOT_ID) as found:
            return found.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> Optional[str]:
    """The process's start time since boot, in clock ticks (``/proc/<pid>/stat`` field 22),
    None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as found:
            return found.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> Optional[str]:
    """This process's PID namespace (``pid:[4026531836]``): two containers on one host share
    the boot id but not their PIDs."""
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return None


def this_process() -> Optional[str]:
    """``<boot id>:<pid namespace>:<pid>:<start time>`` of this process (None where /proc
    cannot say): what tells a holder that died from one whose PID was reused, or one that
    lives in another container."""
    boot, space, started = _boot_id(), _pid_namespace(), _start_time(os.getpid())
    return f"{boot}:{space}:{os.getpid()}:{started}" if boot and space and started else None


def dead(process: Optional[str]) -> bool:
    """Whether the process ``process`` (:func:`this_process` of the holder) is provably dead:
    it ran on this machine since its last boot, in this PID namespace, and no process has its
    id and start time now. A holder on another machine or in another container, or of
    unknown process (an older release's record), is never dead here: its lease expires
    instead."""
    if not process or process.count(":") != 3:
        return False
    boot, space, pid, started = process.split(":")
    if boot != _boot_id() or space != _pid_namespace() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != started


# ---- SQLite ---------------------------------------------------------------------------------
class SqliteLedger(Ledger):
    """The ledger in one SQLite file (WAL journal, so that runs in several processes read
    while one writes); each call opens its own connection, so threads may share it."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS runs (stage TEXT NOT NULL, "
                       "table_name TEXT NOT NULL, started_at TEXT NOT NULL, run_id TEXT NOT "
                       "NULL, record TEXT NOT NULL, PRIMARY KEY (stage, table_name, "
                       "started_at, run_id))")
            db.execute("CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, "
                       "owner TEXT NOT NULL, expires_at TEXT NOT NULL, process TEXT)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(leases)")}
            if "process" not in columns:  # a ledger of a release before it
                db.execute("ALTER TABLE leases ADD COLUMN process TEXT")

    def __repr__(self) -> str:
        return f"SqliteLedger({self.path!r})"

    def describe(self) -> str:
        return f"ledger {self.path} (SQLite)"

    @contextmanager
    def _connect(self):
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open the ledger {self.path}: {exc}") from exc
        try:
            yield db
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):  # another writer, past the wait
                raise StorageUnavailable(f"ledger {self.path}: {exc}") from exc
            raise ConfigError(f"ledger {self.path}: {exc} (a read-only file, a full disk, "
                              "or not a ledger)") from exc
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"ledger {self.path} is not a SQLite ledger: {exc}") from exc
        finally:
            db.close()

    def put(self, record: LedgerRecord) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                       (record.stage, record.table, record.started_at, record.run_id,
                        record.model_dump_json()))

    def history(self, stage=None, table=None, limit=20) -> list[LedgerRecord]:
        where, values = [], []
        for column, value in (("stage", stage), ("table_name", table)):
            if value is not None:
                where.append(f"{column} = ?")
                values.append(value)
        # Fixed column names only; the values are bound (?).
        sql = "SELECT record FROM runs" + (  # nosec B608
            f" WHERE {' AND '.join(where)}" if where else "")
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY started_at DESC, run_id DESC LIMIT ?",
                              (*values, limit)).fetchall()
        return [LedgerRecord.model_validate_json(record) for record, in rows]

    def try_lease(self, name, owner, seconds) -> Optional[LeaseHolder]:
        """As :meth:`Ledger.try_lease`; besides, a lease whose holder is a process of this
        machine that is provably dead (:func:`dead`: the same boot, and no process with its
        id and start time) is taken over at once, instead of when it expires."""
        moment = now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            held = db.execute("SELECT owner, process FROM leases WHERE name = ?",
                              (name,)).fetchone()
            dead_owner = held[0] if held and held[0] != owner and dead(held[1]) else None
            db.execute("INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                       "SET owner = excluded.owner, expires_at = excluded.expires_at, "
                       "process = excluded.process WHERE leases.owner = excluded.owner "
                       "OR leases.expires_at < ? OR leases.owner = ?",
                       (name, owner, _iso(moment + timedelta(seconds=seconds)),
                        this_process(), _iso(moment), dead_owner))
            row = db.execute("SELECT owner, expires_at FROM leases WHERE name = ?",
                             (name,)).fetchone()
            db.execute("COMMIT")
        if dead_owner is not None and row[0] == owner:
            log.warning("took over lease %s from %s, whose process is dead", name, dead_owner)
        if row[0] == owner:
            return None
        return LeaseHolder(name=name, owner=row[0], expires_at=row[1])

    def release(self, name, owner) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def holder(self, name) -> Optional[LeaseHolder]:
        with self._connect() as db:
            row = db.execute("SELECT owner, expires_at FROM leases WHERE name = ? AND "
                             "expires_at >= ?", (name, _iso(now()))).fetchone()
        return LeaseHolder(name=name, owner=row[0], expires_at=row[1]) if row else None


# ---- DynamoDB -------------------------------------------------------------------------------
class DynamoLedger(Ledger):
    """The ledger in one DynamoDB table with a string partition key ``pk`` and sort key
    ``sk``: a run record is ``pk = run#<stage>#<table>``, ``sk = <started_at>#<run_id>``; a
    lease is ``pk = lease#<name>``, ``sk = lease``, taken with one conditional put that, when
    its condition fails, returns the holder (``ReturnValuesOnConditionCheckFailure=ALL_OLD``)."""

    def __init__(self, table_name: str, session=None):
        import boto3

        self.table_name = table_name
        self.client = (session or boto3.session.Session()).client("dynamodb")

    def __repr__(self) -> str:
        return f"DynamoLedger({self.table_name!r})"

    def describe(self) -> str:
        return f"ledger DynamoDB table {self.table_name}"

    @contextmanager
    def _call(self, doing: str):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("ResourceNotFoundException", "AccessDeniedException",
                        "ValidationException"):
                raise ConfigError(f"ledger table {self.table_name}: {doing}: {code}") from exc
            raise StorageUnavailable(f"ledger table {self.table_name}: {doing}: {code}") \
                from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"ledger table {self.table_name}: {doing}: "
                                     f"{type(exc).__name__}") from exc

    def put(self, record: LedgerRecord) -> None:
        item = {"pk": {"S": f"run#{record.stage}#{record.table}"},
                "sk": {"S": f"{record.started_at}#{record.run_id}"},
                "record": {"S": record.model_dump_json()}}
        with self._call("writing a run record"):
            self.client.put_item(TableName=self.table_name, Item=item)

    def history(self, stage=None, table=None, limit=20) -> list[LedgerRecord]:
        records = []
        pages: list[list[dict]] = []
        with self._call("reading run records"):
            if stage is not None and table is not None:
                pages = [self.client.query(
                    TableName=self.table_name, KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues={":pk": {"S": f"run#{stage}#{table}"}},
                    ScanIndexForward=False, Limit=limit)["Items"]]
            else:  # a few hundred records a day: a filtered scan of the run records
                start: dict = {}
                while True:
                    page = self.client.scan(TableName=self.table_name, **start,
                                            FilterExpression="begins_with(pk, :run)",
                                            ExpressionAttributeValues={":run": {"S": "run#"}})
                    pages.append(page["Items"])
                    if "LastEvaluatedKey" not in page:
                        break
                    start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
        for items in pages:
            records += [LedgerRecord.model_validate_json(i["record"]["S"]) for i in items]
        records = [r for r in records if (stage is None or r.stage == stage)
                   and (table is None or r.table == table)]
        records.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)
        return records[:limit]

    def try_lease(self, name, owner, seconds) -> Optional[LeaseHolder]:
        moment = now()
        expires = _iso(moment + timedelta(seconds=seconds))
        with self._call(f"taking lease {name}"):
            try:
                self.client.put_item(
                    TableName=self.table_name,
                    Item={"pk": {"S": f"lease#{name}"}, "sk": {"S": "lease"},
                          "owner": {"S": owner}, "expires_at": {"S": expires}},
                    ConditionExpression="attribute_not_exists(pk) OR #o = :me OR "
                                        "expires_at < :now",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": owner},
                                               ":now": {"S": _iso(moment)}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD")
                return None
            except self.client.exceptions.ConditionalCheckFailedException as refused:
                # The holder that made the condition fail, in the same call (as Powertools'
                # idempotency layer reads it): no second read that could see another state.
                held = refused.response.get("Item") or {}
        if "owner" not in held:  # none came back: taken and released in between
            return LeaseHolder(name=name, owner="(just released)", expires_at=_iso(moment))
        return LeaseHolder(name=name, owner=held["owner"]["S"],
                           expires_at=held["expires_at"]["S"])

    def release(self, name, owner) -> None:
        with self._call(f"releasing lease {name}"):
            try:
                self.client.delete_item(
                    TableName=self.table_name,
                    Key={"pk": {"S": f"lease#{name}"}, "sk": {"S": "lease"}},
                    ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": owner}})
            except self.client.exceptions.ConditionalCheckFailedException:
                pass  # it expired and another run holds it now: not ours to release

    def holder(self, name) -> Optional[LeaseHolder]:
        with self._call(f"reading lease {name}"):
            item = self.client.get_item(TableName=self.table_name, ConsistentRead=True,
                                        Key={"pk": {"S": f"lease#{name}"},
                                             "sk": {"S": "lease"}}).get("Item")
        if not item or item["expires_at"]["S"] < _iso(now()):
            return None
        return LeaseHolder(name=name, owner=item["owner"]["S"],
                           expires_at=item["expires_at"]["S"])


def ledger_from_uri(uri: str) -> Ledger:
    """``sqlite:///abs/path.sqlite3`` (or a plain path) → :class:`SqliteLedger`;
    ``dynamodb://table-name`` → :class:`DynamoLedger`.

    Raises:
        ConfigError: another scheme.
    """
    if uri.startswith("dynamodb://"):
        return DynamoLedger(uri[len("dynamodb://"):])
    if uri.startswith("sqlite://"):
        return SqliteLedger(uri[len("sqlite://"):])
    if "://" in uri:
        raise ConfigError(f"ledger {uri!r}: use sqlite:///path/ledger.sqlite3 or "
                          "dynamodb://table-name")
    return SqliteLedger(uri)


def record_json(value) -> Optional[dict]:
    """A watermark (or any pydantic model) as the dict a record keeps."""
    if value is None:
        return None
    return json.loads(value.model_dump_json()) if hasattr(value, "model_dump_json") else value
