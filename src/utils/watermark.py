"""The lake's watermark contract: what a batch file says about where it starts and ends.

A batch of a source table holds the row versions whose ``(watermark_column, primary_key)``
comes after the previous batch's high watermark, in that order. Each lake file keeps, in its
Parquet footer's key-value metadata (UTF-8 JSON):

* ``totes.high_watermark``: the pair of its last row, ``{"timestamp": "2024-11-15
  14:40:10.123000", "primary_key": 11187}``: the next batch starts after it;
* ``totes.low_watermark``: the high watermark of the batch before it, or ``null`` for the
  first batch.

The timestamp is ISO 8601 with a space and microseconds, as PostgreSQL prints it; a
``timestamptz`` watermark carries its offset (``+00:00``). The key of the file is named after
the high watermark's moment in UTC (:meth:`Watermark.moment`). The low watermark of the next
run is read back from the newest key of the table: four small listings and one footer,
whatever the history. The lake is the truth: nothing else stores a watermark.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from totes.utils.errors import LakeError
from totes.utils.lake import Lake

HIGH_WATERMARK_KEY = b"totes.high_watermark"
LOW_WATERMARK_KEY = b"totes.low_watermark"


class Watermark(BaseModel):
    """One position in a table's ``(watermark_column, primary_key)`` order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp: str
    primary_key: int

    @classmethod
    def of_last_row(cls, batch: pa.RecordBatch, watermark_column: str,
                    primary_key: str) -> "Watermark":
        """The watermark of the last row of ``batch``."""
        last = batch.slice(batch.num_rows - 1)
        moment = last.column(watermark_column)[0].as_py()
        return cls(timestamp=moment.isoformat(sep=" ", timespec="microseconds"),
                   primary_key=last.column(primary_key)[0].as_py())

    def moment(self) -> datetime:
        """The timestamp as a naive UTC datetime (what the batch's key is named after)."""
        moment = datetime.fromisoformat(self.timestamp)
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        return moment


def footer_metadata(high: Watermark, low: Optional[Watermark]) -> dict[bytes, str]:
    """The key-value metadata a batch file's writer adds to its footer."""
    return {HIGH_WATERMARK_KEY: high.model_dump_json(),
            LOW_WATERMARK_KEY: low.model_dump_json() if low is not None else "null"}


def read_footer(lake: Lake, key: str) -> tuple[Watermark, Optional[Watermark]]:
    """The ``(high, low)`` watermarks kept in the footer of the batch file at ``key``.

    Raises:
        LakeError: the file has no or a malformed ``totes.high_watermark`` (it was not written
            by ingest).
        StorageUnavailable: the lake could not be read (retry).
    """
    metadata = lake.parquet_file(key).metadata.metadata or {}
    if HIGH_WATERMARK_KEY not in metadata:
        raise LakeError(f"{lake.describe(key)} has no totes.high_watermark metadata; "
                        "it was not written by ingest")
    try:
        high = Watermark.model_validate_json(metadata[HIGH_WATERMARK_KEY])
        low_json = json.loads(metadata.get(LOW_WATERMARK_KEY, b"null"))
        low = Watermark.model_validate(low_json) if low_json is not None else None
    except (ValidationError, ValueError) as exc:
        raise LakeError(f"{lake.describe(key)} has a malformed watermark in its footer: "
                        f"{exc}") from None
    return high, low


def read_high_watermark(lake: Lake, table: str) -> Optional[Watermark]:
    """The high watermark of the newest batch of ``table`` in ``lake``, or None when the table
    has no batch yet (first run: everything).

    Raises:
        LakeError: the newest file has no or a malformed watermark.
        StorageUnavailable: the lake could not be read (retry).
    """
    key = lake.newest_key(table)
    return None if key is None else read_footer(lake, key)[0]
