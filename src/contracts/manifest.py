"""The processed area's contract: transform batches, committed by a manifest, read by load.

Layout of the processed area (a directory or ``s3://bucket/prefix``):

* ``<warehouse_table>/YYYY/MM/DD/HHMMSSffffff.parquet``: the rows of one warehouse table in
  one batch, typed as the warehouse columns (:mod:`totes.contracts.star_schema`).
* ``_state/<source_table>/YYYY/MM/DD/HHMMSSffffff.parquet``: the latest row of every key of a
  reference table (:data:`totes.contracts.source_tables.REFERENCE_TABLES`), so that a change on
  either side of a dimension's join refreshes it without rereading the lake's history.
* ``_retry/<source_table>/YYYY/MM/DD/HHMMSSffffff.parquet``: the quarantined row versions a
  batch put through the rules again (``totes quarantine --retry``), so that a batch is a
  function of files it names: its lake files, its retry files and the previous batch's state.
* ``_manifests/YYYY/MM/DD/HHMMSSffffff.json``: written last, it commits one batch
  (:class:`Manifest`). A batch is the set of files its manifest names; files no manifest
  names (a transform that failed midway) are never read.
* ``_repairs/YYYY/MM/DD/HHMMSSffffff.json``: a batch rebuilt from the lake (``totes transform
  --rebuild``, after a processed file was damaged): :class:`Repair`, which names the new file
  of each file of the batch. Whoever reads a manifest reads it through every repair
  (:func:`repaired`), so the batch keeps its key, its place and its load record.

Manifest keys are named after the batch's time (the newest lake key it took, data time), so
their order is the batches' order. A manifest is created once (a conditional create) and
never changed.
"""
from __future__ import annotations

import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from totes.contracts.errors import ConfigError, LakeError
from totes.contracts.stage_results import TableOutput

MANIFESTS = "_manifests"
STATE = "_state"
RETRY = "_retry"
REPAIRS = "_repairs"
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
    * ``retried``: per source table, the file of the quarantined row versions this batch put
      through the rules again (absent before this field existed: such a batch cannot be
      rebuilt exactly unless it retried nothing).
    """

    model_config = ConfigDict(extra="forbid")

    batch_time: str
    lake: dict[str, str]
    state: dict[str, str]
    source_files: dict[str, list[str]]
    outputs: list[TableOutput]
    quarantined: dict[str, int] = {}
    quarantine: list[str] = []
    retried: dict[str, str] = {}

    def output(self, table: str) -> Optional[TableOutput]:
        """The processed file of warehouse ``table`` in this batch, if it has one."""
        return next((o for o in self.outputs if o.table == table), None)


class Repair(BaseModel):
    """A batch rebuilt from the lake, as JSON::

        {"batch": "_manifests/2024/11/15/144010123000.json",
         "replaced": {"fact_sales_order/2024/11/15/144010123000.parquet":
                      "fact_sales_order/2024/11/15/144010123001.parquet", ...},
         "rebuilt_at": "2026-12-04 18:30:00.000000", "reason": "..."}

    ``replaced`` maps each file of the batch (outputs, state, quarantine and retry files) to
    the file rebuilt from the same inputs, checked to hold as many rows."""

    model_config = ConfigDict(extra="forbid")

    batch: str
    replaced: dict[str, str]
    rebuilt_at: str
    reason: str = ""


def repaired(manifest: Manifest, repairs: list[Repair]) -> Manifest:
    """``manifest`` with every file key that ``repairs`` (oldest first) replaced swapped for
    its replacement (the newest repair of a file wins); unchanged without repairs."""
    replaced: dict[str, str] = {}
    for repair in repairs:
        replaced.update(repair.replaced)
    if not replaced:
        return manifest

    def swap(key: str) -> str:
        return replaced.get(key, key)
    return manifest.model_copy(update={
        "outputs": [o.model_copy(update={"key": swap(o.key)}) for o in manifest.outputs],
        "state": {t: swap(k) for t, k in manifest.state.items()},
        "quarantine": [swap(k) for k in manifest.quarantine],
        "retried": {t: swap(k) for t, k in manifest.retried.items()}})


def state_prefix(table: str) -> str:
    """``_state/<table>``: where the latest rows of reference ``table`` are kept."""
    return f"{STATE}/{table}"


def retry_prefix(table: str) -> str:
    """``_retry/<table>``: where a batch keeps the quarantined versions of ``table`` it
    retried."""
    return f"{RETRY}/{table}"


def check_manifest_key(key: str) -> None:
    """Check that ``key`` is a manifest key.

    Raises:
        ConfigError: it is not (``_manifests/YYYY/MM/DD/HHMMSSffffff.json``).
    """
    if not _MANIFEST_KEY.match(key):
        raise ConfigError(f"{key!r} is not a batch manifest key: they look like "
                          f"{MANIFESTS}/2024/11/15/144010123000.{MANIFEST_EXT}")


def parse_manifest(data: bytes, where: str) -> Manifest:
    """The manifest whose JSON is ``data`` (``where`` names it in messages).

    Raises:
        LakeError: not JSON, or a field is missing or wrong.
    """
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: "
                             f"{e['msg'].lower()}" for e in exc.errors()[:3])
        raise LakeError(f"{where} is not a batch manifest: {problems}") from None
