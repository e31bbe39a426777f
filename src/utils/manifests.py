"""Reading, listing and committing the processed area's manifests
(:mod:`totes.contracts.manifest`) in storage (:class:`totes.utils.lake.Lake`)."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from pydantic import ValidationError

from totes.contracts.errors import LakeError
from totes.contracts.manifest import (MANIFESTS, MANIFEST_EXT, REPAIRS, Manifest, Repair,
                                      check_manifest_key, parse_manifest, repaired)
from totes.utils.lake import Lake


def read_manifest(processed: Lake, key: str,
                  repairs: Optional[list[Repair]] = None) -> Manifest:
    """The manifest at ``key``, read through the repairs of the processed area (``repairs``
    when the caller read them already, see :func:`read_repairs`).

    Raises:
        ConfigError: ``key`` is not a manifest key (``_manifests/YYYY/MM/DD/HHMMSSffffff.json``).
        LakeError: the manifest is missing, is not JSON, or lacks a field.
        StorageUnavailable: the processed area could not be read (retry).
    """
    manifest = read_raw_manifest(processed, key)
    return repaired(manifest, read_repairs(processed) if repairs is None else repairs)


def read_raw_manifest(processed: Lake, key: str) -> Manifest:
    """The manifest at ``key`` as it was committed (no repair applied).

    Raises:
        ConfigError / LakeError / StorageUnavailable: as :func:`read_manifest`.
    """
    check_manifest_key(key)
    try:
        data = processed.read_bytes(key)
    except LakeError:
        if not processed.exists(key):
            raise LakeError(f"no batch {key} in {processed.uri}") from None
        raise
    return parse_manifest(data, processed.describe(key))


def latest_manifest(processed: Lake) -> tuple[Optional[str], Optional[Manifest]]:
    """The newest committed manifest's key and content (repaired, see
    :func:`read_manifest`); ``(None, None)`` before the first."""
    key = processed.newest_key(MANIFESTS, MANIFEST_EXT)
    return (None, None) if key is None else (key, read_manifest(processed, key))


def read_repairs(processed: Lake) -> list[Repair]:
    """Every repair record of the processed area (``_repairs/``), oldest first: a listing
    that finds nothing where no batch was ever rebuilt.

    Raises:
        LakeError: a repair record is not one.
        StorageUnavailable: the processed area could not be read (retry).
    """
    repairs = []
    for key in processed.keys_after(REPAIRS, None, MANIFEST_EXT):
        try:
            repairs.append(Repair.model_validate_json(processed.read_bytes(key)))
        except ValidationError as exc:
            raise LakeError(f"{processed.describe(key)} is not a repair record: "
                            f"{exc.errors()[0]['msg'].lower()}") from None
    return repairs


def record_repair(processed: Lake, repair: Repair, moment: datetime) -> str:
    """Create the repair record ``repair`` (its key named after ``moment``); returns its key.

    Raises:
        LakeError / StorageUnavailable: as :func:`commit`.
    """
    key = processed.next_key(REPAIRS, moment, MANIFEST_EXT)
    processed.put_bytes(key, repair.model_dump_json(indent=1).encode())
    return key


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
    # Without retries, no "retried" field: the previous release (extra fields forbidden)
    # still reads the manifest, so that a rollback keeps working.
    processed.put_bytes(key, manifest.model_dump_json(
        indent=1, exclude=None if manifest.retried else {"retried"}).encode())
    return key
