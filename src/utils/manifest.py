"""The processed area's contract: transform batches, committed by a manifest, read by load.

Layout of the processed area (a directory or ``s3://bucket/prefix``):

* ``<warehouse_table>/YYYY/MM/DD/HHMMSSffffff.parquet``: the rows of one warehouse table in
  one batch, typed as the warehouse columns (:mod:`totes.utils.star_schema`).
* ``_state/<source_table>/YYYY/MM/DD/HHMMSSffffff.parquet``: the latest row of every key of a
  reference table (:data:`totes.utils.source_tables.REFERENCE_TABLES`), so that a change on
  either side of a dimension's join refreshes it without rereading the lake's history.
* ``_manifests/YYYY/MM/DD/HHMMSSffffff.json``: written last, it commits one batch
  (:class:`Manifest`). A batch is the set of files its manifest names; files no manifest
  names (a transform that failed midway) are never read.

Manifest keys are named after the batch's time (the newest lake key it took, data time), so
their order is the batches' order. A manifest is created once (a conditional create) and
never changed.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from totes.utils.errors import ConfigError, LakeError
from totes.utils.lake import Lake
from totes.utils.stage_results import TableOutput

log = logging.getLogger(__name__)

MANIFESTS = "_manifests"
STATE = "_state"
MANIFEST_EXT = "json"
_MANIFEST_KEY = re.compile(rf"^{MANIFESTS}/\d{{4}}/\d{{2}}/\d{{2}}/\d{{12}}\.{MANIFEST_EXT}$")


class Manifest(BaseModel):
    """The commit record of one transform batch, as JSON::

        {"batch_time": "2024-11-15 14:40:10.123000",
         "lake": {"payment": "payment/2024/11/15/144010123000.parquet", ...},
         "state": {"address": "_state/address/2024/....parquet", ...},
         "source_files": {"payment": ["payment/2024/11/15/144010123000.parquet"]},
         "outputs": [{"table": "fact_payment", "key": "fact_payment/....parquet", "rows": 12}]}

    * ``batch_time``: the newest lake key's time among ``source_files`` (UTC).
    * ``lake``: per source table, the newest lake key transformed by this batch or any before
      it; the next batch takes the lake keys after these.
    * ``state``: per reference table, the key of its latest-rows file as of this batch.
    * ``source_files``: the lake keys this batch transformed, oldest first.
    * ``outputs``: the processed files of this batch, dimensions before facts.
    * ``quarantined``: per source table, the row versions this batch held in quarantine.
    * ``quarantine``: the keys of every quarantine file so far, this batch's included
      (cumulative, as ``lake`` is): what ``totes quarantine`` reads.
    """

    model_config = ConfigDict(extra="forbid")

    batch_time: str
    lake: dict[str, str]
    state: dict[str, str]
    source_files: dict[str, list[str]]
    outputs: list[TableOutput]
    quarantined: dict[str, int] = {}
    quarantine: list[str] = []

    def output(self, table: str) -> Optional[TableOutput]:
        """The processed file of warehouse ``table`` in this batch, if it has one."""
        return next((o for o in self.outputs if o.table == table), None)


def state_prefix(table: str) -> str:
    """``_state/<table>``: where the latest rows of reference ``table`` are kept."""
    return f"{STATE}/{table}"


def read_manifest(processed: Lake, key: str) -> Manifest:
    """The manifest at ``key``.

    Raises:
        ConfigError: ``key`` is not a manifest key (``_manifests/YYYY/MM/DD/HHMMSSffffff.json``).
        LakeError: the manifest is missing, is not JSON, or lacks a field.
        StorageUnavailable: the processed area could not be read (retry).
    """
    if not _MANIFEST_KEY.match(key):
        raise ConfigError(f"{key!r} is not a batch manifest key: they look like "
                          f"{MANIFESTS}/2024/11/15/144010123000.{MANIFEST_EXT}")
    try:
        data = processed.read_bytes(key)
    except LakeError:
        if not processed.exists(key):
            raise LakeError(f"no batch {key} in {processed.uri}") from None
        raise
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: "
                             f"{e['msg'].lower()}" for e in exc.errors()[:3])
        raise LakeError(f"{processed.describe(key)} is not a batch manifest: {problems}") \
            from None


def latest_manifest(processed: Lake) -> tuple[Optional[str], Optional[Manifest]]:
    """The newest committed manifest's key and content; ``(None, None)`` before the first."""
    key = processed.newest_key(MANIFESTS, MANIFEST_EXT)
    return (None, None) if key is None else (key, read_manifest(processed, key))


def manifests_after(processed: Lake, after: Optional[str]) -> list[str]:
    """Keys of the manifests committed after ``after`` (all when None), oldest first. Only the
    folders that can hold newer keys are listed."""
    return processed.keys_after(MANIFESTS, after, MANIFEST_EXT)


def commit(processed: Lake, manifest: Manifest, moment: datetime) -> str:
    """Create the manifest of a batch whose time is ``moment``; returns its key.

    Raises:
        LakeError: another transform committed a batch under the same key first (this one
            is not committed; its files are never read).
        StorageUnavailable: the processed area could not be written (retry).
    """
    key = processed.next_key(MANIFESTS, moment, MANIFEST_EXT)
    processed.put_bytes(key, manifest.model_dump_json(indent=1).encode())
    return key
