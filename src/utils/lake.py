"""Lake and processed-area storage: a local directory or ``s3://bucket/prefix``, one interface.

Keys follow the contract of ARCHITECTURE.md: ``<prefix>/YYYY/MM/DD/HHMMSSffffff.<ext>``, the
timestamp being a batch's high watermark in data time (UTC, microseconds). Keys sort
lexicographically in time order, so the newest key is found by walking the date hierarchy in
descending order, one small listing per level (pyarrow pages through S3 listings itself): the
cost does not grow with the number of batches.

Objects are written once, atomically, and never overwritten: a Parquet file is first written
to a staging file, then published under its key in one step (a hard link on a local disk, one
PUT or completed multipart upload on S3). Publishing a key that exists raises ``LakeError``.

S3 settings come from the environment, as for every AWS client: credentials and
``AWS_REGION``/``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for
an S3-compatible endpoint (an emulator in tests).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta
from typing import Iterator, Optional

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from totes.utils.errors import ConfigError, LakeError, StorageUnavailable

_LEVELS = (re.compile(r"^\d{4}$"), re.compile(r"^\d{2}$"), re.compile(r"^\d{2}$"))
_KEY_TIME_FORMAT = "%Y/%m/%d/%H%M%S%f"


def key_time(key: str) -> datetime:
    """The timestamp a key encodes: ``sales_order/2024/11/15/144010123000.parquet`` →
    ``datetime(2024, 11, 15, 14, 40, 10, 123000)`` (naive, UTC)."""
    parts = key.rsplit(".", 1)[0].split("/")[-4:]
    return datetime.strptime("/".join(parts), _KEY_TIME_FORMAT)


def _s3_filesystem() -> pafs.S3FileSystem:
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        options.update(endpoint_override=rest or scheme, scheme=scheme if rest else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


class Lake:
    """One storage area (the ingest lake or the processed area) rooted at ``uri``.

    ``uri`` is a local directory (created when absent) or ``s3://bucket[/prefix]``. Keys are
    relative to the root and use ``/``.

    Raises:
        ConfigError: the URI has an unsupported scheme.
    """

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        if self.uri.startswith("s3://"):
            self.fs = _s3_filesystem()
            self.root = self.uri[len("s3://"):]
            self.is_local = False
        elif "://" in self.uri and not self.uri.startswith("file://"):
            raise ConfigError(f"lake URI {uri!r}: use a local directory or s3://bucket/prefix")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(self.uri.removeprefix("file://"))
            os.makedirs(self.root, exist_ok=True)
            self.is_local = True

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    def path(self, key: str) -> str:
        """The filesystem path of ``key`` (bucket/prefix/key on S3)."""
        return f"{self.root}/{key}"

    # ---- keys ---------------------------------------------------------------------------
    @staticmethod
    def key_for(prefix: str, moment: datetime, ext: str = "parquet") -> str:
        """``<prefix>/YYYY/MM/DD/HHMMSSffffff.<ext>`` for ``moment`` (naive UTC)."""
        return f"{prefix}/{moment.strftime(_KEY_TIME_FORMAT)}.{ext}"

    def _list(self, rel: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.path(rel).rstrip("/"), allow_not_found=True)
        try:
            return self.fs.get_file_info(selector)
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {self.uri}/{rel}: {exc}") from exc

    def _walk_descending(self, prefix: str, ext: str, stop_at: Optional[str]) -> Iterator[str]:
        """Keys under ``prefix`` newest first, skipping every folder whose keys are all
        ``<= stop_at`` (a key under the same prefix)."""
        def walk(rel: str, depth: int) -> Iterator[str]:
            infos = self._list(rel)
            if depth < len(_LEVELS):
                names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                                and _LEVELS[depth].match(i.base_name)), reverse=True)
                for name in names:
                    sub = f"{rel}{name}/"
                    if stop_at is not None and sub < stop_at[:len(sub)]:
                        return
                    yield from walk(sub, depth + 1)
            else:
                pattern = re.compile(r"^\d{12}\." + re.escape(ext) + "$")
                names = sorted((i.base_name for i in infos if i.type == pafs.FileType.File
                                and pattern.match(i.base_name)), reverse=True)
                for name in names:
                    yield f"{rel}{name}"
        return walk(f"{prefix}/", 0)

    def newest_key(self, prefix: str, ext: str = "parquet") -> Optional[str]:
        """The newest key under ``prefix`` (None if there is none): four small listings."""
        return next(self._walk_descending(prefix, ext, None), None)

    def keys_after(self, prefix: str, after: Optional[str], ext: str = "parquet") -> list[str]:
        """Keys under ``prefix`` newer than ``after`` (all when None), oldest first. Only the
        folders that can hold newer keys are listed: the work follows the number of new keys."""
        newer = []
        for key in self._walk_descending(prefix, ext, after):
            if after is not None and key <= after:
                break
            newer.append(key)
        return newer[::-1]

    def next_key(self, prefix: str, moment: datetime, ext: str = "parquet") -> str:
        """The key for a batch whose high watermark is ``moment``: its own time, or one
        microsecond past the newest existing key when that is not later, so that two batches
        never share a key and keys stay in order. (The exact watermark is kept in the
        object's metadata, so this offset never moves a watermark.)"""
        newest = self.newest_key(prefix, ext)
        if newest is not None and key_time(newest) >= moment:
            moment = key_time(newest) + timedelta(microseconds=1)
        return self.key_for(prefix, moment, ext)

    # ---- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging_file(self) -> Iterator[str]:
        """A local path to write an object to before :meth:`publish`; removed afterwards."""
        if self.is_local:
            folder = os.path.join(self.root, ".staging")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{uuid.uuid4().hex}.partial")
            try:
                yield path
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        else:
            folder = tempfile.mkdtemp(prefix="totes-")
            try:
                yield os.path.join(folder, "object.partial")
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged_path: str, key: str) -> int:
        """Publish the staged file under ``key`` in one atomic step; returns its size in bytes.

        Raises:
            LakeError: ``key`` exists already (objects are never overwritten).
            StorageUnavailable: the store could not be written.
        """
        size = os.path.getsize(staged_path)
        if self.is_local:
            target = self.path(key)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(staged_path, target)  # fails if target exists: no overwrite, no race
            except FileExistsError:
                raise LakeError(f"{self.uri}/{key} exists; objects are never overwritten") \
                    from None
            return size
        if self.exists(key):
            raise LakeError(f"{self.uri}/{key} exists; objects are never overwritten")
        try:
            pafs.copy_files(staged_path, self.path(key), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {self.uri}/{key}: {exc}") from exc
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        """Write a small object (a JSON manifest) atomically under a new ``key``."""
        with self.staging_file() as staged:
            with open(staged, "wb") as out:
                out.write(data)
            return self.publish(staged, key)

    # ---- reading ------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {self.uri}/{key}: {exc}") from exc

    def read_bytes(self, key: str) -> bytes:
        """The whole content of a small object.

        Raises:
            LakeError: ``key`` does not exist.
        """
        try:
            with self.fs.open_input_stream(self.path(key)) as stream:
                return stream.read()
        except FileNotFoundError:
            raise LakeError(f"{self.uri}/{key} does not exist") from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {self.uri}/{key}: {exc}") from exc

    def parquet_file(self, key: str) -> pq.ParquetFile:
        """Open ``key`` as a Parquet file, to read its footer or stream its row groups.

        Raises:
            LakeError: ``key`` does not exist or is not Parquet.
        """
        try:
            return pq.ParquetFile(self.fs.open_input_file(self.path(key)))
        except FileNotFoundError:
            raise LakeError(f"{self.uri}/{key} does not exist") from None
        except OSError as exc:
            raise LakeError(f"cannot read {self.uri}/{key} as Parquet: {exc}") from exc
