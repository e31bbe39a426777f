"""The one registry of source tables agrees with the real source database, the shipped
configuration and transform."""
from support import CONFIG, query
from totes.contracts.config import resolve_tables
from totes.contracts.source_tables import REFERENCE_TABLES, SOURCE_TABLES, default_primary_key
from totes.rules.dimensions import DIMENSION_RULES
from totes.rules.facts import FACT_SOURCES
from totes.utils.config_file import load_config


def test_keys_and_parents_match_the_seeded_source(seeded_source):
    keys = dict(query(seeded_source, """
        SELECT c.relname, a.attname FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
        WHERE i.indisprimary AND n.nspname = 'public'"""))
    assert keys == {t.name: t.primary_key for t in SOURCE_TABLES.values()}
    parents = {}
    for child, parent in query(seeded_source, """
            SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
            WHERE c.contype = 'f'"""):
        parents.setdefault(child, set()).add(parent)
    assert parents == {t.name: set(t.parents) for t in SOURCE_TABLES.values() if t.parents}
    order = list(SOURCE_TABLES)
    for table in SOURCE_TABLES.values():  # parents before children
        assert all(order.index(p) < order.index(table.name) for p in table.parents), table


def test_the_shipped_configuration_and_transform_use_the_registry():
    plans = {p.table: p for p in resolve_tables(load_config(CONFIG))}
    assert set(plans) == set(SOURCE_TABLES)
    assert all(plans[t].primary_key == SOURCE_TABLES[t].primary_key for t in plans)
    built_from = set(FACT_SOURCES) | {s for rule in DIMENSION_RULES for s in rule.sources}
    assert built_from == set(SOURCE_TABLES)
    assert set(REFERENCE_TABLES) == {"address", "department", "counterparty", "staff"}
    assert default_primary_key("refund") == "refund_id"
