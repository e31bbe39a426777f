"""Rebuild a committed batch's files from the lake, after a processed file was damaged.

A batch is a function of files it names: the lake files it transformed (``source_files``),
the quarantined versions it retried (``retried``) and the reference state of the batch
before it. The lake is immutable, so those inputs are still there when a processed file of
the batch is truncated or lost: :func:`rebuild` puts them through the same code
(:func:`totes.transform.run.build_batch`) into new files, checks that every table gets the
rows the manifest recorded, and records a repair (:class:`totes.contracts.manifest.Repair`)
mapping each file of the batch to its new one. Manifests are immutable: every reader reads
them through the repairs, so the batch keeps its key, its place in the load order and its
load record, and a load that failed on the damaged file loads it on its next attempt.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Optional

from totes.contracts.errors import ConfigError, LakeError
from totes.contracts.manifest import (MANIFESTS, MANIFEST_EXT, Manifest, Repair,
                                      check_manifest_key, retry_prefix, state_prefix)
from totes.contracts.quarantine import QUARANTINE, quarantine_prefix
from totes.contracts.source_tables import REFERENCE_TABLES, SOURCE_TABLES
from totes.contracts.stage_results import RebuildResult, counted
from totes.contracts.star_schema import TABLES
from totes.transform.run import build_batch
from totes.utils.lake import Lake
from totes.utils.ledger import ALL_TABLES, Ledger, new_run_id, now
from totes.utils.manifests import (read_manifest, read_raw_manifest, read_repairs,
                                   record_repair)
from totes.utils.run_tracking import skip_reason, tracked

log = logging.getLogger(__name__)


def batch_of(processed: Lake, key: str) -> str:
    """The manifest key of the batch that wrote the processed file ``key`` (``key`` itself
    when it is a manifest key): the oldest manifest that names it, read as committed.

    Raises:
        ConfigError: no batch names ``key``.
        LakeError / StorageUnavailable: the processed area could not be read.
    """
    if key.startswith(f"{MANIFESTS}/"):
        check_manifest_key(key)
        return key
    repairs = read_repairs(processed)
    replacements = {new: old for r in repairs for old, new in r.replaced.items()}
    original = replacements.get(key, key)
    for manifest_key in processed.keys_after(MANIFESTS, None, MANIFEST_EXT):
        manifest = read_raw_manifest(processed, manifest_key)
        if original in ([o.key for o in manifest.outputs] + list(manifest.state.values())
                        + manifest.quarantine + list(manifest.retried.values())):
            return manifest_key
    raise ConfigError(f"no batch in {processed.uri} names {key}: give a manifest key "
                      f"({MANIFESTS}/YYYY/MM/DD/HHMMSSffffff.json) or a file a load or "
                      "transform error named")


def rebuild(lake: Lake, processed: Lake, key: str, ledger: Optional[Ledger] = None,
            run_id: Optional[str] = None, reason: str = "") -> RebuildResult:
    """Rebuild the batch ``key`` names (a manifest key, or any file of the batch: see
    :func:`batch_of`) from the lake, under the transform lease (waited for), and record the
    repair; returns what was replaced (:class:`~totes.contracts.stage_results.RebuildResult`).

    Raises:
        ConfigError: ``key`` names no batch.
        LakeError: an input of the batch is gone or damaged too (a lake file, a retry file,
            the previous batch's state: the message names it), or the rebuild does not give
            the rows the manifest recorded (nothing is recorded then).
        StorageUnavailable: storage could not be reached (retry).
    """
    def skipped(holder) -> RebuildResult:
        raise LakeError(f"cannot rebuild now: {skip_reason(holder)}; try again when it ends")

    def summary(result: RebuildResult) -> dict:
        return {"rows": sum(result.rows.values()), "key": result.batch,
                "details": {"repair": result.repair, "replaced": result.replaced}}

    return tracked(ledger, "transform", ALL_TABLES, run_id or new_run_id(), "rebuild",
                   lambda: _rebuild(lake, processed, batch_of(processed, key), reason),
                   skipped, summary, wait=True)


def _rebuild(lake: Lake, processed: Lake, batch: str, reason: str) -> RebuildResult:
    started = time.monotonic()
    repairs = read_repairs(processed)
    committed = read_raw_manifest(processed, batch)
    current = read_manifest(processed, batch, repairs)
    earlier = [k for k in processed.keys_after(MANIFESTS, None, MANIFEST_EXT) if k < batch]
    previous = read_manifest(processed, earlier[-1], repairs) if earlier else None
    previous_committed = read_raw_manifest(processed, earlier[-1]) if earlier else None
    retry = {table: processed.read_table(file) for table, file in current.retried.items()}
    moment = datetime.fromisoformat(committed.batch_time)
    published, rows = build_batch(lake, processed, previous, committed.source_files, retry,
                                  moment)
    replaced = _replaced(committed, previous_committed, published)
    _check_rows(batch, committed, rows, published, replaced)
    repair = Repair(batch=batch, replaced=replaced, reason=reason,
                    rebuilt_at=now().isoformat(sep=" ", timespec="microseconds"))
    repair_key = record_repair(processed, repair, now().replace(tzinfo=None))
    log.warning("rebuilt batch %s from the lake: %s replaced (%s)", batch,
                counted(len(replaced), "file"), repair_key)
    return RebuildResult(batch=batch, repair=repair_key, replaced=replaced,
                         rows={name: rows[name] for name in published},
                         seconds=round(time.monotonic() - started, 3))


def _replaced(committed: Manifest, previous: Optional[Manifest],
              published: dict[str, str]) -> dict[str, str]:
    """Each file the batch wrote (``committed`` and ``previous`` as committed: the files it
    names that the batch before did not) → the rebuilt file of the same name ("" where the
    rebuild wrote none)."""
    before = previous.state if previous else {}
    own_quarantine = [k for k in committed.quarantine
                      if k not in set(previous.quarantine if previous else [])]
    files = {o.table: o.key for o in committed.outputs}
    files.update({state_prefix(t): k for t, k in committed.state.items()
                  if t in REFERENCE_TABLES and k != before.get(t)})
    files.update({retry_prefix(t): k for t, k in committed.retried.items()})
    for table in SOURCE_TABLES:
        mine = [k for k in own_quarantine if k.startswith(f"{quarantine_prefix(table)}/")]
        if mine:
            files[quarantine_prefix(table)] = mine[-1]
    return {old: published[name] for name, old in files.items() if name in published} | \
        {old: "" for name, old in files.items() if name not in published}


def _check_rows(batch: str, committed: Manifest, rows: dict[str, int],
                published: dict[str, str], replaced: dict[str, str]) -> None:
    """The rebuild gives the files and the rows the batch recorded (per warehouse table and
    per quarantine file).

    Raises:
        LakeError: it does not (the message lists the differences)."""
    recorded = {o.table: o.rows for o in committed.outputs} | {
        quarantine_prefix(t): n for t, n in committed.quarantined.items()}
    rebuilt = {name: rows[name] for name in published
               if name in TABLES or name.startswith(f"{QUARANTINE}/")}
    differ = [f"{name}: {recorded.get(name, 0):,} rows recorded, {rebuilt.get(name, 0):,} "
              "rebuilt" for name in sorted(set(recorded) | set(rebuilt))
              if recorded.get(name, 0) != rebuilt.get(name, 0)]
    missing = [f"no rebuilt file for {old}" for old, new in replaced.items() if not new]
    if differ or missing:
        raise LakeError(
            f"batch {batch} cannot be rebuilt exactly from the lake ({'; '.join(differ + missing)}"
            "): nothing was recorded. If it retried quarantined rows before batches kept "
            "them, run `totes quarantine --retry` again; otherwise reingest the tables "
            "(`totes ingest --table T --reingest`)")
