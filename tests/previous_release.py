"""The previous release, run from its own code: what it wrote (lake, processed area, ledger,
warehouse) is what an upgrade starts from.

The release is a commit of this repository's history (:data:`PREVIOUS_RELEASE`, the last
commit that landed before this release's changes); its ``src/`` is taken with ``git
archive`` and run as the package ``totes`` in a subprocess, ahead of the installed one on
the path. A clone without that commit (a shallow one) cannot run it: the tests that need it
are skipped, with the reason.
"""
from __future__ import annotations

import os
import subprocess  # nosec B404 (git and this interpreter, fixed arguments)
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from support import REPO

#: The release before change data capture and the architecture step (landed 2026-12-02).
PREVIOUS_RELEASE = "b52e2de"


def unpack(target: Path, release: str = PREVIOUS_RELEASE) -> Path:
    """``src/`` and ``config/`` of ``release`` under ``target``, with ``target/path/totes``
    linking to its ``src``; returns the folder to put first on ``PYTHONPATH``.

    Skips the test when the commit is not in this clone."""
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{release}^{{commit}}"],
                           capture_output=True)  # nosec B603 B607
    if found.returncode != 0:
        pytest.skip(f"the previous release ({release}) is not in this clone's history "
                    "(a shallow clone?): the upgrade tests need it")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", release,
                              "src", "config"], capture_output=True,
                             check=True).stdout  # nosec B603 B607
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    path = target / "path"
    path.mkdir()
    (path / "totes").symlink_to(target / "src")
    return path


def run(path: Path, arguments: list[str], env: dict,
        exit_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """``totes <arguments>`` of the previous release (``path`` from :func:`unpack`).

    Raises:
        AssertionError: it exited with a code not in ``exit_codes`` (its output is in the
            message)."""
    environment = {**os.environ, **env, "PYTHONPATH": str(path),
                   "TOTES_TEST_RELEASE_SRC": str((path / "totes").resolve())}
    program = ("import os, totes; from totes.cli import main; "
               "assert os.path.dirname(os.path.realpath(totes.__file__)) == "
               "os.environ['TOTES_TEST_RELEASE_SRC'], totes.__file__; main()")
    done = subprocess.run(  # nosec B603 (this interpreter, fixed arguments)
        [sys.executable, "-c", program, *arguments], capture_output=True, text=True,
        env=environment)
    assert done.returncode in exit_codes, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    return done
