"""The registry of the ToteSys source tables: the one list the seeder, transform and the shipped
configuration share.

Each table of the OLTP database has an integer primary key ``<table>_id`` and a
``last_updated`` timestamp. The registry says, per table, what the pipeline needs to know:

* ``primary_key``: the key that identifies a row and breaks watermark ties (also the default
  ``primary_key`` of the table in ``config/pipeline.yaml``);
* ``parents``: the tables its foreign keys reference, so that a loader can write parents first;
* ``reference``: whether dimensions join its latest rows (``address`` for ``dim_counterparty``,
  ``department`` for ``dim_staff``, and the rows they are joined to), so transform keeps its
  latest row per key in the processed area's ``_state/``;
* ``warehouse_table``: the dimension or fact its rows become (None for ``department``, which
  only feeds ``dim_staff``'s join);
* ``columns``: the columns transform reads from it (plan checks the source has them).

A table a configuration lists that is not here is still ingested into the lake; transform
builds the star schema from these tables only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from totes.contracts.errors import SourceSchemaError


@dataclass(frozen=True)
class SourceTable:
    """One table of the ToteSys database."""

    name: str
    primary_key: str
    parents: tuple[str, ...] = ()
    reference: bool = False
    warehouse_table: Optional[str] = None
    columns: tuple[str, ...] = ()


_TIMES = ("created_at", "last_updated")
_TABLES = (
    SourceTable("address", "address_id", reference=True, warehouse_table="dim_location",
                columns=("address_id", "address_line_1", "address_line_2", "district", "city",
                         "postal_code", "country", "phone", *_TIMES)),
    SourceTable("department", "department_id", reference=True,
                columns=("department_id", "department_name", "location", *_TIMES)),
    SourceTable("currency", "currency_id", warehouse_table="dim_currency",
                columns=("currency_id", "currency_code", *_TIMES)),
    SourceTable("design", "design_id", warehouse_table="dim_design",
                columns=("design_id", "design_name", "file_location", "file_name", *_TIMES)),
    SourceTable("payment_type", "payment_type_id", warehouse_table="dim_payment_type",
                columns=("payment_type_id", "payment_type_name", *_TIMES)),
    SourceTable("counterparty", "counterparty_id", ("address",), reference=True,
                warehouse_table="dim_counterparty",
                columns=("counterparty_id", "counterparty_legal_name", "legal_address_id",
                         *_TIMES)),
    SourceTable("staff", "staff_id", ("department",), reference=True,
                warehouse_table="dim_staff",
                columns=("staff_id", "first_name", "last_name", "department_id",
                         "email_address", *_TIMES)),
    SourceTable("sales_order", "sales_order_id",
                ("design", "staff", "counterparty", "currency", "address"),
                warehouse_table="fact_sales_order",
                columns=("sales_order_id", "design_id", "staff_id", "counterparty_id",
                         "units_sold", "unit_price", "currency_id", "agreed_delivery_date",
                         "agreed_payment_date", "agreed_delivery_location_id", *_TIMES)),
    SourceTable("purchase_order", "purchase_order_id",
                ("staff", "counterparty", "currency", "address"),
                warehouse_table="fact_purchase_order",
                columns=("purchase_order_id", "staff_id", "counterparty_id", "item_code",
                         "item_quantity", "item_unit_price", "currency_id",
                         "agreed_delivery_date", "agreed_payment_date",
                         "agreed_delivery_location_id", *_TIMES)),
    SourceTable("transaction", "transaction_id", ("sales_order", "purchase_order"),
                warehouse_table="dim_transaction",
                columns=("transaction_id", "transaction_type", "sales_order_id",
                         "purchase_order_id", *_TIMES)),
    SourceTable("payment", "payment_id",
                ("transaction", "counterparty", "currency", "payment_type"),
                warehouse_table="fact_payment",
                columns=("payment_id", "transaction_id", "counterparty_id", "payment_amount",
                         "currency_id", "payment_type_id", "paid", "payment_date", *_TIMES)),
)

#: Every source table by name, parents before children (the order a loader writes them in).
SOURCE_TABLES: dict[str, SourceTable] = {t.name: t for t in _TABLES}
#: The tables whose latest rows transform keeps for the dimensions' joins, with their keys.
REFERENCE_TABLES: dict[str, str] = {t.name: t.primary_key for t in _TABLES if t.reference}


def default_primary_key(table: str) -> str:
    """The registry's primary key of ``table``, or ``<table>_id`` for a table it lacks."""
    known = SOURCE_TABLES.get(table)
    return known.primary_key if known else f"{table}_id"


def check_transform_columns(table: str, columns) -> None:
    """Check that source ``table`` (its column names ``columns``) has every column transform
    reads (:data:`SOURCE_TABLES`); a table not in the registry needs none.

    Raises:
        SourceSchemaError: naming the table and the columns missing.
    """
    needed = SOURCE_TABLES[table].columns if table in SOURCE_TABLES else ()
    missing = [c for c in needed if c not in columns]
    if missing:
        raise SourceSchemaError(f"table {table!r} has no column {', '.join(missing)}, which "
                                "transform reads (renamed or dropped in the source?)")
