"""The project's own docs: the ER diagram is the star schema's, and every document that code,
Terraform, scripts or docs name is in the repository."""
import re

from support import REPO
from totes.contracts.star_schema import TABLES, mermaid_er_diagram

SCANNED = ("src", "main-terraform", "immutable-terraform", "scripts", "config", "docs",
           "benchmarks", "data", "README.md", "Makefile")


def test_the_er_diagram_in_the_docs_is_the_star_schema():
    text = (REPO / "docs" / "warehouse.md").read_text()
    block = re.search(r"<!-- er-diagram:start -->\n```mermaid\n(.*?)\n```\n"
                      r"<!-- er-diagram:end -->", text, re.S)
    assert block, "docs/warehouse.md lost its ER diagram markers"
    assert block.group(1) == mermaid_er_diagram(), (
        "docs/warehouse.md's diagram differs from src/utils/star_schema.py: paste the output "
        "of `python -m totes.contracts.star_schema` between the markers")
    diagram = mermaid_er_diagram()
    for table in TABLES.values():  # every table, column and foreign key is drawn
        assert f"    {table.name} {{" in diagram
        for column in table.columns:
            assert re.search(rf"^        \S+ {column.name}\b", diagram, re.M), column.name
        for column, target in table.foreign_keys.items():
            assert f"{target} ||--o{{ {table.name} : {column}" in diagram


def test_every_document_named_in_the_repository_exists():
    files = []
    for name in SCANNED:
        path = REPO / name
        found = [path] if path.is_file() else path.rglob("*")
        files += [p for p in found if p.is_file() and p.suffix not in (".parquet", ".pyc")]
    missing = []
    for path in files:
        for match in re.finditer(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w-]+\.md)\b",
                                 path.read_text(errors="ignore")):
            named = match.group(1)
            candidates = [path.parent / named, REPO / named, REPO / "docs" / named]
            if not any(c.exists() for c in candidates):
                missing.append(f"{path.relative_to(REPO)}: {named}")
    assert not missing, missing
    assert "shared/" not in (REPO / "README.md").read_text()


def test_the_readme_links_the_docs():
    readme = (REPO / "README.md").read_text()
    for doc in ("architecture", "contracts", "warehouse", "configuration", "runbook"):
        assert f"(docs/{doc}.md)" in readme, doc
        assert (REPO / "docs" / f"{doc}.md").exists()
