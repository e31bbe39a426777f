"""The project's own docs: the ER diagram is the star schema's, and every document that code,
Terraform, scripts or docs name is in the repository."""
import re
import shutil
import subprocess  # nosec B404 (git ls-files)
from pathlib import Path

import pytest

from support import REPO
from totes.contracts.star_schema import TABLES, mermaid_er_diagram

#: Pages the docs site generates from the code when it is built (scripts/docs_site.py).
GENERATED_PAGES = ("reference/cli.md", "reference/warehouse-model.md")
SCANNED = ("src", "main-terraform", "immutable-terraform", "scripts", "config", "docs",
           "benchmarks", "data", "README.md", "Makefile")


def test_the_er_diagram_in_the_docs_is_the_star_schema():
    text = (REPO / "docs" / "warehouse.md").read_text()
    block = re.search(r"<!-- er-diagram:start -->\n```mermaid\n(.*?)\n```\n"
                      r"<!-- er-diagram:end -->", text, re.S)
    assert block, "docs/warehouse.md lost its ER diagram markers"
    assert block.group(1) == mermaid_er_diagram(), (
        "docs/warehouse.md's diagram differs from src/contracts/star_schema.py: paste the output "
        "of `python -m totes.contracts.star_schema` between the markers")
    diagram = mermaid_er_diagram()
    for table in TABLES.values():  # every table, column and foreign key is drawn
        assert f"    {table.name} {{" in diagram
        for column in table.columns:
            assert re.search(rf"^        \S+ {column.name}\b", diagram, re.M), column.name
        for column, target in table.foreign_keys.items():
            assert f"{target} ||--o{{ {table.name} : {column}" in diagram


def repository_files(*names: str) -> list[Path]:
    """The files under ``names`` that git would commit (tracked, or new and not ignored): not
    what a build or deploy-local writes beside them (.terraform/, *_override.tf), which may
    come and go while the tests run."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the repository's files are listed by git: not a git checkout here")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",  # nosec B603 B607
                             "--exclude-standard", "--", *names], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return [REPO / name for name in listed if name and (REPO / name).is_file()]


def test_every_document_named_in_the_repository_exists():
    files = [p for p in repository_files(*SCANNED) if p.suffix not in (".parquet", ".pyc")]
    missing = []
    for path in files:
        for match in re.finditer(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w-]+\.md)\b",
                                 path.read_text(errors="ignore")):
            named = match.group(1)
            if named in GENERATED_PAGES:
                continue
            candidates = [path.parent / named, REPO / named, REPO / "docs" / named,
                          *(folder / named for folder in (REPO / "docs").iterdir())]
            if not any(c.exists() for c in candidates):
                missing.append(f"{path.relative_to(REPO)}: {named}")
    assert not missing, missing
    assert "shared/" not in (REPO / "README.md").read_text()


def test_the_readme_links_the_docs():
    readme = (REPO / "README.md").read_text()
    for doc in ("architecture", "contracts", "warehouse", "configuration", "runbook", "cdc"):
        assert f"(docs/{doc}.md)" in readme, doc
        assert (REPO / "docs" / f"{doc}.md").exists()


def test_the_module_maps_name_exactly_the_modules_of_src():
    """docs/contracts.md maps every module of src/, and neither it nor docs/architecture.md
    names a module or package that does not exist."""
    modules = {str(p.relative_to(REPO / "src")) for p in (REPO / "src").rglob("*.py")
               if p.name != "__init__.py"}
    path = re.compile(r"`(?:src/)?((?:[a-z_]+/)*[a-z_]+\.py)`")
    mapped = set(path.findall((REPO / "docs" / "contracts.md").read_text()))
    assert modules - mapped == set(), "modules docs/contracts.md does not map"
    for doc in ("contracts.md", "architecture.md"):
        text = (REPO / "docs" / doc).read_text()
        named = {m for m in path.findall(text) if ("/" in m or m == "cli.py")
                 and not m.startswith("tests/")}
        assert named - modules == set(), f"docs/{doc} names modules that do not exist"
        packages = set(re.findall(r"`src/([a-z_]+)/`", text))
        assert all((REPO / "src" / p / "__init__.py").exists() for p in packages), packages
    architecture = (REPO / "docs" / "architecture.md").read_text()
    for package in ("contracts", "utils", "rules", "ingest", "transform", "load", "reconcile",
                    "notify", "local"):
        assert f"`src/{package}/`" in architecture, package


def test_the_configuration_page_lists_the_settings_object():
    from totes.utils.settings import markdown_table

    text = (REPO / "docs" / "configuration.md").read_text()
    block = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert block, "docs/configuration.md lost its settings markers"
    assert block.group(1) == markdown_table(), (
        "docs/configuration.md differs from src/utils/settings.py: paste the output of "
        "`python -m totes.utils.settings` between the markers")


def test_only_the_settings_object_reads_the_environment():
    readers = re.compile(r"os\.environ(?!\.setdefault\(\"PYSPARK_PYTHON\")|os\.getenv|getenv\(")
    found = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "src").rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if readers.search(line) and p.name != "settings.py"
             and not line.lstrip().startswith("#")]
    assert found == []


def test_the_configuration_page_lists_the_pipeline_files_keys():
    from totes.contracts.config import (CdcOptions, SchemaContractOptions, TableOptions,
                                        markdown_table)

    text = (REPO / "docs" / "configuration.md").read_text()
    for marker, model in (("pipeline-keys", TableOptions), ("cdc-keys", CdcOptions),
                          ("schema-contract-keys", SchemaContractOptions)):
        block = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", text, re.S)
        assert block, f"docs/configuration.md lost its {marker} markers"
        assert block.group(1) == markdown_table(model), (
            f"docs/configuration.md's {marker} differ from src/contracts/config.py: paste the "
            "output of `python -m totes.contracts.config` between the markers")
        for name in model.model_fields:  # every key the model accepts is documented
            assert f"| `{name}` |" in block.group(1)
