"""The quarantine: source row versions that break a rule of the star schema, set aside with the
rule they broke so that the rest of their batch goes on.

Transform checks every row version against the rules (a value the lake's type could not
hold, a text date that is not ``YYYY-MM-DD``, an empty NOT NULL column, a value too large for
its warehouse column, a
currency code without an ISO 4217 name, a row whose reference row is missing). A row that
breaks one is not written to the star schema; it is written, whole and as it came from the
lake, to a quarantine file of the batch::

    _quarantine/<source_table>/YYYY/MM/DD/HHMMSSffffff.parquet

with the source table's columns plus :data:`RULE_COLUMNS`: ``_totes_key_column``,
``_totes_column``, ``_totes_value`` (as text), ``_totes_rule`` (a short name:
``unreadable``, ``text_date``, ``not_null``, ``fits_type``, ``iso_4217``, ``reference``) and
``_totes_message`` (the :class:`~totes.contracts.errors.DataError` text). One row per row version:
the first rule it breaks. The batch's manifest names its quarantine files (so they are
committed with it) and keeps the list of every quarantine file so far.

Nothing is lost: every row version of a fact source ends in its fact table, in the warehouse's
held facts (an orphan waiting for its dimension row, see :mod:`totes.load.held_facts`), or
here. A newer version of the same source row supersedes a quarantined one; ``totes quarantine
--retry`` puts the held ones through the rules again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.errors import DataError

QUARANTINE = "_quarantine"
#: The lake column that keeps, per row version, the source values the lake's types cannot
#: hold (numeric ``NaN``, a timestamp at ``infinity`` or before year 1, a MySQL zero date,
#: bytes that are not UTF-8): JSON text ``{"<column>": "<the value as the source wrote it>",
#: ...}``, null for a row whose every value was read. Such a value is null in its column;
#: transform quarantines the version under the rule ``unreadable``, with the column and the
#: original text. Batches of releases before it have no such column (every value read).
UNREADABLE = "_totes_unreadable"
RULE_COLUMNS = ("_totes_key_column", "_totes_column", "_totes_value", "_totes_rule",
                "_totes_message")
#: The version column of a source row (what orders a row's versions).
VERSION_COLUMN = "last_updated"


def quarantine_prefix(table: str) -> str:
    """``_quarantine/<table>``: where the quarantined row versions of ``table`` are kept."""
    return f"{QUARANTINE}/{table}"


def unreadable_field() -> pa.Field:
    """The :data:`UNREADABLE` column's Arrow field."""
    return pa.field(UNREADABLE, pa.string())


def with_unreadable(schema: pa.Schema) -> pa.Schema:
    """A lake file's schema: the source's columns, then :data:`UNREADABLE`."""
    return schema if UNREADABLE in schema.names else schema.append(unreadable_field())


def add_unreadable(found: Optional[str], column: str, text: str) -> str:
    """The :data:`UNREADABLE` JSON ``found`` (None: none yet) with ``column``'s original
    ``text`` added."""
    values = json.loads(found) if found else {}
    values[column] = text
    return json.dumps(values, ensure_ascii=False)


#: Schema metadata of :func:`concat_quarantined`'s table: the types a column had in the
#: files it was read from, when they differ (``{"units_sold": ["decimal128(12, 2)",
#: "string"]}``), for each column read as text.
SOURCE_TYPES_KEY = b"totes.source_types"


def concat_quarantined(tables: list[pa.Table]) -> pa.Table:
    """Quarantine files read together, whatever schema the source had when each was written:
    a column missing from a file is NULL there, and a column whose type differs between
    files (a source column changed from ``numeric`` to ``text``) is read as text in all of
    them, its original types recorded in the schema's metadata (:data:`SOURCE_TYPES_KEY`).
    """
    if not tables:
        return pa.table({})
    kinds: dict[str, list[pa.DataType]] = {}
    for table in tables:
        for field in table.schema:
            found = kinds.setdefault(field.name, [])
            if field.type not in found:
                found.append(field.type)
    mixed = {name for name, found in kinds.items()
             if len([k for k in found if not pa.types.is_null(k)]) > 1}
    if mixed:
        tables = [_as_text(table, mixed) for table in tables]
    joined = pa.concat_tables(tables, promote_options="default")
    if mixed:
        recorded = {name: [str(k) for k in kinds[name]] for name in sorted(mixed)}
        joined = joined.replace_schema_metadata({SOURCE_TYPES_KEY: json.dumps(recorded)})
    return joined


