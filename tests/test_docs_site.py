"""The documentation site (``make docs``): it builds with ``--strict``, its reference pages are
the code's (every command, every setting, every star-schema table), nothing on it comes from
another host, and in a real headless Chromium with no network the ER diagram is drawn."""
from __future__ import annotations

import os
import re
import shutil
import subprocess  # nosec B404: the project's own tools, fixed arguments
import sys
from pathlib import Path

import pytest
import typer.main

from support import REPO
from totes.cli import app
from totes.contracts.star_schema import TABLES
from totes.utils.settings import Settings, variable

MERMAID = REPO / "build" / "docs-node" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not MERMAID.exists():
        pytest.skip("the docs site needs Mermaid from npm: `make docs` (or `make test`) "
                    "installs it into build/docs-node")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(  # nosec B603: fixed arguments
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
         str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_site_builds_strictly_with_the_codes_reference(site):
    cli = (site / "reference" / "cli.html").read_text()
    command = typer.main.get_command(app)
    for name in command.commands:  # every command and sub-command has its section
        assert f"totes {name}</code>" in cli, name
    assert "totes cdc init</code>" in cli and "totes embedded start</code>" in cli
    assert "--source-url" in cli and "--json" in cli

    configuration = (site / "configuration.html").read_text()
    for name in Settings.model_fields:
        shown = variable(name)
        if shown.startswith("TOTES_"):
            assert shown in configuration, shown
    assert "<code>max_changes_per_run</code>" in configuration

    model = (site / "reference" / "warehouse-model.html").read_text()
    assert '<div class="diagram">' in model
    for table in TABLES.values():
        assert f"    {table.name} {{" in model, table.name

    nav = (site / "index.html").read_text()
    for section in ("Tutorial", "How-to", "Reference", "Explanation"):
        assert section in nav, section


def test_nothing_on_the_site_comes_from_another_host(site):
    loaded = re.compile(r"<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=\"(https?:)?//", re.I)
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    assert [str(p.relative_to(site)) for p in pages if loaded.search(p.read_text())] == []
    for script in site.rglob("*.js"):  # Material's bundle names the CDN only as a fallback
        text = script.read_text(errors="ignore")
        if "unpkg.com/mermaid" in text:
            assert script.name.startswith("bundle."), script
    assert (site / "assets" / "javascripts" / "mermaid.min.js").stat().st_size > 1_000_000


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("the site's browser test needs Chromium (scripts/install_test_packages.sh "
                "installs Debian's chromium where it can)")


@pytest.mark.browser
def test_the_er_diagram_renders_as_a_drawing_with_no_network(site, tmp_path):
    browser = chromium()
    page = site / "reference" / "warehouse-model.html"
    offline = ["--proxy-server=http://127.0.0.1:9",  # nothing answers there
               "--host-resolver-rules=MAP * ~NOTFOUND"]  # and no name resolves
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=20000", *offline]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()],  # nosec B603: fixed
                         capture_output=True, text=True, timeout=120, check=True).stdout

    drawn = re.search(r'<div class="diagram"[^>]*data-processed="true"[^>]*>(.*?</svg>)',
                      dom, re.S)
    assert drawn, "Mermaid did not process the diagram"
    svg = drawn.group(1)
    assert '<svg' in svg and 'aria-roledescription="er"' in svg
    assert "Syntax error" not in svg
    entities = re.findall(r'<g class="node [^"]*" id="[\w-]*?-entity-(\w+)-\d+"', svg)
    assert sorted(set(entities)) == sorted(t.name for t in TABLES.values())
    relationships = len(re.findall(r'class="[^"]*relationshipLine', svg))
    assert relationships == sum(len(t.foreign_keys) for t in TABLES.values())

    shot = tmp_path / "er.png"
    subprocess.run([*common, "--window-size=1300,1300", f"--screenshot={shot}",  # nosec
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    kept = REPO / "build" / "docs-er-test.png"  # the last run's screenshot, to look at
    kept.parent.mkdir(exist_ok=True)
    shutil.copy(shot, kept)
