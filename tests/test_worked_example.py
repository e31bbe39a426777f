"""The worked example of docs/rebuild.md, run as a developer would: the page's three diffs
applied to a copy of the code (the next release), then ``totes rebuild --table department``
of that release on a warehouse and lake the current release wrote. Every ``dim_staff`` row
gets its department's manager, history included, and the next run of the new release goes
on (its warehouse schema version migrates over the rebuilt table)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess  # nosec B404 (this interpreter, fixed arguments)
import sys
from pathlib import Path

from typer.testing import CliRunner

from support import REPO
from test_cli import home  # noqa: F401 (the fixture: a fresh embedded workspace)
from totes.cli import app
from totes.utils.postgres import Database

PAGE = REPO / "docs" / "rebuild.md"


def worked_example_diffs() -> list[tuple[str, str, str]]:
    """``(file under src/, old text, new text)`` of each diff block of the page's worked
    example, the file named in backticks in the paragraph before the block."""
    text = PAGE.read_text()
    example = text[text.index("## Worked example"):]
    found = []
    for match in re.finditer(r"`(src/[\w/]+\.py)`[^`]*?(?:`[^`]*`[^`]*?)*?```diff\n(.*?)```",
                             example, re.DOTALL):
        old, new = [], []
        for line in match.group(2).splitlines():
            marker, code = line[:1], line[1:]
            if marker in (" ", "-"):
                old.append(code)
            if marker in (" ", "+"):
                new.append(code)
        found.append((match.group(1), "\n".join(old) + "\n", "\n".join(new) + "\n"))
    return found


def next_release(folder: Path) -> Path:
    """A copy of the package with the worked example's diffs applied (importable as
    ``totes`` from ``folder``)."""
    shutil.copytree(REPO / "src", folder / "totes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path, old, new in worked_example_diffs():
        target = folder / "totes" / Path(path).relative_to("src")
        code = target.read_text()
        assert code.count(old) == 1, f"the page's diff of {path} no longer applies:\n{old}"
        target.write_text(code.replace(old, new))
    return folder


def test_the_pages_diffs_are_the_three_changes_it_names():
    assert [path for path, _, _ in worked_example_diffs()] == [
        "src/contracts/star_schema.py", "src/rules/dimensions.py", "src/load/warehouse.py"]


def test_the_worked_example_gives_every_staff_row_its_managers_history(
        home, tmp_path):  # noqa: F811 (the fixture imported above)
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--no-reconcile"])  # the current release
    assert first.exit_code == 0, first.output
    urls = json.loads(runner.invoke(app, ["embedded", "start", "--json"]).stdout)["urls"]
    source = Database.from_url("source", urls["totesys"])
    warehouse = Database.from_url("warehouse", urls["warehouse"])

    def released(*argv: str) -> dict:
        env = dict(os.environ, PYTHONPATH=str(next_release(tmp_path / "release")))
        done = subprocess.run(  # nosec B603 (this interpreter, fixed arguments)
            [sys.executable, "-c", "from totes.cli import main; main()", *argv, "--json"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    rebuilt = released("rebuild", "--table", "department")
    assert rebuilt["reconcile"]["equal"]
    assert "dim_staff" in " ".join(rebuilt["swapped"])

    with source.session("test", "reading the managers") as session:
        expected = {staff: manager for staff, manager in session.conn.run(
            "SELECT s.staff_id, d.manager FROM staff s JOIN department d "
            "USING (department_id)")}
    with warehouse.session("test", "reading dim_staff") as session:
        got = {staff: manager for staff, manager in session.conn.run(
            "SELECT staff_id, manager FROM dim_staff")}
    assert got == expected and all(got.values())

    shutil.rmtree(tmp_path / "release")
    with source.session("test", "changing a manager") as session:
        (department,), = session.conn.run("SELECT min(department_id) FROM staff")
        session.conn.run("UPDATE department SET manager = 'A. New', last_updated = now() "
                         "WHERE department_id = :d", d=department)
        staff = [s for s, in session.conn.run("SELECT staff_id FROM staff WHERE "
                                              "department_id = :d", d=department)]
    after = released("run")  # the new release goes on, and migrates the schema version
    assert after["reconcile"]["equal"]
    with warehouse.session("test", "reading dim_staff") as session:
        assert session.conn.run("SELECT DISTINCT manager FROM dim_staff WHERE staff_id = "
                                "ANY(:s)", s=staff) == [["A. New"]]
        assert session.conn.run("SELECT max(version) FROM totes.schema_version") == [[9]]
