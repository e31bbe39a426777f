"""The warehouse star schema, defined once for transform and load.

Three stars (sales, purchases, payments) share eight dimensions. Transform writes each table's
processed Parquet with :meth:`WarehouseTable.arrow_schema` (dates as date32, times as
time64[us], money as decimal128(10,2), ids as int32); load creates the tables from
:meth:`WarehouseTable.ddl` and merges on :attr:`WarehouseTable.merge_key`.

Grain: a dimension row is the latest version of one source key; a fact row is one version of
one source row, identified by its source id plus ``last_updated`` (date and time) plus
``source_lsn``, which is the fact's merge key: loading the same version twice never adds a
row. ``source_lsn`` is the commit's log position for a version read from the change log
(``extract_type: cdc``), so that two commits that give a row the same ``last_updated`` stay
two versions; 0 for a version read by a cursor. Each fact has a view of its current
versions, ``<fact>_current`` (one row per source id, the latest version, ids whose latest
version is a delete left out): what an analyst sums.

Deletes are versions: a source row deleted (read from the log, or found gone by a key
comparison) lands as a fact version with ``is_deleted = true``, its values the row's last,
``last_updated`` the moment of the delete; a deleted dimension row stays (facts refer to it),
marked ``is_deleted``. Every other row has ``is_deleted = false``.

Times keep microseconds (``time``, i.e. ``time(6)``, as PostgreSQL's default precision): two
versions of a row a few microseconds apart stay two fact rows. A source with milliseconds
(ToteSys's ``timestamp(3)``) gives times with zeros after the milliseconds.

Versions of dimension rows: every dimension but ``dim_date`` (whose values follow from its key)
has a ``source_last_updated`` column, the ``last_updated`` of its own source row; a dimension
joined to a reference table (``dim_staff`` to department, ``dim_counterparty`` to address) also
has ``reference_last_updated``, the reference row's. A version is the pair (own, reference),
compared in that order: load replaces a dimension row only by a newer version, so a batch
loaded again, or out of order, never takes a dimension back to older values, while a change
on either side (a staff member who moves to another department, a department renamed) is
newer.

Widening: a fact's integer or decimal measure (``units_sold``, ``unit_price``, …) follows a
widening of the source column it is read from (:mod:`totes.contracts.source_schema`):
transform writes it in the wider type (:meth:`WarehouseTable.widened`) and load alters the
column in the load's transaction. Keys and foreign keys keep their types.

Where: the tables and views live in one PostgreSQL schema of the warehouse, configuration
(``TOTES_WAREHOUSE_SCHEMA``, :data:`DEFAULT_SCHEMA` ``public``), and every statement names it
(:meth:`WarehouseTable.relation`): the role's ``search_path`` plays no part. The bookkeeping
(loaded batches, held facts, the quarantine's record) is in schema ``totes``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import pyarrow as pa

from totes.contracts.identifiers import qualified

#: The warehouse schema of the star schema unless ``TOTES_WAREHOUSE_SCHEMA`` says another.
DEFAULT_SCHEMA = "public"

INT = ("int", pa.int32())
VARCHAR = ("varchar", pa.string())
DATE = ("date", pa.date32())
TIME = ("time(6)", pa.time64("us"))
VERSION = ("timestamp(6)", pa.timestamp("us"))
MONEY = ("numeric(10, 2)", pa.decimal128(10, 2))
BOOL = ("boolean", pa.bool_())
BIGINT = ("bigint", pa.int64())


_DEFAULT_VALUES = {"false": False, "true": True, "0": 0}


def sql_type_of(arrow_type: pa.DataType) -> str:
    """The warehouse's SQL type of a widened column's Arrow type (``int64`` → ``bigint``,
    ``decimal128(12, 2)`` → ``numeric(12, 2)``).

    Raises:
        ValueError: a type no star column widens to.
    """
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision}, {arrow_type.scale})"
    named = {pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint"}
    if arrow_type in named:
        return named[arrow_type]
    raise ValueError(f"no warehouse column widens to {arrow_type}")


def arrow_type_of_sql(sql_type: str) -> Optional[pa.DataType]:
    """The Arrow type of a widenable column's SQL type as PostgreSQL's ``format_type``
    prints it (``integer``, ``bigint``, ``numeric(12,2)``); None for any other."""
    named = {"smallint": pa.int16(), "integer": pa.int32(), "int": pa.int32(),
             "bigint": pa.int64()}
    if sql_type in named:
        return named[sql_type]
    if sql_type.startswith("numeric(") and sql_type.endswith(")"):
        precision, scale = sql_type[len("numeric("):-1].split(",")
        return pa.decimal128(int(precision), int(scale))
    return None


@dataclass(frozen=True)
class Column:
    """One column: its SQL and Arrow types, whether it may be NULL, and the SQL default a
    row written without it gets (``default``: added to a warehouse of an older schema with
    that value for its rows, and given to a processed file that lacks the column)."""

    name: str
    sql_type: str
    arrow_type: pa.DataType
    nullable: bool = False
    default: Optional[str] = None

    def default_value(self):
        """``default`` as a Python value (``false`` → False, ``0`` → 0), None without one."""
        return _DEFAULT_VALUES.get(self.default)


def _columns(*specs) -> tuple[Column, ...]:
    """``("name", INT)`` or ``("name", INT, True)`` for a nullable column."""
    return tuple(Column(name, kind[0], kind[1], bool(rest and rest[0])) for name, kind, *rest
                 in specs)


#: The change log's position of a version (0: read by a cursor) and whether it is a delete.
SOURCE_LSN, IS_DELETED = "source_lsn", "is_deleted"
_CHANGE_COLUMNS = (Column(SOURCE_LSN, *BIGINT, default="0"),
                   Column(IS_DELETED, *BOOL, default="false"))


@dataclass(frozen=True)
class WarehouseTable:
    """One table of the star schema.

    ``columns`` are the columns transform writes and load copies (a fact's serial surrogate
    key ``surrogate_key`` is generated by the warehouse). ``merge_key`` is the natural key:
    a dimension's primary key (upserted), or a fact's version key (inserted once).
    ``foreign_keys`` maps a column to the dimension table whose key it references.
    ``version_columns`` (dimensions) order the versions of a row, compared as a tuple: load
    keeps the newest.
    """

    name: str
    kind: str  # "dimension" or "fact"
    columns: tuple[Column, ...]
    merge_key: tuple[str, ...]
    surrogate_key: Optional[str] = None
    foreign_keys: dict[str, str] = field(default_factory=dict)
    version_columns: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable)
                          for c in self.columns])

    def widenable(self, column: Column) -> bool:
        """Whether ``column`` widens with its source column (:meth:`widened`): a fact's
        integer or decimal measure, neither a key nor a foreign key nor a change column."""
        return (self.kind == "fact" and column.name not in self.merge_key
                and column.name not in self.foreign_keys
                and column.name not in (SOURCE_LSN, IS_DELETED)
                and (pa.types.is_integer(column.arrow_type)
                     or pa.types.is_decimal(column.arrow_type)))

    def widened(self, types: dict[str, pa.DataType]) -> "WarehouseTable":
        """This table with each column of ``types`` (name → a wider Arrow type: int64, a
        decimal) of that type and its SQL type (:func:`sql_type_of`): what a widening of the
        source column a rule reads makes of the star column. A column not in ``types`` keeps
        its type."""
        if not types:
            return self
        columns = tuple(replace(c, arrow_type=types[c.name], sql_type=sql_type_of(types[c.name]))
                        if c.name in types else c for c in self.columns)
        return replace(self, columns=columns)

    def as_found(self, sql_types: dict[str, str]) -> "WarehouseTable":
        """This table with each widenable column in the type the warehouse holds it in
        (``sql_types``: column → ``format_type``, as :func:`arrow_type_of_sql` reads it),
        when that is wider: what reading the warehouse back must expect."""
        found = {}
        for column in self.columns:
            kind = arrow_type_of_sql(sql_types.get(column.name, ""))
            if self.widenable(column) and kind is not None and kind != column.arrow_type:
                found[column.name] = kind
        return self.widened(found)

    @property
    def current_view(self) -> Optional[str]:
        """A fact's current-version view, ``<fact>_current`` (None for a dimension)."""
        return f"{self.name}_current" if self.kind == "fact" else None

    def relation(self, schema: str) -> str:
        """The table in the warehouse schema ``schema``, quoted: ``"public"."dim_date"``."""
        return qualified(schema, self.name)

    def current_relation(self, schema: str) -> str:
        """A fact's current-version view in ``schema``, quoted."""
        if self.current_view is None:
            raise ValueError(f"{self.name} is a dimension: it has no current-version view")
        return qualified(schema, self.current_view)

    def current_view_ddl(self, schema: str) -> str:
        """``CREATE OR REPLACE VIEW <schema>.<fact>_current``: the latest version of each
        source row that is not a delete (grain: one row per source id, the version with the
        greatest ``(last_updated, source_lsn)``; ids whose latest version is a delete are
        left out), with every column of the fact."""
        source_id = self.merge_key[0]
        # The schema's own names (this module's constants) and a checked, quoted schema.
        return (f"CREATE OR REPLACE VIEW {self.current_relation(schema)} AS "  # nosec B608
                f"SELECT * FROM (SELECT DISTINCT ON ({source_id}) * FROM "
                f"{self.relation(schema)} "
                f"ORDER BY {source_id}, last_updated_date DESC, last_updated_time DESC, "
                f"{SOURCE_LSN} DESC) latest WHERE NOT {IS_DELETED}")

    def ddl(self, schema: str) -> str:
        """``CREATE TABLE IF NOT EXISTS <schema>.<table>`` with primary, unique and foreign
        keys (referencing the dimensions in the same schema)."""
        lines = []
        if self.surrogate_key:
            lines.append(f"{self.surrogate_key} serial PRIMARY KEY")
        for c in self.columns:
            default = f" DEFAULT {c.default}" if c.default is not None else ""
            lines.append(f"{c.name} {c.sql_type}{'' if c.nullable else ' NOT NULL'}{default}")
        key = ", ".join(self.merge_key)
        lines.append(f"UNIQUE ({key})" if self.surrogate_key else f"PRIMARY KEY ({key})")
        for column, target in self.foreign_keys.items():
            lines.append(f"FOREIGN KEY ({column}) REFERENCES {qualified(schema, target)} "
                         f"({TABLES[target].merge_key[0]})")
        body = ",\n    ".join(lines)
        return f"CREATE TABLE IF NOT EXISTS {self.relation(schema)} (\n    {body}\n)"


