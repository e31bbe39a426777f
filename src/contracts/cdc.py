"""The lake's change-data-capture contract: what a ``cdc`` table's batches hold, how far the log
has been read, and which changes an initial copy already holds.

A table whose ``extract_type`` is ``cdc`` is read from the source's change log (PostgreSQL
logical replication: one publication and one slot per pipeline; MySQL and MariaDB: the
binlog) instead of a cursor. Its lake
batches are the usual ``<table>/YYYY/MM/DD/HHMMSSffffff.parquet`` files, in two modes
(``totes.mode`` in the footer):

* ``cdc_snapshot``: the initial copy, the table's rows as one snapshot saw them (the source's
  columns only). Its footer's ``totes.cdc`` says which transactions that snapshot holds
  (``snapshot``, PostgreSQL's ``pg_current_snapshot()`` text) and where the slot stood when
  it was taken (``through_lsn``): the first read of the log after it skips every transaction
  the snapshot already holds (:func:`visible_in_snapshot`), so a row changed while the copy
  ran lands once, in its latest version.
* ``cdc``: row versions read from the log: the source's columns plus :data:`OPERATION`
  (``insert``, ``update``, ``delete``), :data:`LSN` (the commit's end LSN, an integer: the
  position ``pg_replication_slot_advance`` and ``confirmed_flush_lsn`` use) and
  :data:`COMMIT_TIME` (UTC). From a MySQL source the position is the binlog's, after the
  transaction's XID event, packed as ``file index << 32 | offset``
  (:func:`totes.utils.mysql_binlog.encode`), which orders commits as the LSN does and fits
  the same column; its initial copy's ``snapshot`` is null and ``through_lsn`` is the
  binlog position the copy's snapshot is consistent with (MariaDB's
  ``binlog_snapshot_position``): a commit after it is read from the log, none before.
  A version is the row's state at a commit: several changes of one row in one
  transaction are one version, its last state; two commits stay two versions, ordered
  by LSN, even when they give the row the same ``last_updated``. A delete carries the
  row's last values (from the log when the table's replica identity is ``FULL`` or the
  source is MySQL, else from the lake). Its footer's ``totes.cdc`` gives ``through_lsn``: the log
  position up to which this batch and the ones before it hold every change of the table.

**Position records** (``_cdc/<slot>/YYYY/MM/DD/HHMMSSffffff.json``, :class:`Position`) are
written last by each read of the log, even when no table changed: every ``cdc`` table of the
pipeline holds every change up to ``through_lsn``. The slot is advanced to the newest record's
``through_lsn`` at the start of the next read, so the lake stays the truth: a read killed
before its record (or before the slot moved) is read again, and each table skips the changes
its own batches already hold (its newest ``through_lsn``).
"""
from __future__ import annotations

import json
import re
from typing import Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from totes.contracts.errors import LakeError

#: The columns a ``cdc`` batch adds to the source's (names cannot clash: source columns are
#: plain identifiers from the catalog, and these are reserved).
OPERATION, LSN, COMMIT_TIME = "_totes_operation", "_totes_lsn", "_totes_commit_time"
CDC_COLUMNS = (OPERATION, LSN, COMMIT_TIME)
OPERATIONS = ("insert", "update", "delete")
#: The Arrow types of :data:`CDC_COLUMNS`.
CDC_FIELDS = (pa.field(OPERATION, pa.string(), nullable=False),
              pa.field(LSN, pa.int64(), nullable=False),
              pa.field(COMMIT_TIME, pa.timestamp("us", "UTC"), nullable=False))
#: ``totes.mode`` of an initial copy and of a batch read from the log.
SNAPSHOT_MODE, STREAM_MODE = "cdc_snapshot", "cdc"
#: The footer key of a ``cdc`` table's batches (UTF-8 JSON, :class:`CdcFooter`).
CDC_KEY = b"totes.cdc"
#: The folder of the position records, per slot.
POSITIONS = "_cdc"
POSITION_EXT = "json"


class CdcFooter(BaseModel):
    """``totes.cdc`` of a ``cdc`` table's batch: ``{"through_lsn": 23791040, "snapshot":
    null}`` (a batch read from the log), ``{"through_lsn": 23789000, "snapshot":
    "798:802:799"}`` (an initial copy: the slot's position and the copy's snapshot)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    through_lsn: int
    snapshot: Optional[str] = None

    def metadata(self) -> dict[bytes, str]:
        """The footer entry, for a Parquet writer's key-value metadata."""
        return {CDC_KEY: self.model_dump_json()}


