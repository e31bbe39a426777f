"""The registry of the ToteSys source tables: the one list the seeder, transform and the shipped
configuration share.

Each table of the OLTP database has an integer primary key ``<table>_id`` and a
``last_updated`` timestamp. The registry says, per table, what the pipeline needs to know:

* ``primary_key``: the key that identifies a row and breaks watermark ties (also the default
  ``primary_key`` of the table in ``config/pipeline.yaml``);
* ``parents``: the tables its foreign keys reference, so that a loader can write parents first;
* ``reference``: whether dimensions join its latest rows (``address`` for ``dim_counterparty``,
  ``department`` for ``dim_staff``, and the rows they are joined to), so transform keeps its
  latest row per key in the processed area's ``_state/``.

A table a configuration lists that is not here is still ingested into the lake; transform
builds the star schema from these tables only.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceTable:
    """One table of the ToteSys database."""

    name: str
    primary_key: str
    parents: tuple[str, ...] = ()
    reference: bool = False


_TABLES = (
    SourceTable("address", "address_id", reference=True),
    SourceTable("department", "department_id", reference=True),
    SourceTable("currency", "currency_id"),
    SourceTable("design", "design_id"),
    SourceTable("payment_type", "payment_type_id"),
    SourceTable("counterparty", "counterparty_id", ("address",), reference=True),
    SourceTable("staff", "staff_id", ("department",), reference=True),
    SourceTable("sales_order", "sales_order_id",
                ("design", "staff", "counterparty", "currency", "address")),
    SourceTable("purchase_order", "purchase_order_id",
                ("staff", "counterparty", "currency", "address")),
    SourceTable("transaction", "transaction_id", ("sales_order", "purchase_order")),
    SourceTable("payment", "payment_id",
                ("transaction", "counterparty", "currency", "payment_type")),
)

#: Every source table by name, parents before children (the order a loader writes them in).
SOURCE_TABLES: dict[str, SourceTable] = {t.name: t for t in _TABLES}
#: The tables whose latest rows transform keeps for the dimensions' joins, with their keys.
REFERENCE_TABLES: dict[str, str] = {t.name: t.primary_key for t in _TABLES if t.reference}


def default_primary_key(table: str) -> str:
    """The registry's primary key of ``table``, or ``<table>_id`` for a table it lacks."""
    known = SOURCE_TABLES.get(table)
    return known.primary_key if known else f"{table}_id"
