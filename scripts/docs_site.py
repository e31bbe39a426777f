"""MkDocs hooks of the documentation site (``make docs``; mkdocs.yml names this file).

What the site shows that the code defines is taken from the code when the site is built, so
the site cannot drift from it:

* the regions of a page between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` are
  replaced by what :data:`GENERATED` makes of NAME (the settings, the pipeline file's keys,
  the star schema's ER diagram); ``tests/test_docs.py`` keeps the Markdown files in the
  repository equal to the same functions, so they read the same on GitHub;
* ``reference/cli.md`` is written from the Typer application itself (Typer's own Markdown
  generator, the one ``typer ... utils docs`` runs), ``reference/warehouse-model.md`` (the ER
  diagram alone) from the star schema;
* the diagrams are drawn by Mermaid from npm (``build/docs-node``, installed by ``make
  docs``), served by the site itself: nothing is fetched from a CDN when the site is built or
  read, since it is read behind firewalls. ``docs/assets/javascripts/diagrams.js`` runs it.

Raises (a failed build): ``FileNotFoundError`` when Mermaid is not installed, naming the
command that installs it; ``ValueError`` when a page's generated region lost an end marker.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import typer
import typer.main
from mkdocs.structure.files import File
from typer.cli import get_docs_for_click

from totes.cli import app
from totes.contracts.config import CdcOptions, SchemaContractOptions
from totes.contracts.config import markdown_table as pipeline_keys
from totes.contracts.metrics import markdown_table as metrics_table
from totes.contracts.star_schema import mermaid_er_diagram
from totes.utils.settings import markdown_table as settings_table

REPO = Path(__file__).resolve().parent.parent
MERMAID = REPO / "build" / "docs-node" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
MERMAID_URI = "assets/javascripts/mermaid.min.js"

#: Marker name → the text between the markers (docs/configuration.md, docs/warehouse.md,
#: docs/observability.md).
GENERATED: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "pipeline-keys": pipeline_keys,
    "cdc-keys": lambda: pipeline_keys(CdcOptions),
    "schema-contract-keys": lambda: pipeline_keys(SchemaContractOptions),
    "er-diagram": lambda: f"```mermaid\n{mermaid_er_diagram()}\n```",
    "metrics": metrics_table,
}


def cli_reference() -> str:
    """Every command of ``totes``, its usage and options, as Markdown (from the Typer app)."""
    command = typer.main.get_command(app)
    text = get_docs_for_click(obj=command, ctx=typer.Context(command), name="totes",
                              title="Command-line reference")
    return ("<!-- Generated from the Typer application (src/cli.py) when the site is built; "
            "`totes COMMAND --help` prints the same. -->\n" + text)


def er_page() -> str:
    """The warehouse model's page: the ER diagram of every star-schema table."""
    return ("---\nhide:\n  - toc\n---\n\n# The warehouse model\n\n"
            "Every table of the star schema, its columns with their SQL types, keys (`PK`, "
            "`UK`, `FK`) and one line per foreign key, named after the fact's column; drawn "
            "from `src/contracts/star_schema.py` when the site is built. What each table "
            "holds, its grain and how it is derived: [the warehouse](../warehouse.md).\n\n"
            f"```mermaid\n{mermaid_er_diagram()}\n```\n")


def fill_generated(markdown: str, page: str) -> str:
    """``markdown`` with each generated region replaced by the code's current text."""
    for name, make in GENERATED.items():
        start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
        if start not in markdown:
            continue
        if end not in markdown:
            raise ValueError(f"{page}: <!-- {name}:start --> has no <!-- {name}:end -->")
        markdown = re.sub(re.escape(start) + ".*?" + re.escape(end),
                          lambda _: start + make() + end, markdown, flags=re.S)
    return markdown


def on_files(files, config):
    """Adds the generated CLI reference and the Mermaid bundle to the site's files."""
    if not MERMAID.exists():
        raise FileNotFoundError(f"{MERMAID} is missing: `make docs` installs Mermaid from npm "
                                "(the site serves it itself)")
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/warehouse-model.md", content=er_page()))
    files.append(File.generated(config, MERMAID_URI, abs_src_path=str(MERMAID)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Fills the generated regions of a page."""
    return fill_generated(markdown, page.file.src_uri)
