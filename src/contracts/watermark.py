"""The lake's watermark contract: what a batch file says about where it starts and ends.

A batch of a source table holds row versions in ``(watermark_column, primary_key)`` order.
Each lake file keeps, in its Parquet footer's key-value metadata (UTF-8 JSON):

* ``totes.high_watermark``: the table's incremental watermark *after* this batch: the pair of
  its last row for an incremental batch or a reingest, ``{"timestamp": "2024-11-15
  14:40:10.123000", "primary_key": 11187}`` (or ``{"integer": 1200, "primary_key": 1200}``
  for an integer watermark column); for a backfill, which never moves it, the watermark it
  found; for a full snapshot, the greatest pair it holds (``null`` without a watermark).
  The next incremental batch starts after it.
* ``totes.low_watermark``: the watermark the batch started after (``null``: the beginning).
* ``totes.mode``: ``incremental``, ``full``, ``reingest`` or ``backfill`` (absent in files of
  the first release: ``incremental``).
* ``totes.range``: for a backfill, ``{"from": "...", "to": "..."}``: the batch holds exactly
  the versions whose watermark is in ``[from, to)``.
* ``totes.cdc``: for a batch of a ``cdc`` table, how far the change log is read
  (:mod:`totes.contracts.cdc`).
* ``totes.schema``: the source schema the batch was read with and the table's schema
  version (:mod:`totes.contracts.source_schema`; absent before it existed: version 1).
* ``totes.parts``: for a partitioned batch, whose file is then a commit with no rows, the
  parts that hold its rows: ``[{"key": "<table>/_parts/<batch>/part-00001-of-00004.parquet",
  "rows": 500000, "lower": null, "upper": "500001"}, ...]`` (:func:`batch_files`).

A timestamp is ISO 8601 with a space and microseconds, as PostgreSQL prints it; a
``timestamptz`` watermark carries its offset (``+00:00``). Keys are created in commit order
(each one after the newest, :meth:`totes.utils.lake.Lake.next_key`): a batch's key is named
after its high watermark's moment in UTC, or one microsecond past the newest key when that is
not later (so a backfill, which carries the watermark it found, follows the newest), or after
the extract's moment when the batch has no timestamp watermark (an integer watermark, a full
snapshot without one). So the newest key always holds the table's current watermark, read
with four small listings and one footer, whatever the history. The lake is the truth: nothing
else stores a watermark.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
from pydantic import (BaseModel, ConfigDict, ValidationError, model_serializer,
                      model_validator)

from totes.contracts.cdc import CdcFooter, cdc_footer
from totes.contracts.errors import LakeError
from totes.contracts.source_schema import SchemaRecord, parse_schema_record

HIGH_WATERMARK_KEY = b"totes.high_watermark"
LOW_WATERMARK_KEY = b"totes.low_watermark"
MODE_KEY = b"totes.mode"
RANGE_KEY = b"totes.range"
PARTS_KEY = b"totes.parts"


class Watermark(BaseModel):
    """One position in a table's ``(watermark_column, primary_key)`` order: a ``timestamp``
    (text) or an ``integer`` watermark value, and the primary key that breaks ties."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp: Optional[str] = None
    integer: Optional[int] = None
    primary_key: int

    @model_validator(mode="after")
    def _one_value(self) -> "Watermark":
        if (self.timestamp is None) == (self.integer is None):
            raise ValueError("a watermark has a timestamp or an integer, not both or neither")
        return self

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}

    @classmethod
    def of_row(cls, batch, i: int, watermark_column: str, primary_key: str) -> "Watermark":
        """The watermark of row ``i`` of ``batch`` (a record batch or table)."""
        value = batch.column(watermark_column)[i].as_py()
        key = batch.column(primary_key)[i].as_py()
        if isinstance(value, datetime):
            return cls(timestamp=value.isoformat(sep=" ", timespec="microseconds"),
                       primary_key=key)
        return cls(integer=value, primary_key=key)

    @classmethod
    def of_last_row(cls, batch, watermark_column: str, primary_key: str) -> "Watermark":
        """The watermark of the last row of ``batch``."""
        return cls.of_row(batch, batch.num_rows - 1, watermark_column, primary_key)

    @classmethod
    def of_last_readable_row(cls, batch, watermark_column: str,
                             primary_key: str) -> Optional["Watermark"]:
        """The watermark of the last row of ``batch`` whose watermark value was read (a
        source value the lake cannot hold, a timestamp at -infinity, is NULL); None when no
        row's was."""
        import pyarrow.compute as pc

        values = batch.column(watermark_column)
        if not values.null_count:
            return cls.of_last_row(batch, watermark_column, primary_key)
        readable = pc.indices_nonzero(pc.is_valid(values))
        if not len(readable):
            return None
        return cls.of_row(batch, readable[-1].as_py(), watermark_column, primary_key)

    @property
    def value(self) -> str:
        """The watermark value as text, to bind in SQL."""
        return self.timestamp if self.timestamp is not None else str(self.integer)

    def moment(self) -> Optional[datetime]:
        """A timestamp watermark as a naive UTC datetime (what an incremental batch's key is
        named after); None for an integer watermark."""
        if self.timestamp is None:
            return None
        moment = datetime.fromisoformat(self.timestamp)
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        return moment


