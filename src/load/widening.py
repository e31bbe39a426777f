"""Widening a fact's measure in the warehouse when its source column widened.

A source column a fact rule reads that widens (``sales_order.units_sold`` integer → bigint,
a money column's precision up: :mod:`totes.contracts.source_schema`) reaches the processed
fact file in the wider type (:meth:`totes.contracts.star_schema.WarehouseTable.widened`).
Before such a file is copied, load alters the fact's column (and its held table's) to that
type, in the load's transaction: the batch's rows and the new type commit together, or
neither does. The fact's current-version view depends on the column, so it is dropped and
created again in the same transaction; a query sees the old or the new definition whole.
A column never narrows: a file in a narrower type (an earlier batch) is copied as the
warehouse's wider type.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from totes.contracts.identifiers import quote_ident
from totes.contracts.source_schema import classify
from totes.contracts.star_schema import WarehouseTable, arrow_type_of_sql, sql_type_of
from totes.load import held_facts
from totes.utils.postgres_merge import column_types

log = logging.getLogger(__name__)


def widen_for_file(conn, table: WarehouseTable, file_schema: pa.Schema,
                   schema: str) -> WarehouseTable:
    """``table`` as the warehouse schema ``schema`` holds it once a processed file of schema
    ``file_schema`` can be copied into it: each widenable measure in the wider of the
    warehouse's type and the file's, the warehouse's column (and the held table's) altered
    first when the file's is wider. Runs in the caller's transaction. A dimension is
    returned as it is.

    Raises:
        DatabaseError: the warehouse refused the change (the load fails and leaves nothing).
    """
    if table.kind != "fact":
        return table
    current = column_types(conn, table.relation(schema))
    kept, altered = {}, {}
    for column in table.columns:
        if not table.widenable(column):
            continue
        held = arrow_type_of_sql(current.get(column.name, "")) or column.arrow_type
        wanted = held
        if column.name in file_schema.names:
            incoming = file_schema.field(column.name).type
            if classify(held, incoming) == "widened":
                wanted = incoming
        if wanted != column.arrow_type:
            kept[column.name] = wanted
        if wanted != held:
            altered[column.name] = wanted
    if altered:
        _alter(conn, table, altered, schema)
    return table.widened(kept)


def _alter(conn, table: WarehouseTable, types: dict[str, pa.DataType], schema: str) -> None:
    """Alter the fact's columns ``types`` (and the held table's), its current-version view
    dropped and created again around it."""
    changes = ", ".join(f"ALTER COLUMN {quote_ident(name)} TYPE {sql_type_of(kind)}"
                        for name, kind in types.items())
    conn.run(f"DROP VIEW IF EXISTS {table.current_relation(schema)}")
    conn.run(f"ALTER TABLE {table.relation(schema)} {changes}")
    (held_exists,), = conn.run("SELECT to_regclass(:held) IS NOT NULL",
                               held=held_facts.held_table(table))
    if held_exists:
        conn.run(f"ALTER TABLE {held_facts.held_table(table)} {changes}")
    conn.run(table.current_view_ddl(schema))
    log.warning("%s: widened %s with the source", table.name,
                ", ".join(f"{name} to {sql_type_of(kind)}" for name, kind in types.items()))
