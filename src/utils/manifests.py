"""Reading, listing and committing the processed area's manifests
(:mod:`totes.contracts.manifest`) in storage (:class:`totes.utils.lake.Lake`)."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from totes.contracts.errors import LakeError
from totes.contracts.manifest import (MANIFESTS, MANIFEST_EXT, Manifest, check_manifest_key,
                                      parse_manifest)
from totes.utils.lake import Lake


def read_manifest(processed: Lake, key: str) -> Manifest:
    """The manifest at ``key``.

    Raises:
        ConfigError: ``key`` is not a manifest key (``_manifests/YYYY/MM/DD/HHMMSSffffff.json``).
        LakeError: the manifest is missing, is not JSON, or lacks a field.
        StorageUnavailable: the processed area could not be read (retry).
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