def cdc_footer(metadata: Optional[dict], where: str) -> Optional[CdcFooter]:
    """The ``totes.cdc`` entry of a batch file's footer ``metadata``; None when it has none
    (a batch of a polled table).

    Raises:
        LakeError: the entry is malformed (``where`` names the file).
    """
    if not metadata or CDC_KEY not in metadata:
        return None
    try:
        return CdcFooter.model_validate_json(metadata[CDC_KEY])
    except ValidationError as exc:
        raise LakeError(f"{where} has a malformed totes.cdc entry in its footer: {exc}") \
            from None


class Position(BaseModel):
    """A position record: one read of the log, committed.

    ``through_lsn``: every ``cdc`` table holds every change up to this LSN (the slot may be
    advanced to it); ``read_lsn``: how far this read went (beyond ``through_lsn`` when a
    table was stopped, by a TRUNCATE or a schema change, short of it); ``batches``: the lake
    keys this read wrote, per table; ``stopped``: per table, why it was stopped;
    ``read_at``: when (UTC, ISO 8601); ``binlog`` (a MySQL source's): ``through_lsn`` as the
    server writes it, the binlog file and the offset in it (``binlog.000003:1234``).

    From a MySQL source, ``slot`` is the pipeline's name for its reader (``cdc.slot``) and
    the positions are binlog positions packed as ``file index << 32 | offset``
    (:func:`totes.utils.mysql_binlog.encode`): they order commits as LSNs do."""

    model_config = ConfigDict(extra="forbid")

    slot: str
    through_lsn: int
    read_lsn: int
    batches: dict[str, str] = {}
    stopped: dict[str, str] = {}
    read_at: str
    binlog: Optional[str] = None


def position_prefix(slot: str) -> str:
    """``_cdc/<slot>``: where the slot's position records are kept."""
    return f"{POSITIONS}/{slot}"


def parse_position(data: bytes, where: str) -> Position:
    """The position record whose JSON is ``data``.

    Raises:
        LakeError: not JSON, or a field is missing or wrong.
    """
    try:
        return Position.model_validate_json(data)
    except ValidationError as exc:
        raise LakeError(f"{where} is not a position record: {exc}") from None


_LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def lsn_text(lsn: int) -> str:
    """PostgreSQL's way of writing an LSN: ``23791040`` → ``'0/16B0A40'``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_value(text: str) -> int:
    """An LSN as PostgreSQL writes it (``0/16B0A40``) as an integer.

    Raises:
        ValueError: it is not an LSN.
    """
    match = _LSN_TEXT.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an LSN (like 0/16B0A40)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def visible_in_snapshot(xid: int, snapshot: str) -> bool:
    """Whether the transaction ``xid`` (a 32-bit id, as the log's Begin message gives it) is
    visible in ``snapshot`` (``pg_current_snapshot()`` text, ``xmin:xmax:xip,...``, of 64-bit
    ids): it committed before the snapshot was taken, so a copy in that snapshot holds its
    changes. The rule is PostgreSQL's own (``pg_visible_in_snapshot``): before ``xmin``
    visible, at or after ``xmax`` not, in between visible unless in progress (listed). Ids
    are compared as PostgreSQL compares 32-bit ids (``TransactionIdPrecedes``: modulo 2^32,
    the nearer way round), which is exact for transactions less than 2^31 ids apart.

    Raises:
        ValueError: ``snapshot`` is not a snapshot's text.
    """
    try:
        xmin_text, xmax_text, listed = snapshot.split(":")
        xmin, xmax = int(xmin_text) & _LOW, int(xmax_text) & _LOW
        in_progress = {int(x) & _LOW for x in listed.split(",") if x}
    except ValueError:
        raise ValueError(f"{snapshot!r} is not a snapshot (xmin:xmax:xip,...)") from None
    xid &= _LOW
    if _precedes(xid, xmin):
        return True
    if not _precedes(xid, xmax):
        return False
    return xid not in in_progress


_LOW = 0xFFFFFFFF


def _precedes(a: int, b: int) -> bool:
    """``a`` comes before ``b``, 32-bit ids compared modulo 2^32 (PostgreSQL's rule)."""
    difference = (a - b) & _LOW
    return difference >= 0x80000000


def position_json(position: Position) -> bytes:
    """The record's bytes, as stored."""
    return json.dumps(position.model_dump(), indent=1).encode()
