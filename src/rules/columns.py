"""Column conversions shared by the dimension and fact rules. Each records the rows that break
it in a :class:`~totes.contracts.quarantine.Violations` (naming the table, the row's id and the
column) instead of failing the batch; :func:`conform` then keeps the rows that passed."""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.quarantine import Checked, Violations
from totes.contracts.star_schema import TIME, Column, WarehouseTable

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError)


def text_to_date(values, violations: Violations, column: str) -> pa.Array:
    """Parse text dates that must be exactly ``YYYY-MM-DD`` (as ToteSys stores them) into
    date32; nulls stay null. A text that is not such a date becomes null and its row a
    ``text_date`` violation: ``sales_order row sales_order_id=12: agreed_delivery_date
    '2024-1-5' is not a YYYY-MM-DD date``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    # A column of dates repeats a few hundred values: parse each distinct text once.
    encoded = values.dictionary_encode()
    texts = encoded.dictionary
    parsed = pc.strptime(texts, format="%Y-%m-%d", unit="s", error_is_null=True)
    # Formatting back must give the same text: rejects '2024-1-5' and days past the month's
    # end (which strptime rolls over into the next month).
    same = pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), texts), False)
    dates = pc.if_else(same, parsed, pa.scalar(None, pa.timestamp("s"))).cast(pa.date32())
    bad = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(pc.take(same, encoded.indices),
                                                              False)))
    violations.add(bad, column, "text_date", lambda v: f"{v!r} is not a YYYY-MM-DD date", values)
    return pc.take(dates, encoded.indices)


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


def rows_that_do_not_fit(values, arrow_type: pa.DataType, offset: int = 0) -> list[int]:
    """The indices of the values that ``cast`` to ``arrow_type`` rejects, found by halving:
    O(k log n) casts of slices for k bad values, no per-row Python."""
    try:
        values.cast(arrow_type)
        return []
    except _CAST_ERRORS:
        if len(values) == 1:
            return [offset]
    middle = len(values) // 2
    return (rows_that_do_not_fit(values.slice(0, middle), arrow_type, offset)
            + rows_that_do_not_fit(values.slice(middle), arrow_type, offset + middle))


def _not_null_problem(table: str, column: Column, value: object) -> str:
    return f"is empty but {table}.{column.name} is NOT NULL"


def _fits_problem(table: str, column: Column, value: object) -> str:
    return f"{value} does not fit {table}.{column.name} ({column.sql_type})"


def conform(columns: dict, target: WarehouseTable, violations: Violations) -> Checked:
    """Build ``target``'s rows from ``columns`` (name → array, one per column of ``target``,
    aligned with ``violations.rows``) cast to the warehouse types, keeping the rows that
    break no rule.

    Violations recorded here: ``not_null`` (a column the warehouse declares NOT NULL is
    empty) and ``fits_type`` (``payment row payment_id=7: payment_amount 123456789.00 does not
    fit fact_payment.payment_amount (numeric(10, 2))``). Rows with an earlier violation keep
    it (one per row).
    """
    arrays, cast = {}, {}
    for column in target.columns:
        values = columns[column.name]
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        arrays[column.name] = values
        if not column.nullable and values.null_count:
            violations.add(pc.is_null(values), column.name, "not_null",
                           partial(_not_null_problem, target.name, column))
        try:
            cast[column.name] = values.cast(column.arrow_type)
        except _CAST_ERRORS:
            violations.add(rows_that_do_not_fit(values, column.arrow_type), column.name,
                           "fits_type", partial(_fits_problem, target.name, column), values)
    if not len(violations):
        return Checked(pa.table([cast[c.name] for c in target.columns],
                                schema=target.arrow_schema()))
    good = pc.invert(violations.bad())
    kept = [arrays[c.name].filter(good).cast(c.arrow_type) for c in target.columns]
    return Checked(pa.table(kept, schema=target.arrow_schema()), violations.held())
