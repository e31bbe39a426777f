"""Column conversions shared by the dimension and fact rules, each failing with a
:class:`DataError` that names the table, the row's id and the column."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from totes.utils.errors import DataError
from totes.utils.star_schema import WarehouseTable


def _first(mask) -> int:
    return pc.index(mask, True).as_py()


def text_to_date(values, ids, table: str, id_column: str, column: str) -> pa.Array:
    """Parse text dates that must be exactly ``YYYY-MM-DD`` (as ToteSys stores them) into
    date32; nulls stay null.

    Raises:
        DataError: ``sales_order row sales_order_id=12: agreed_delivery_date '2024-1-5' is not
            a YYYY-MM-DD date``.
    """
    parsed = pc.strptime(values, format="%Y-%m-%d", unit="s", error_is_null=True)
    # Formatting back must give the same text: rejects '2024-1-5' and days past the month's
    # end (which strptime rolls over into the next month).
    same = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), values)
    bad = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(same, False)))
    if pc.any(bad).as_py():
        i = _first(bad)
        raise DataError(f"{table} row {id_column}={ids[i].as_py()}: {column} "
                        f"{values[i].as_py()!r} is not a YYYY-MM-DD date")
    return parsed.cast(pa.date32())


def conform(columns: dict, target: WarehouseTable, source_table: str, id_column: str) -> pa.Table:
    """Build ``target``'s table from ``columns`` (name → array, in any order) cast to the
    warehouse types.

    Raises:
        DataError: a column the warehouse declares NOT NULL holds a null (names the row's
            id), or a value does not fit the warehouse type.
    """
    ids = columns[id_column] if id_column in columns else None
    arrays = []
    for column in target.columns:
        values = columns[column.name]
        if not column.nullable and values.null_count:
            i = _first(pc.is_null(values))
            raise DataError(f"{source_table} row {id_column}={ids[i].as_py()}: {column.name} "
                            f"is empty but {target.name}.{column.name} is NOT NULL")
        try:
            arrays.append(values.cast(column.arrow_type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{source_table}: {column.name} does not fit "
                            f"{target.name}.{column.name} ({column.sql_type}): {exc}") from None
    return pa.table(arrays, schema=target.arrow_schema())