_FACT_TIMES = (("created_date", DATE), ("created_time", TIME),
               ("last_updated_date", DATE), ("last_updated_time", TIME))
#: The version column of the dimensions that have one (nullable: rows loaded before it existed
#: have none, and any version replaces them).
SOURCE_LAST_UPDATED = "source_last_updated"
REFERENCE_LAST_UPDATED = "reference_last_updated"


def _dimension(name: str, key: str, *specs, joined: bool = False) -> WarehouseTable:
    """A dimension keyed by ``key`` whose rows carry their source version (``last_updated``,
    then the log position: two commits with one ``last_updated`` stay ordered), whether the
    source row is deleted, and, ``joined`` to a reference table, the reference row's
    version."""
    stamps = (SOURCE_LAST_UPDATED,) + ((REFERENCE_LAST_UPDATED,) if joined else ())
    columns = _columns(*specs, *((v, VERSION, True) for v in stamps)) + _CHANGE_COLUMNS
    versions = (SOURCE_LAST_UPDATED, SOURCE_LSN) + stamps[1:]
    return WarehouseTable(name, "dimension", columns, (key,), version_columns=versions)


_DIMENSIONS = (
    WarehouseTable("dim_date", "dimension", _columns(
        ("date_id", DATE), ("year", INT), ("month", INT), ("day", INT),
        ("day_of_week", INT), ("day_name", VARCHAR), ("month_name", VARCHAR),
        ("quarter", INT)), ("date_id",)),
    _dimension("dim_staff", "staff_id",
               ("staff_id", INT), ("first_name", VARCHAR), ("last_name", VARCHAR),
               ("department_name", VARCHAR), ("location", VARCHAR), ("email_address", VARCHAR),
               joined=True),
    _dimension("dim_location", "location_id",
               ("location_id", INT), ("address_line_1", VARCHAR),
               ("address_line_2", VARCHAR, True), ("district", VARCHAR, True), ("city", VARCHAR),
               ("postal_code", VARCHAR), ("country", VARCHAR), ("phone", VARCHAR)),
    _dimension("dim_design", "design_id",
               ("design_id", INT), ("design_name", VARCHAR), ("file_location", VARCHAR),
               ("file_name", VARCHAR)),
    _dimension("dim_currency", "currency_id",
               ("currency_id", INT), ("currency_code", VARCHAR), ("currency_name", VARCHAR)),
    _dimension("dim_counterparty", "counterparty_id",
               ("counterparty_id", INT), ("counterparty_legal_name", VARCHAR),
               ("counterparty_legal_address_line_1", VARCHAR),
               ("counterparty_legal_address_line_2", VARCHAR, True),
               ("counterparty_legal_district", VARCHAR, True),
               ("counterparty_legal_city", VARCHAR), ("counterparty_legal_postal_code", VARCHAR),
               ("counterparty_legal_country", VARCHAR),
               ("counterparty_legal_phone_number", VARCHAR), joined=True),
    _dimension("dim_payment_type", "payment_type_id",
               ("payment_type_id", INT), ("payment_type_name", VARCHAR)),
    _dimension("dim_transaction", "transaction_id",
               ("transaction_id", INT), ("transaction_type", VARCHAR),
               ("sales_order_id", INT, True), ("purchase_order_id", INT, True)),
)
_FACT_DATES = {"created_date": "dim_date", "last_updated_date": "dim_date"}
_FACTS = (
    WarehouseTable("fact_sales_order", "fact", _columns(
        ("sales_order_id", INT), *_FACT_TIMES, ("sales_staff_id", INT), ("counterparty_id", INT),
        ("units_sold", INT), ("unit_price", MONEY), ("currency_id", INT), ("design_id", INT),
        ("agreed_payment_date", DATE), ("agreed_delivery_date", DATE),
        ("agreed_delivery_location_id", INT)) + _CHANGE_COLUMNS,
        ("sales_order_id", "last_updated_date", "last_updated_time", SOURCE_LSN),
        "sales_record_id",
        {**_FACT_DATES, "agreed_payment_date": "dim_date", "agreed_delivery_date": "dim_date",
         "sales_staff_id": "dim_staff", "counterparty_id": "dim_counterparty",
         "currency_id": "dim_currency", "design_id": "dim_design",
         "agreed_delivery_location_id": "dim_location"}),
    WarehouseTable("fact_purchase_order", "fact", _columns(
        ("purchase_order_id", INT), *_FACT_TIMES, ("staff_id", INT), ("counterparty_id", INT),
        ("item_code", VARCHAR), ("item_quantity", INT), ("item_unit_price", MONEY),
        ("currency_id", INT), ("agreed_delivery_date", DATE), ("agreed_payment_date", DATE),
        ("agreed_delivery_location_id", INT)) + _CHANGE_COLUMNS,
        ("purchase_order_id", "last_updated_date", "last_updated_time", SOURCE_LSN),
        "purchase_record_id",
        {**_FACT_DATES, "agreed_payment_date": "dim_date", "agreed_delivery_date": "dim_date",
         "staff_id": "dim_staff", "counterparty_id": "dim_counterparty",
         "currency_id": "dim_currency", "agreed_delivery_location_id": "dim_location"}),
    WarehouseTable("fact_payment", "fact", _columns(
        ("payment_id", INT), *_FACT_TIMES, ("transaction_id", INT), ("counterparty_id", INT),
        ("payment_amount", MONEY), ("currency_id", INT), ("payment_type_id", INT),
        ("paid", BOOL), ("payment_date", DATE)) + _CHANGE_COLUMNS,
        ("payment_id", "last_updated_date", "last_updated_time", SOURCE_LSN),
        "payment_record_id",
        {**_FACT_DATES, "payment_date": "dim_date", "transaction_id": "dim_transaction",
         "counterparty_id": "dim_counterparty", "currency_id": "dim_currency",
         "payment_type_id": "dim_payment_type"}),
)

