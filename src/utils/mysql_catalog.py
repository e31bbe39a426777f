"""The catalog of a MySQL or MariaDB source: a table's columns and the Arrow type of each (from
``information_schema.columns``), the checks ingest makes before it reads, and the index advice
of a large table.

Types (``COLUMN_TYPE`` as the server prints it):

* ``tinyint(1)`` and ``boolean`` → bool (MySQL's boolean *is* ``tinyint(1)``);
* ``tinyint`` → int8, ``smallint`` → int16, ``mediumint``/``int`` → int32, ``bigint`` → int64;
  an ``unsigned`` one takes the next wider type (``bigint unsigned`` → uint64);
* ``decimal(p,s)`` → decimal128(p, s) (money stays decimal; more than 38 digits is refused);
* ``datetime(n)`` → timestamp in ms (n ≤ 3) or µs, without time zone (the value as stored);
  ``timestamp(n)`` → the same with time zone UTC (the session reads it in UTC);
* ``date`` → date32; ``float``/``double`` → float32/float64;
* ``binary``/``varbinary``/``blob`` types → binary; ``char``, ``varchar``, ``text``, ``enum``,
  ``set``, ``json``, ``time``, ``year`` and anything else → string (as the server prints it).
"""
from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pymysql

from totes.contracts.errors import PermissionDenied, SourceSchemaError
from totes.contracts.identifiers import quote_ident
from totes.contracts.source_tables import check_transform_columns
from totes.utils.mysql import ACCESS_DENIED_ERRORS, error_number

_INTEGERS = {"tinyint": (pa.int8(), pa.int16()), "smallint": (pa.int16(), pa.int32()),
             "mediumint": (pa.int32(), pa.int32()), "int": (pa.int32(), pa.int64()),
             "integer": (pa.int32(), pa.int64()), "bigint": (pa.int64(), pa.uint64())}
_DECIMAL = re.compile(r"^(?:decimal|numeric)\((\d+)(?:,(\d+))?\)")
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit"}
_FIXED = {"date": pa.date32(), "float": pa.float32(), "double": pa.float64(),
          "real": pa.float64()}


def arrow_type(data_type: str, column_type: str, datetime_precision: Optional[int],
               table: str, column: str) -> pa.DataType:
    """The Arrow type of a column from ``information_schema.columns``' ``DATA_TYPE``
    (``int``), ``COLUMN_TYPE`` (``int(10) unsigned``) and ``DATETIME_PRECISION``.

    Raises:
        SourceSchemaError: a decimal of more than 38 digits (no exact decimal type holds it).
    """
    data_type, column_type = data_type.lower(), column_type.lower()
    if data_type == "tinyint" and column_type.startswith("tinyint(1)") \
            and "unsigned" not in column_type:
        return pa.bool_()
    if data_type in _INTEGERS:
        signed, unsigned = _INTEGERS[data_type]
        return unsigned if "unsigned" in column_type else signed
    if data_type in ("decimal", "numeric"):
        match = _DECIMAL.match(column_type)
        precision, scale = (int(match.group(1)), int(match.group(2) or 0)) if match else (10, 0)
        if precision > 38:
            raise SourceSchemaError(f"{table}.{column} is {column_type}: more than 38 digits, "
                                    "which no exact decimal type here holds")
        return pa.decimal128(precision, scale)
    if data_type in ("datetime", "timestamp"):
        unit = "ms" if (datetime_precision or 0) <= 3 else "us"
        return pa.timestamp(unit, tz="UTC" if data_type == "timestamp" else None)
    if data_type in _FIXED:
        return _FIXED[data_type]
    if data_type in _BINARY:
        return pa.binary()
    return pa.string()


def is_integer(data_type: str) -> bool:
    """Whether ``DATA_TYPE`` is an integer type."""
    return data_type.lower() in _INTEGERS


def is_timestamp(data_type: str) -> bool:
    """Whether ``DATA_TYPE`` can hold a timestamp watermark."""
    return data_type.lower() in ("datetime", "timestamp")


def table_columns(conn, table: str) -> list[tuple[str, str, str, Optional[int], bool]]:
    """``[(column, DATA_TYPE, COLUMN_TYPE, DATETIME_PRECISION, nullable), ...]`` of ``table``
    in the connection's database, in column order; empty when the table does not exist or
    the role may read none of its columns (``information_schema`` shows only those)."""
    rows = conn.run(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, DATETIME_PRECISION, IS_NULLABLE "
        "FROM information_schema.columns WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = %(table)s ORDER BY ORDINAL_POSITION", table=table)
    return [(name, data_type, column_type, precision, nullable == "YES")
            for name, data_type, column_type, precision, nullable in rows]


