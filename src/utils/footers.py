"""Reading what the lake's batch files say about themselves: the footer of a batch
(:mod:`totes.contracts.watermark`), the files that hold its rows, and a table's current
watermark, from storage (:class:`totes.utils.lake.Lake`)."""
from __future__ import annotations

from typing import Optional

from totes.contracts.source_schema import SchemaRecord, record_of_arrow
from totes.contracts.watermark import Footer, Watermark, parse_footer, part_keys
from totes.utils.lake import Lake


def read_footer(lake: Lake, key: str) -> Footer:
    """What the footer of the batch file at ``key`` says.

    Raises:
        LakeError: the file has no or a malformed ``totes.high_watermark`` (it was not written
            by ingest).
        StorageUnavailable: the lake could not be read (retry).
    """
    return parse_footer(lake.metadata(key).metadata, lake.describe(key))


def batch_files(lake: Lake, key: str) -> list[str]:
    """The files that hold the rows of the batch at ``key``: its parts for a partitioned
    batch (whose own file has no rows), else ``[key]``.

    Raises:
        LakeError / StorageUnavailable: as :func:`read_footer`.
    """
    return part_keys(read_footer(lake, key), key)


def read_high_watermark(lake: Lake, table: str) -> Optional[Watermark]:
    """The table's incremental watermark: the high watermark in the footer of its newest
    batch, or None when the table has no batch yet (first run: everything).

    Raises:
        LakeError: the newest file has no or a malformed watermark.
        StorageUnavailable: the lake could not be read (retry).
    """
    key = lake.newest_key(table)
    return None if key is None else read_footer(lake, key).high


def read_schema_record(lake: Lake, table: str) -> Optional[SchemaRecord]:
    """The source schema of the table's newest batch (what the next batch is compared with,
    :func:`totes.contracts.source_schema.decide`): its footer's ``totes.schema``, or, for a
    batch written without one, its Parquet schema as version 1; None when the table has no
    batch yet.

    Raises:
        LakeError: the newest file's footer is malformed.
        StorageUnavailable: the lake could not be read (retry).
    """
    key = lake.newest_key(table)
    if key is None:
        return None
    footer = read_footer(lake, key)
    if footer.source_schema is not None:
        return footer.source_schema
    return record_of_arrow(lake.metadata(key).schema.to_arrow_schema())