def _as_text(table: pa.Table, columns: set[str]) -> pa.Table:
    for name in columns & set(table.column_names):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, pa.field(name, pa.string()),
                                 table[name].cast(pa.string()))
    return table


def source_rows(held: pa.Table) -> pa.Table:
    """The source row versions of a quarantine file, without its rule columns."""
    return held.drop_columns([c for c in RULE_COLUMNS if c in held.column_names])


class Violations:
    """The rule violations found in ``rows`` (one table's row versions, or rows derived from
    them that still carry the source columns ``source_columns``), at most one per row: the
    first found.

    ``table`` and ``key_column`` name the source table and its key in messages.
    """

    def __init__(self, table: str, key_column: Optional[str], rows,
                 source_columns: Optional[list[str]] = None):
        self.table, self.key_column, self.rows = table, key_column, rows
        self.source_columns = source_columns or list(rows.schema.names)
        self._errors: dict[int, tuple[str, DataError]] = {}

    def __len__(self) -> int:
        return len(self._errors)

    def add(self, where, column: Optional[str], rule: str,
            problem: Callable[[object], str], values=None) -> None:
        """Record that the rows ``where`` (a boolean mask or a list of indices) break ``rule``
        on ``column``; ``problem(value)`` says how (``"'2024-1-5' is not a YYYY-MM-DD
        date"``), ``values`` are the column's values (for the message and the record)."""
        if isinstance(where, (pa.Array, pa.ChunkedArray)):
            if not pc.any(pc.fill_null(where, False)).as_py():
                return
            where = pc.indices_nonzero(pc.fill_null(where, False)).to_pylist()
        ids = self._ids()
        for i in where:
            if i in self._errors:
                continue
            value = values[i].as_py() if values is not None else None
            self._errors[i] = (rule, DataError(
                self.table, problem(value), key_column=self.key_column if ids else None,
                row_id=ids[i].as_py() if ids else None, column=column, value=value))

    def _ids(self):
        if self.key_column and self.key_column in self.rows.schema.names:
            return self.rows.column(self.key_column)
        return None

    def bad(self) -> pa.Array:
        """A boolean mask of the rows that broke a rule."""
        mask = [False] * self.rows.num_rows
        for i in self._errors:
            mask[i] = True
        return pa.array(mask, pa.bool_())

    def errors(self) -> list[DataError]:
        """The violations, in row order."""
        return [error for _, (_, error) in sorted(self._errors.items())]

    def held(self) -> Optional[pa.Table]:
        """The source row versions that broke a rule, with the rule columns; None if none."""
        if not self._errors:
            return None
        order = sorted(self._errors)
        picked = pa.table(self.rows).select(self.source_columns).take(pa.array(order, pa.int64()))
        records = [self._errors[i] for i in order]
        extra = {
            "_totes_key_column": [e.key_column for _, e in records],
            "_totes_column": [e.column for _, e in records],
            "_totes_value": [None if e.value is None else str(e.value) for _, e in records],
            "_totes_rule": [rule for rule, _ in records],
            "_totes_message": [str(e) for _, e in records],
        }
        for name in RULE_COLUMNS:
            picked = picked.append_column(name, pa.array(extra[name], pa.string()))
        return picked


@dataclass
class Checked:
    """What a rule gives back: the ``rows`` that passed (typed as their warehouse table) and
    the source row versions it ``held`` in quarantine (None when every row passed)."""

    rows: Optional[pa.Table]
    held: Optional[pa.Table] = None
