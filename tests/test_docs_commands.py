"""Documentation that cannot drift: every ``totes`` command block of the README and docs/ is
run against the embedded database, and the output the page shows must be what the command
prints today.

A block is marked as runnable by its language, ``console`` (a shell session): each line
``$ totes …`` is a command, the lines after it (up to the next ``$``) its output. The blocks
of one page run in order in one fresh workspace (``TOTES_HOME`` of their own, the embedded
source seeded with the real snapshot, the project's config/pipeline.yaml), each command must
exit 0, and its standard output must match the page after masking what changes from run to
run: clock times, durations (``1.3 s``), run ids, and the workspace's path (shown as
``/home/me/totes``). Tables are compared word by word, so a cell wrapped at another width
still matches; a line ``…`` stands for any number of lines. Command blocks that cannot run
here (terraform, aws, make, psql, placeholders, no output shown, or a console block under
``<!-- not run: REASON -->``) are listed by a skipped test per page, with each block's place
and first command or reason.

``TOTES_DOCS_SHOW=1`` prints each command's actual output (for writing a page).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess  # nosec B404: the project's own command, fixed arguments
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import REPO

#: The workspace as the pages show it; the test's own is a path of the same length, so that
#: a path a table folds is folded at the same place.
SHOWN_HOME = "/home/me/totes"
FENCE = re.compile(r"^(?:<!-- not run: ([^>]*) -->\n)?```(console|sh|bash|shell)[^\n]*\n(.*?)^```",
                   re.M | re.S)
BOX = re.compile(r"[│┃┏┓┗┛┡┩├┤┼╇┳┻━─└┘┌┐┬┴╋═║╔╗╚╝╞╡╪]")
MASKS = (
    (re.compile(r"run-\d{8}T\d{6}-[0-9a-f]{8}"), "<run id>"),
    (re.compile(r"(?<!\d{4}-\d{2}-\d{2} )\b\d{2}:\d{2}:\d{2}\b(?![.\d])"), "<time>"),
    (re.compile(r"\b\d[\d,]*(?:\.\d+)? s\b"), "<seconds>"),
)


@dataclass
class Block:
    page: str
    line: int
    language: str
    reason: str = ""  # why a console block is not run (<!-- not run: REASON --> above it)
    commands: list[tuple[str, list[str]]] = field(default_factory=list)  # command, output

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.language == "console" and not self.reason and bool(self.commands) and all(
            re.match(r"totes [\w-]", command) and "<" not in command
            for command, _ in self.commands)


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The command blocks of one page, in order."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        block = Block(str(path.relative_to(REPO)), text.count("\n", 0, match.start()) + 1,
                      match.group(2), match.group(1) or "")
        for line in match.group(3).splitlines():
            if block.language != "console":
                command = line.split("#", 1)[0].strip()
                if command:
                    block.commands.append((command, []))
            elif line.startswith("$ "):
                block.commands.append((line[2:].strip(), []))
            elif block.commands:
                block.commands[-1][1].append(line)
        if block.commands:
            found.append(block)
    return found


def words(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    for pattern, mask in MASKS:
        text = pattern.sub(mask, text)
    return BOX.sub(" ", text).split()


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` (lines) is ``expected`` (lines, ``…`` for any lines), word by word."""
    segments, current = [], []
    for line in expected:
        if line.strip() == "…":
            segments.append(current)
            current = []
        else:
            current.append(line)
    segments.append(current)
    got = words(actual)
    if len(segments) == 1:
        return words(segments[0]) == got
    first, *middle, last = [words(s) for s in segments]
    if got[:len(first)] != first or (last and got[len(got) - len(last):] != last):
        return False
    at, end = len(first), len(got) - len(last)
    for segment in middle:
        for start in range(at, end - len(segment) + 1):
            if got[start:start + len(segment)] == segment:
                at = start + len(segment)
                break
        else:
            return False
    return at <= end


RUNNABLE = [(p, [b for b in blocks(p) if b.runnable]) for p in pages()]
NOT_RUN = [(p, [b for b in blocks(p) if not b.runnable]) for p in pages()]


@pytest.mark.parametrize("path,runnable", [(p, b) for p, b in RUNNABLE if b],
                         ids=[str(p.relative_to(REPO)) for p, b in RUNNABLE if b])
def test_the_commands_a_page_shows_print_what_it_shows(path, runnable):
    home = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # /tmp/tXXXXXXXX
    assert len(str(home)) == len(SHOWN_HOME), home
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    env.update(TOTES_HOME=str(home / ".totes"), COLUMNS="100", NO_COLOR="1")
    totes = str(Path(sys.executable).parent / "totes")
    failures = []
    try:
        for block in runnable:
            for command, expected in block.commands:
                done = subprocess.run(  # nosec B603: the project's own command
                    [totes, *command.split()[1:]], cwd=home, env=env, capture_output=True,
                    text=True, timeout=600)
                actual = done.stdout.replace(str(home), SHOWN_HOME)
                actual = actual.replace(str(REPO), SHOWN_HOME).splitlines()
                if os.environ.get("TOTES_DOCS_SHOW"):
                    print(f"--- {block.where} $ {command} (exit {done.returncode})\n"
                          + "\n".join(actual))
                if done.returncode != 0:
                    failures.append(f"{block.where}: `{command}` exited {done.returncode}: "
                                    f"{done.stderr[-2000:]}")
                elif not matches(expected, actual):
                    failures.append(f"{block.where}: `{command}` printed (masked):\n"
                                    + " ".join(words(actual)) + "\nthe page shows:\n"
                                    + " ".join(words(expected)))
    finally:
        subprocess.run([totes, "embedded", "stop"], env=env, capture_output=True,  # nosec
                       timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("path,skipped", [(p, b) for p, b in NOT_RUN if b],
                         ids=[str(p.relative_to(REPO)) for p, b in NOT_RUN if b])
def test_command_blocks_not_run_here_are_listed(path, skipped):
    listed = "; ".join(f"{b.where} ({b.reason or b.commands[0][0][:60]})" for b in skipped)
    pytest.skip(f"not run here (needs AWS, Terraform, make, another database, or shows no "
                f"output): {listed}")


def test_the_matcher_masks_what_changes_and_nothing_else():
    shown = ["Run finished in 1.3 s: 3 new row versions (run-20261204T100000-1a2b3c4d)",
             "…", "last load: 19:04:15 │ 2024-11-15 14:20:09.952"]
    assert matches(shown, ["Run finished in 12.71 s: 3 new row versions "
                           "(run-20261205T093000-ffffffff)", "a", "b",
                           "last load: 07:00:01 ┃ 2024-11-15 14:20:09.952"])
    assert not matches(shown, ["Run finished in 1.3 s: 4 new row versions "
                               "(run-20261204T100000-1a2b3c4d)", "last load: 19:04:15 │ "
                               "2024-11-15 14:20:09.952"])
    assert not matches(shown, ["Run finished in 1.3 s: 3 new row versions "
                               "(run-20261204T100000-1a2b3c4d)", "last load: 19:04:15 │ "
                               "2024-11-15 14:20:10.952"])  # a watermark is not a time
    assert matches(["a b", "c"], ["a", "b c"]) and not matches(["a b"], ["a b c"])
