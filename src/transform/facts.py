"""Fact rules (SCHEMAS.md §3): one fact row per source row version.

created_at → created_date + created_time and last_updated → last_updated_date +
last_updated_time (milliseconds kept); text dates ('YYYY-MM-DD') → date; sales_order.staff_id
→ sales_staff_id; payment's company_ac_number and counterparty_ac_number are dropped. Money
stays decimal(10,2).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from totes.transform.columns import conform, text_to_date
from totes.utils.star_schema import TABLES, WarehouseTable

#: source table → (fact table, {fact column: source column} where the names differ)
FACT_SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "sales_order": ("fact_sales_order", {"sales_staff_id": "staff_id"}),
    "purchase_order": ("fact_purchase_order", {}),
    "payment": ("fact_payment", {}),
}
_SPLIT = {"created_date": ("created_at", pa.date32()), "created_time": ("created_at", None),
          "last_updated_date": ("last_updated", pa.date32()),
          "last_updated_time": ("last_updated", None)}


def fact_rows(batch: pa.RecordBatch, source_table: str) -> pa.Table:
    """The fact rows of one record batch of ``source_table`` (a lake file's rows), typed as
    the fact table.

    Raises:
        DataError: a text date is not YYYY-MM-DD, or a NOT NULL column is empty (names the
            table, the row's id and the column).
    """
    fact_name, renames = FACT_SOURCES[source_table]
    target: WarehouseTable = TABLES[fact_name]
    id_column = f"{source_table}_id"
    ids = batch.column(id_column)
    columns = {}
    for column in target.columns:
        if column.name in _SPLIT:
            source, as_date = _SPLIT[column.name]
            moments = batch.column(source)
            columns[column.name] = moments.cast(as_date or pa.time32("ms"))
            continue
        values = batch.column(renames.get(column.name, column.name))
        if column.arrow_type == pa.date32() and pa.types.is_string(values.type):
            values = text_to_date(values, ids, source_table, id_column, column.name)
        columns[column.name] = values
    return conform(columns, target, source_table, id_column)


def fact_dates(rows: pa.Table) -> pa.Array:
    """The distinct dates of every date column of fact ``rows`` (what dim_date must hold)."""
    date_columns = [rows[name].combine_chunks() for name in rows.column_names
                    if rows.schema.field(name).type == pa.date32()]
    return pc.unique(pa.concat_arrays(date_columns)) if date_columns else \
        pa.array([], pa.date32())