class Footer(BaseModel):
    """What a lake file's footer says of its batch (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    high: Optional[Watermark]
    low: Optional[Watermark] = None
    mode: str = "incremental"
    range: Optional[dict[str, str]] = None
    parts: Optional[list[dict]] = None
    cdc: Optional[CdcFooter] = None
    source_schema: Optional[SchemaRecord] = None

    @property
    def schema_version(self) -> int:
        """The table's schema version this batch was written with (1 without a record)."""
        return self.source_schema.version if self.source_schema is not None else 1


def footer_metadata(high: Optional[Watermark], low: Optional[Watermark],
                    mode: str = "incremental",
                    backfill_range: Optional[dict[str, str]] = None,
                    parts: Optional[list[dict]] = None) -> dict[bytes, str]:
    """The key-value metadata a batch file's writer adds to its footer."""
    metadata = {HIGH_WATERMARK_KEY: high.model_dump_json() if high is not None else "null",
                LOW_WATERMARK_KEY: low.model_dump_json() if low is not None else "null",
                MODE_KEY: json.dumps(mode)}
    if backfill_range is not None:
        metadata[RANGE_KEY] = json.dumps(backfill_range)
    if parts is not None:
        metadata[PARTS_KEY] = json.dumps(parts)
    return metadata


def parse_footer(metadata: Optional[dict], where: str) -> Footer:
    """What a batch file's footer key-value ``metadata`` says (see the module docstring);
    ``where`` names the file in messages. Files without ``totes.mode`` (the first release)
    read as ``incremental``.

    Raises:
        LakeError: no or a malformed ``totes.high_watermark`` (the file was not written by
            ingest).
    """
    metadata = metadata or {}
    if HIGH_WATERMARK_KEY not in metadata:
        raise LakeError(f"{where} has no totes.high_watermark metadata; "
                        "it was not written by ingest")
    try:
        return Footer(high=json.loads(metadata[HIGH_WATERMARK_KEY]),
                      low=json.loads(metadata.get(LOW_WATERMARK_KEY, b"null")),
                      mode=json.loads(metadata.get(MODE_KEY, b'"incremental"')),
                      range=json.loads(metadata.get(RANGE_KEY, b"null")),
                      parts=json.loads(metadata.get(PARTS_KEY, b"null")),
                      cdc=cdc_footer(metadata, where),
                      source_schema=parse_schema_record(metadata, where))
    except (ValidationError, ValueError, TypeError) as exc:
        raise LakeError(f"{where} has a malformed watermark in its footer: {exc}") from None


def part_keys(footer: Footer, key: str) -> list[str]:
    """The files that hold the rows of the batch at ``key`` whose footer is ``footer``: its
    parts for a partitioned batch (whose own file has no rows), else ``[key]``."""
    return [part["key"] for part in footer.parts] if footer.parts is not None else [key]


def highest(marks) -> Optional[Watermark]:
    """The greatest of ``marks`` in ``(value, primary key)`` order, None when there is none."""
    found = [mark for mark in marks if mark is not None]
    return max(found, key=_order) if found else None


def greatest(batch: pa.RecordBatch, watermark_column: str, primary_key: str,
             current: Optional[Watermark]) -> Optional[Watermark]:
    """The greater of ``current`` and the greatest ``(watermark, key)`` pair of ``batch``
    (for a full snapshot, which is not in watermark order)."""
    if batch.num_rows == 0:
        return current
    import pyarrow.compute as pc

    values = batch.column(watermark_column)
    top = pc.max(values)
    if not top.is_valid:
        return current
    among = pc.indices_nonzero(pc.fill_null(pc.equal(values, top), False))
    keys = pc.take(batch.column(primary_key), among)
    i = among[pc.index(keys, pc.max(keys)).as_py()].as_py()
    candidate = Watermark.of_row(batch, i, watermark_column, primary_key)
    if current is None:
        return candidate
    return candidate if _order(candidate) > _order(current) else current


def _order(mark: Watermark):
    return ((mark.moment() or datetime.min) if mark.timestamp is not None else mark.integer,
            mark.primary_key)
