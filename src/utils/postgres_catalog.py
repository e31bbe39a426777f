"""The source catalog: a table's columns and the Arrow type of each, so that Parquet types
follow the source.

integer → int32, bigint → int64, smallint → int16, numeric(p,s) → decimal128(p,s), numeric
without precision → decimal128(38, 9) (dlt's default; a value beyond it follows the table's
schema contract, :mod:`totes.contracts.source_schema`),
timestamp(n) → timestamp in ms (n ≤ 3) or µs, timestamptz → timestamp UTC, date → date32,
boolean → bool, real/double → float32/float64, text/varchar/char/enum and anything else →
string (text dates stay text until transform).
"""
from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa

from totes.contracts.errors import PermissionDenied, SourceSchemaError
from totes.contracts.identifiers import quote_ident
from totes.contracts.source_schema import UNBOUNDED_DECIMAL
from totes.contracts.source_tables import check_transform_columns

_NUMERIC = re.compile(r"^numeric\((\d+),(\d+)\)$")
_TIMESTAMP = re.compile(r"^timestamp(?:\((\d)\))? (without|with) time zone$")
_FIXED = {
    "smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(),
    "boolean": pa.bool_(), "date": pa.date32(),
    "real": pa.float32(), "double precision": pa.float64(),
}


def arrow_type(pg_type: str, table: str, column: str) -> pa.DataType:
    """The Arrow type for ``pg_type`` as ``format_type()`` prints it.

    Raises:
        SourceSchemaError: a ``numeric`` of more than 38 digits (no exact decimal type).
    """
    if pg_type in _FIXED:
        return _FIXED[pg_type]
    match = _NUMERIC.match(pg_type)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if precision > 38:
            raise SourceSchemaError(f"{table}.{column} is {pg_type}: more than 38 digits, which "
                                    "no exact decimal type here holds")
        return pa.decimal128(precision, scale)
    if pg_type == "numeric":
        return UNBOUNDED_DECIMAL
    match = _TIMESTAMP.match(pg_type)
    if match:
        precision = int(match.group(1)) if match.group(1) is not None else 6
        unit = "ms" if precision <= 3 else "us"
        return pa.timestamp(unit, tz="UTC" if match.group(2) == "with" else None)
    return pa.string()


def is_timestamp(pg_type: str) -> bool:
    """Whether ``pg_type`` can hold a watermark (a timestamp with or without time zone)."""
    return bool(_TIMESTAMP.match(pg_type))


def is_integer(pg_type: str) -> bool:
    """Whether ``pg_type`` is an integer type (primary keys of watermarks must be)."""
    return pg_type in ("smallint", "integer", "bigint")


def table_columns(conn, table: str) -> list[tuple[str, str]]:
    """``[(column, format_type), ...]`` of ``table`` in the connection's current schema, in
    column order; empty when the table does not exist."""
    rows = conn.run(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = :table AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        table=table)
    return [(name, pg_type) for name, pg_type in rows]


def column_nullability(conn, table: str) -> dict[str, bool]:
    """Whether each column of ``table`` (in the connection's current schema) may be NULL."""
    rows = conn.run(
        "SELECT a.attname, NOT a.attnotnull FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = :table AND a.attnum > 0 "
        "AND NOT a.attisdropped", table=table)
    return {name: bool(nullable) for name, nullable in rows}


def check_table(conn, table: str, primary_key: str,
                watermark_column: Optional[str]) -> list[tuple[str, str]]:
    """Check ``table`` before anything is extracted, and return its columns (as
    :func:`table_columns`): it exists, the role may read it, ``primary_key`` is an integer
    column with a unique index of its own (the watermark's tie-break needs a unique key),
    ``watermark_column`` (when there is one) is a timestamp or an integer, and it has every
    column transform reads
    (:data:`totes.contracts.source_tables.SOURCE_TABLES`).

    Raises:
        SourceSchemaError: naming the table or the column that is missing or of the wrong type.
        PermissionDenied: the role has no SELECT on the table.
    """
    columns = table_columns(conn, table)
    if not columns:
        raise SourceSchemaError(f"table {table!r} does not exist in the source database")
    (readable, unique), = conn.run(_PRIVILEGE_AND_KEY_SQL, table=table, key=primary_key)
    if not readable:
        raise PermissionDenied(f"the source role may not read table {table!r}: "
                               f"GRANT SELECT ON {table} TO <role>")
    types = dict(columns)
    if primary_key not in types:
        raise SourceSchemaError(f"table {table!r} has no primary key column {primary_key!r}")
    if not is_integer(types[primary_key]):
        raise SourceSchemaError(f"{table}.{primary_key} is {types[primary_key]}; the primary "
                                "key that orders a watermark must be an integer")
    if not unique:
        raise SourceSchemaError(f"{table}.{primary_key} has no unique constraint or index of "
                                "its own, or may be NULL; the watermark needs a unique, not "
                                "null key to order rows that share a timestamp (set "
                                "primary_key to one)")
    if watermark_column is not None and watermark_column not in types:
        raise SourceSchemaError(f"table {table!r} has no watermark column {watermark_column!r}")
    if watermark_column is not None and not (is_timestamp(types[watermark_column])
                                             or is_integer(types[watermark_column])):
        raise SourceSchemaError(f"{table}.{watermark_column} is {types[watermark_column]}; "
                                "a watermark column must be a timestamp or an integer")
    check_transform_columns(table, types)
    return columns


#: A table with more rows than this and no index that serves its watermark predicate is
#: worth an index: each incremental run would read it whole.
LARGE_TABLE_ROWS = 100_000


def watermark_index_advice(conn, table: str, watermark_column: str,
                           primary_key: str) -> Optional[str]:
    """When ``table`` is large (by the planner's estimate) and no index starts with
    ``watermark_column``: a warning with the ``CREATE INDEX CONCURRENTLY`` statement that
    makes incremental runs cheap (the project never changes the source itself); else None."""
    (estimate, indexed), = conn.run(_WATERMARK_INDEX_SQL, table=table, column=watermark_column)
    if indexed or estimate is None or estimate < LARGE_TABLE_ROWS:
        return None
    return (f"{table} holds about {int(estimate):,} rows and no index starts with "
            f"{watermark_column}: each incremental run reads the whole table. In the source: "
            f"CREATE INDEX CONCURRENTLY ON {quote_ident(table)} "
            f"({quote_ident(watermark_column)}, {quote_ident(primary_key)});")


_WATERMARK_INDEX_SQL = """
SELECT c.reltuples,
       EXISTS (SELECT 1 FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid AND i.indpred IS NULL AND a.attname = :column)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = :table
"""


_PRIVILEGE_AND_KEY_SQL = """
SELECT has_table_privilege(c.oid, 'SELECT'),
       EXISTS (SELECT 1 FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indnkeyatts = 1
                 AND i.indpred IS NULL AND a.attname = :key AND a.attnotnull)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = :table
"""