#: Every warehouse table by name, dimensions first: the order in which load writes them.
TABLES: dict[str, WarehouseTable] = {t.name: t for t in _DIMENSIONS + _FACTS}


def mermaid_er_diagram() -> str:
    """The star schema as a Mermaid ``erDiagram`` (every table, its columns with their SQL
    types, keys marked ``PK``/``UK``/``FK``, one relationship per foreign key): what
    ``docs/warehouse.md`` shows, kept equal to it by a test; ``python -m
    totes.contracts.star_schema`` prints it."""
    lines = ["erDiagram"]
    for table in TABLES.values():
        lines.append(f"    {table.name} {{")
        if table.surrogate_key:
            lines.append(f"        serial {table.surrogate_key} PK")
        for column in table.columns:
            marks = []
            if column.name in table.merge_key:
                marks.append("UK" if table.surrogate_key else "PK")
            if column.name in table.foreign_keys:
                marks.append("FK")
            kind = column.sql_type.replace(" ", "").replace(",", "_").replace("(", "_") \
                .replace(")", "")
            lines.append(f"        {kind} {column.name}{' ' + ', '.join(marks) if marks else ''}")
        lines.append("    }")
    for table in TABLES.values():
        for name, target in table.foreign_keys.items():
            lines.append(f"    {target} ||--o{{ {table.name} : {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid_er_diagram())
