"""Fact rules: one fact row per source row version.

created_at → created_date + created_time and last_updated → last_updated_date +
last_updated_time (microseconds kept: :func:`totes.rules.columns.split_timestamp`); text
dates ('YYYY-MM-DD') → date; sales_order.staff_id → sales_staff_id; payment's
company_ac_number and counterparty_ac_number are dropped. Money stays decimal(10,2). A
version read from the change log keeps its commit's position (``source_lsn``); a delete is
a version with ``is_deleted``, stamped with the moment of the delete
(:func:`totes.rules.columns.version_columns`).
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.quarantine import Checked, Violations
from totes.contracts.source_schema import classify
from totes.contracts.source_tables import default_primary_key
from totes.contracts.star_schema import TABLES, WarehouseTable
from totes.rules.columns import conform, split_timestamp, text_to_date, version_columns

#: source table → (fact table, {fact column: source column} where the names differ)
FACT_SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "sales_order": ("fact_sales_order", {"sales_staff_id": "staff_id"}),
    "purchase_order": ("fact_purchase_order", {}),
    "payment": ("fact_payment", {}),
}
#: Source timestamp → its (date column, time column) in the fact.
_SPLIT = {"created_at": ("created_date", "created_time"),
          "last_updated": ("last_updated_date", "last_updated_time")}


def widened_fact(source_table: str, lake_schema: pa.Schema) -> WarehouseTable:
    """The fact table of ``source_table`` with each widenable measure
    (:meth:`~totes.contracts.star_schema.WarehouseTable.widenable`) in its source column's
    type where ``lake_schema`` (the batch's lake files, unified) holds a wider one: a source
    widened from integer to bigint makes ``units_sold`` bigint."""
    fact_name, renames = FACT_SOURCES[source_table]
    target = TABLES[fact_name]
    wider = {}
    for column in target.columns:
        source = renames.get(column.name, column.name)
        if target.widenable(column) and source in lake_schema.names:
            kind = lake_schema.field(source).type
            if classify(column.arrow_type, kind) == "widened" and \
                    (pa.types.is_integer(kind) or pa.types.is_decimal(kind)):
                wider[column.name] = kind
    return target.widened(wider)


def fact_rows(batch: pa.RecordBatch, source_table: str,
              target: Optional[WarehouseTable] = None) -> Checked:
    """The fact rows of one record batch of ``source_table`` (a lake file's rows), typed as
    the fact table (``target``: the fact widened by :func:`widened_fact`), and the row
    versions held in quarantine: those with a text date that is not YYYY-MM-DD, an empty
    NOT NULL column or a value too large for its fact column."""
    fact_name, renames = FACT_SOURCES[source_table]
    target = target or TABLES[fact_name]
    id_column = default_primary_key(source_table)
    violations = Violations(source_table, id_column, batch)
    columns = version_columns(batch)
    stamps = {"created_at": batch.column("created_at"), "last_updated": columns.pop(
        "last_updated")}
    for source, (date_column, time_column) in _SPLIT.items():
        columns[date_column], columns[time_column] = split_timestamp(stamps[source])
    for column in target.columns:
        if column.name in columns:
            continue
        source = renames.get(column.name, column.name)
        values = batch.column(source)
        if column.arrow_type == pa.date32() and pa.types.is_string(values.type):
            values = text_to_date(values, violations, source)
        columns[column.name] = values
    return conform(columns, target, violations)


def fact_dates(rows: pa.Table) -> pa.Array:
    """The distinct dates of every date column of fact ``rows`` (what dim_date must hold)."""
    date_columns = [rows[name].combine_chunks() for name in rows.column_names
                    if rows.schema.field(name).type == pa.date32()]
    return pc.unique(pa.concat_arrays(date_columns)) if date_columns else \
        pa.array([], pa.date32())
