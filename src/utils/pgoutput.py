"""PostgreSQL's ``pgoutput`` logical decoding messages (protocol version 1), decoded.

The layouts are those of PostgreSQL's documentation, "Logical Replication Message Formats"
(and ``src/backend/replication/logical/proto.c``); integers are big-endian, strings
NUL-terminated UTF-8, times microseconds since 2000-01-01 UTC:

* Begin ``B``: Int64 final LSN, Int64 commit time, Int32 xid;
* Commit ``C``: Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit time;
* Relation ``R``: Int32 oid, String namespace, String name, Int8 replica identity, Int16
  columns, each: Int8 flags (1: part of the replica identity key), String name, Int32 type
  oid, Int32 type modifier;
* Insert ``I``: Int32 oid, ``N``, TupleData; Update ``U``: Int32 oid, optionally ``K`` or
  ``O`` and TupleData (the old key or, under ``REPLICA IDENTITY FULL``, the old row), ``N``,
  TupleData; Delete ``D``: Int32 oid, ``K`` or ``O``, TupleData;
* TupleData: Int16 columns, each ``n`` (NULL), ``u`` (an unchanged TOASTed value, not
  sent), or ``t`` with Int32 length and the value as text;
* Truncate ``T``: Int32 relations, Int8 options, Int32 oid each;
* Type ``Y``, Origin ``O`` and Message ``M`` are decoded by kind only (totes reads tables'
  columns as text, and needs neither).

The library that decodes these for dlt's ``pg_replication`` source (pypgoutput) requires
psycopg2 and fails on ``u``, Type and Origin messages, and is not maintained; this module is
the one place totes reads the format. Streamed transactions (protocol version 2) are never
asked for.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional, Union

_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


class Unchanged:
    """An unchanged TOASTed value (``u``): the message does not carry it."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()
#: One column's value in a message: its text, None for NULL, or :data:`UNCHANGED`.
Value = Union[str, None, Unchanged]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    key: bool


@dataclass(frozen=True)
class Relation:
    """A table's columns as the log sends them: before the first change of each table in a
    decoding session, and again after its definition changed. ``replica_identity``:
    ``d`` (default: the primary key), ``f`` (full), ``i`` (an index), ``n`` (nothing)."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Change:
    """An insert, update or delete of one row of relation ``oid``: its ``new`` values (insert,
    update) and ``old`` ones (delete; an update that changed the key or under ``REPLICA
    IDENTITY FULL``), ``old_is_row`` when ``old`` is the whole old row (``O``) rather than
    its key (``K``: the other columns NULL)."""

    operation: str
    oid: int
    new: Optional[tuple[Value, ...]] = None
    old: Optional[tuple[Value, ...]] = None
    old_is_row: bool = False


@dataclass(frozen=True)
class Truncate:
    oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class Other:
    """A message totes does not use (Type ``Y``, Origin ``O``, Message ``M``)."""

    kind: str


Message = Union[Begin, Commit, Relation, Change, Truncate, Other]


class DecodeError(ValueError):
    """The bytes are not a pgoutput message (protocol version 1)."""


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from(fmt, self.data, self.at)
        except struct.error:
            raise DecodeError(f"a {self.data[:1]!r} message ends early, at byte {self.at}") \
                from None
        self.at += struct.calcsize(fmt)
        return values

    def byte(self) -> str:
        return chr(self.take("!B")[0])

    def int(self, fmt: str) -> int:
        return int(self.take(fmt)[0])

    def string(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise DecodeError(f"a {self.data[:1]!r} message has an unterminated string")
        text = self.data[self.at:end].decode("utf-8")
        self.at = end + 1
        return text

    def time(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.int("!q"))

    def tuple_data(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.int("!h")):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                length = self.int("!i")
                values.append(self.data[self.at:self.at + length].decode("utf-8"))
                self.at += length
            else:  # 'b' (binary values) is never asked for
                raise DecodeError(f"a column value of kind {kind!r}: only n, u and t are "
                                  "expected (text values)")
        return tuple(values)


def decode(data: bytes) -> Message:
    """The message ``data`` holds (one row of ``pg_logical_slot_peek_binary_changes``).

    Raises:
        DecodeError: the bytes are not a protocol version 1 message.
    """
    if not data:
        raise DecodeError("an empty message")
    reader = _Reader(data)
    kind = reader.byte()
    if kind == "B":
        final_lsn, micros, xid = reader.take("!qqI")
        return Begin(final_lsn, _EPOCH + timedelta(microseconds=micros), xid)
    if kind == "C":
        _flags, commit_lsn, end_lsn = reader.take("!Bqq")
        return Commit(commit_lsn, end_lsn, reader.time())
    if kind == "R":
        oid = reader.int("!I")
        namespace, name = reader.string(), reader.string()
        identity = reader.byte()
        columns = []
        for _ in range(reader.int("!h")):
            flags = reader.int("!B")
            column = reader.string()
            type_oid, modifier = reader.take("!Ii")
            columns.append(Column(column, type_oid, modifier, bool(flags & 1)))
        return Relation(oid, namespace, name, identity, tuple(columns))
    if kind == "I":
        oid = reader.int("!I")
        if reader.byte() != "N":
            raise DecodeError("an insert without its new row")
        return Change("insert", oid, new=reader.tuple_data())
    if kind == "U":
        oid = reader.int("!I")
        marker = reader.byte()
        old, old_is_row = None, False
        if marker in ("K", "O"):
            old, old_is_row = reader.tuple_data(), marker == "O"
            marker = reader.byte()
        if marker != "N":
            raise DecodeError("an update without its new row")
        return Change("update", oid, new=reader.tuple_data(), old=old, old_is_row=old_is_row)
    if kind == "D":
        oid = reader.int("!I")
        marker = reader.byte()
        if marker not in ("K", "O"):
            raise DecodeError("a delete without its old key or row")
        return Change("delete", oid, old=reader.tuple_data(), old_is_row=marker == "O")
    if kind == "T":
        count, options = reader.take("!iB")
        oids = tuple(reader.int("!I") for _ in range(count))
        return Truncate(oids, bool(options & 1), bool(options & 2))
    if kind in ("Y", "O", "M"):
        return Other(kind)
    raise DecodeError(f"an unknown message kind {kind!r}")