def arrow_schema(columns, table: str) -> pa.Schema:
    """The Arrow schema of :func:`table_columns`' result."""
    return pa.schema([(name, arrow_type(data_type, column_type, precision, table, name))
                      for name, data_type, column_type, precision, _ in columns])


def check_table(conn, table: str, primary_key: str, watermark_column: Optional[str]):
    """Check ``table`` as :func:`totes.utils.postgres_catalog.check_table` does for
    PostgreSQL, and return its columns (as :func:`table_columns`). On MySQL a watermark column
    must be a ``datetime`` or ``timestamp``: the rule that makes an integer watermark safe
    (the writing transaction's id, ``xmin``) is PostgreSQL's; use ``extract_type: full`` for
    a table without a timestamp.

    Raises:
        SourceSchemaError: naming the table or column that is missing or of the wrong type.
        PermissionDenied: the role has no SELECT on the table.
    """
    columns = table_columns(conn, table)
    if not columns:
        raise SourceSchemaError(f"table {table!r} does not exist in the source database, or "
                                f"the source role may read none of it (GRANT SELECT ON "
                                f"{table} TO <user>)")
    try:  # an identifier through quote_ident; ANSI_QUOTES is on in every session
        conn.run(f"SELECT 1 FROM {quote_ident(table)} LIMIT 0")  # nosec B608
    except pymysql.err.MySQLError as exc:
        if error_number(exc) in ACCESS_DENIED_ERRORS:
            raise PermissionDenied(f"the source role may not read table {table!r}: "
                                   f"GRANT SELECT ON {table} TO <user>") from None
        raise
    types = {name: (data_type, nullable) for name, data_type, _, _, nullable in columns}
    if primary_key not in types:
        raise SourceSchemaError(f"table {table!r} has no primary key column {primary_key!r}")
    if not is_integer(types[primary_key][0]):
        raise SourceSchemaError(f"{table}.{primary_key} is {types[primary_key][0]}; the primary "
                                "key that orders a watermark must be an integer")
    (unique,), = conn.run(_UNIQUE_SQL, table=table, key=primary_key)
    if not unique or types[primary_key][1]:
        raise SourceSchemaError(f"{table}.{primary_key} has no unique index of its own, or "
                                "may be NULL; the watermark needs a unique, not null key to "
                                "order rows that share a timestamp (set primary_key to one)")
    if watermark_column is not None:
        if watermark_column not in types:
            raise SourceSchemaError(f"table {table!r} has no watermark column "
                                    f"{watermark_column!r}")
        kind = types[watermark_column][0]
        if is_integer(kind):
            raise SourceSchemaError(
                f"{table}.{watermark_column} is {kind}: on a MySQL source the watermark column "
                "must be a datetime or timestamp (an integer watermark is safe only on "
                "PostgreSQL, which tells which transaction wrote a row); use a timestamp "
                "column, or extract_type: full")
        if not is_timestamp(kind):
            raise SourceSchemaError(f"{table}.{watermark_column} is {kind}; a watermark "
                                    "column must be a datetime or timestamp")
    check_transform_columns(table, types)
    return columns


_UNIQUE_SQL = """
SELECT EXISTS (
    SELECT 1 FROM information_schema.statistics
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %(table)s
    GROUP BY INDEX_NAME
    HAVING SUM(NON_UNIQUE) = 0 AND COUNT(*) = 1 AND MAX(COLUMN_NAME) = %(key)s)
"""

#: A table with more rows than this (the server's estimate) and no index that serves its
#: watermark predicate is worth an index.
LARGE_TABLE_ROWS = 100_000


def watermark_index_advice(conn, table: str, watermark_column: str,
                           primary_key: str) -> Optional[str]:
    """When ``table`` is large (``information_schema.tables.TABLE_ROWS``) and no index starts
    with ``watermark_column``: a warning with the ``CREATE INDEX`` statement (online DDL) that
    makes incremental runs cheap; else None."""
    (estimate, indexed), = conn.run(
        "SELECT (SELECT TABLE_ROWS FROM information_schema.tables WHERE TABLE_SCHEMA = "
        "DATABASE() AND TABLE_NAME = %(table)s), EXISTS (SELECT 1 FROM "
        "information_schema.statistics WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = "
        "%(table)s AND SEQ_IN_INDEX = 1 AND COLUMN_NAME = %(column)s)",
        table=table, column=watermark_column)
    if indexed or estimate is None or estimate < LARGE_TABLE_ROWS:
        return None
    return (f"{table} holds about {int(estimate):,} rows and no index starts with "
            f"{watermark_column}: each incremental run reads the whole table. In the source: "
            f"CREATE INDEX {table}_{watermark_column}_idx ON {table} ({watermark_column}, "
            f"{primary_key}), ALGORITHM=INPLACE, LOCK=NONE;")
