"""Column conversions shared by the dimension and fact rules. Each records the rows that break
it in a :class:`~totes.contracts.quarantine.Violations` (naming the table, the row's id and the
column) instead of failing the batch; :func:`conform` then keeps the rows that passed."""
from __future__ import annotations

import json
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.cdc import COMMIT_TIME, LSN, OPERATION
from totes.contracts.quarantine import UNREADABLE, Checked, Violations
from totes.contracts.source_tables import SOURCE_TABLES
from totes.contracts.star_schema import (IS_DELETED, SOURCE_LSN, TIME, Column,
                                         WarehouseTable)

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


def version_columns(rows, stamp: str = "last_updated") -> dict[str, pa.Array]:
    """What makes a lake row a version, as the warehouse keeps it: ``source_lsn`` (the
    commit's log position, 0 for a version read by a cursor or in a copy), ``is_deleted``
    (the version is a delete read from the log or found by a key comparison) and ``stamp``,
    the row's ``last_updated``, except that a delete is stamped with the moment of the
    delete (its commit time, UTC) instead of the last update's, or with the last update's
    when that is later: a MySQL binlog gives commit times in whole seconds, so a row updated
    at 12:00:00.350 and deleted in the same second has a commit time of 12:00:00, and the
    delete must still come after the version it deletes. Rows without the change
    columns (:data:`totes.contracts.cdc.CDC_COLUMNS`: a polled table's) are versions at 0,
    not deleted."""
    count, names = len(rows), rows.schema.names
    stamps = rows[stamp] if isinstance(rows, pa.Table) else rows.column(stamp)
    if isinstance(stamps, pa.ChunkedArray):
        stamps = stamps.combine_chunks()
    if LSN not in names:
        return {SOURCE_LSN: pa.repeat(pa.scalar(0, pa.int64()), count),
                IS_DELETED: pa.repeat(pa.scalar(False), count), stamp: stamps}
    lsn, operation, committed = (rows[n] if isinstance(rows, pa.Table) else rows.column(n)
                                 for n in (LSN, OPERATION, COMMIT_TIME))
    deleted = pc.fill_null(pc.equal(operation, "delete"), False)
    kind = stamps.type
    moment = pa.timestamp("us", kind.tz) if pa.types.is_timestamp(kind) else kind
    # A UTC commit time as the column's type: the same instant (naive columns hold UTC).
    commit = committed.cast(pa.timestamp("us", "UTC")).cast(
        pa.timestamp("us", kind.tz) if kind.tz else pa.timestamp("us"))
    own = stamps.cast(moment)
    stamped = pc.if_else(deleted, pc.max_element_wise(commit, own, skip_nulls=True), own)
    return {SOURCE_LSN: pc.fill_null(lsn, 0).cast(pa.int64()), IS_DELETED: deleted,
            stamp: stamped}


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


def unreadable(violations: Violations) -> None:
    """Record the rows of ``violations.rows`` that hold a value the lake's type could not
    hold (:data:`totes.contracts.quarantine.UNREADABLE`): rule ``unreadable``, the column
    and the value as the source wrote it (``sales_order row sales_order_id=20: unit_price
    'NaN' cannot be held by the lake's type for the column (kept as text)``; the first such
    column of a row). Only the columns the rules read
    (:data:`totes.contracts.source_tables.SOURCE_TABLES`) count: a value of another column
    (one a schema contract's ``discard_value`` could not cast) keeps its row in the star
    schema, the value kept in the lake."""
    rows = violations.rows
    if UNREADABLE not in rows.schema.names:
        return
    found = rows.column(UNREADABLE)
    if isinstance(found, pa.ChunkedArray):
        found = found.combine_chunks()
    if not found.null_count < len(found):
        return
    by_column: dict[str, list[int]] = {}
    texts: list = [None] * len(found)
    read = SOURCE_TABLES[violations.table].columns if violations.table in SOURCE_TABLES \
        else None
    for i in pc.indices_nonzero(pc.is_valid(found)).to_pylist():
        held = [(column, text) for column, text in json.loads(found[i].as_py()).items()
                if read is None or column in read]
        if not held:  # only columns no rule reads: the row lands (their values stay in the lake)
            continue
        column, text = held[0]
        by_column.setdefault(column, []).append(i)
        texts[i] = text
    values = pa.array(texts, pa.string())
    for column, where in by_column.items():
        violations.add(where, column, "unreadable", _unreadable_problem, values)


def _unreadable_problem(value: object) -> str:
    return f"{value!r} cannot be held by the lake's type for the column (kept as text)"


def conform(columns: dict, target: WarehouseTable, violations: Violations) -> Checked:
    """Build ``target``'s rows from ``columns`` (name → array, one per column of ``target``,
    aligned with ``violations.rows``) cast to the warehouse types, keeping the rows that
    break no rule.

    Violations recorded here: ``not_null`` (a column the warehouse declares NOT NULL is
    empty) and ``fits_type`` (``payment row payment_id=7: payment_amount 123456789.00 does not
    fit fact_payment.payment_amount (numeric(10, 2))``), after ``unreadable`` (a source value
    the lake could not hold: :func:`unreadable`). Rows with an earlier violation keep it (one
    per row).
    """
    unreadable(violations)
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
