"""Column conversions shared by the dimension and fact rules, each failing with a
:class:`DataError` that names the table, the row's id and the column."""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from totes.utils.errors import DataError
from totes.utils.star_schema import TIME, WarehouseTable


def _first(mask) -> int:
    return pc.index(mask, True).as_py()


def _row_id(ids, i: int):
    return ids[i].as_py() if ids is not None else None


def _row_error(table: str, id_column: Optional[str], ids, i: Optional[int], column: str,
               problem: str, value=None) -> DataError:
    if ids is None or i is None:
        return DataError(table, problem, column=column, value=value)
    return DataError(table, problem, key_column=id_column, row_id=_row_id(ids, i),
                     column=column, value=value)


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
        value = values[i].as_py()
        raise _row_error(table, id_column, ids, i, column,
                         f"{value!r} is not a YYYY-MM-DD date", value)
    return parsed.cast(pa.date32())


def split_timestamp(values) -> tuple[pa.Array, pa.Array]:
    """``(date, time of day)`` of timestamps (UTC for a ``timestamptz`` source), as the
    warehouse's ``date`` and ``time`` columns: date32 and time64[us].

    The rule, in this one place: microseconds are kept (the warehouse's ``time`` is
    ``time(6)``); anything finer, which neither PostgreSQL nor MySQL stores, is truncated to
    the microsecond. Null stays null.
    """
    unit_type = values.type
    if unit_type.unit == "ns":
        values = values.cast(pa.timestamp("us", unit_type.tz), safe=False)
    return values.cast(pa.date32()), values.cast(TIME[1])


def _first_that_does_not_fit(values, arrow_type: pa.DataType) -> int:
    """The index of the first value that ``cast`` rejects (``values`` as a whole does), found
    by halving: O(log n) casts of slices, no per-row Python."""
    low, high = 0, len(values)  # the first bad value is in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            values.slice(low, middle - low).cast(arrow_type)
            low = middle
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            high = middle
    return low


def conform(columns: dict, target: WarehouseTable, source_table: str,
            id_column: Optional[str]) -> pa.Table:
    """Build ``target``'s table from ``columns`` (name → array, in any order) cast to the
    warehouse types. ``columns[id_column]`` names rows in errors (when present).

    Raises:
        DataError: a column the warehouse declares NOT NULL holds a null, or a value does not
            fit the warehouse type (``payment row payment_id=7: payment_amount 123456789.00
            does not fit fact_payment.payment_amount (numeric(10, 2))``).
    """
    ids = columns.get(id_column) if id_column is not None else None
    arrays = []
    for column in target.columns:
        values = columns[column.name]
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not column.nullable and values.null_count:
            i = _first(pc.is_null(values))
            raise _row_error(source_table, id_column, ids, i, column.name,
                             f"is empty but {target.name}.{column.name} is NOT NULL")
        try:
            arrays.append(values.cast(column.arrow_type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            i = _first_that_does_not_fit(values, column.arrow_type)
            value = values[i].as_py()
            raise _row_error(source_table, id_column, ids, i, column.name,
                             f"{value} does not fit {target.name}.{column.name} "
                             f"({column.sql_type}): {exc}", value) from None
    return pa.table(arrays, schema=target.arrow_schema())
