"""The source schema a lake batch was read with, its versions, and the schema contract that
decides what a change of the source's schema does.

**The record.** Every batch a polled extract writes keeps, in its footer's ``totes.schema``
(UTF-8 JSON), the source schema it was read with and the table's schema version::

    {"version": 2,
     "columns": [{"name": "units_sold", "type": "int64", "source_type": "bigint",
                  "nullable": false}, ...],
     "changes": [{"column": "units_sold", "change": "widened", "old_type": "integer",
                  "new_type": "bigint", "action": "evolved"}],
     "changed_at": "2026-12-05 03:40:11.123456"}

(and ``"discarded": ["memo"]`` when the contract leaves new source columns out of the lake).

``type`` is the lake's Arrow type of the column (what the batch's Parquet holds), and
``source_type`` the source's type as its catalog prints it. ``version`` starts at 1 and goes up
by one at each batch whose source schema differs from the newest batch's; ``changes`` (empty
when none) and ``changed_at`` (the extract's moment, UTC, of the batch that brought the
change) say what changed. A batch without the record (written before it existed, or by the
change log's reader) reads as version 1, its columns those of its Parquet schema.

**The contract** (``schema_contract`` in the pipeline file, dlt's vocabulary): ``columns``
decides what a new column does (``evolve``: kept from the batch that brought it;
``freeze``: the table stops, naming it; ``discard_value``: left out of the lake), and
``data_type`` what a narrowing or incompatible type change does (``freeze``: the table
stops, naming the column and both types; ``discard_value``: the lake keeps the column's
type, each value is cast to it, and a value that does not cast is NULL with its text kept in
:data:`~totes.contracts.quarantine.UNREADABLE`, so transform quarantines it and the row
lands). A widening the lake's type can hold always evolves: integer → bigint, numeric
precision up, varchar length up, varchar → text, timestamp precision up, an integer into a
numeric with room for it. A dropped column that transform reads stops the table (the catalog
check names it); another is recorded, and later batches simply lack it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from totes.contracts.cdc import CDC_COLUMNS
from totes.contracts.errors import LakeError, SourceSchemaError
from totes.contracts.quarantine import UNREADABLE, add_unreadable, unreadable_field

SCHEMA_KEY = b"totes.schema"
#: The version of a table's batches written before the record existed.
FIRST_VERSION = 1
#: The lake's type of a PostgreSQL ``numeric`` without precision (dlt's default decimal).
UNBOUNDED_DECIMAL = pa.decimal128(38, 9)
#: Field metadata that marks a column read as :data:`UNBOUNDED_DECIMAL`: a value beyond it is
#: read as unreadable, and follows the contract's ``data_type``.
UNBOUNDED_MARK = b"totes.unbounded"

ColumnsMode = Literal["evolve", "freeze", "discard_value"]
DataTypeMode = Literal["freeze", "discard_value"]


class SchemaContract(BaseModel):
    """A table's schema contract, resolved (every key has its value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: ColumnsMode = "evolve"
    data_type: DataTypeMode = "freeze"


class ColumnRecord(BaseModel):
    """One column of a batch's source schema: the lake's Arrow type, the source's type (None
    when not known: a batch of an earlier release) and whether the source lets it be NULL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    source_type: Optional[str] = None
    nullable: Optional[bool] = None


class SchemaChange(BaseModel):
    """One change between a batch's source schema and the newest batch's before it.

    ``change``: ``added``, ``dropped``, ``widened``, ``narrowed``, ``changed`` (neither:
    integer → text), ``nullability``; ``action``: what the contract did with it
    (``evolved``: the lake follows the source; ``discarded``: a new column left out;
    ``values_cast``: the lake keeps its type, values cast; ``recorded``: a dropped column
    or a nullability change, noted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    change: Literal["added", "dropped", "widened", "narrowed", "changed", "nullability"]
    old_type: Optional[str] = None
    new_type: Optional[str] = None
    action: Literal["evolved", "discarded", "values_cast", "recorded"]

    def describe(self) -> str:
        """``units_sold integer → bigint (widened)``, ``notes added (text)``."""
        if self.change == "added":
            return f"{self.column} added ({self.new_type})" + \
                (", left out" if self.action == "discarded" else "")
        if self.change == "dropped":
            return f"{self.column} dropped (was {self.old_type})"
        suffix = ", values cast to the lake's type" if self.action == "values_cast" else ""
        return f"{self.column} {self.old_type} → {self.new_type} ({self.change}{suffix})"


class SchemaRecord(BaseModel):
    """A batch's ``totes.schema`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = FIRST_VERSION
    columns: list[ColumnRecord]
    changes: list[SchemaChange] = []
    changed_at: Optional[str] = None
    #: Source columns the contract (``columns: discard_value``) leaves out of the lake: a
    #: later batch does not count them as new again. Absent in records of earlier releases.
    discarded: list[str] = []

    def column(self, name: str) -> Optional[ColumnRecord]:
        """The column named ``name``, None when the schema has none."""
        return next((c for c in self.columns if c.name == name), None)


def schema_footer(record: SchemaRecord) -> dict[bytes, str]:
    """The footer entry of ``record``."""
    return {SCHEMA_KEY: record.model_dump_json(
        exclude_none=True, exclude=None if record.discarded else {"discarded"})}


def parse_schema_record(metadata: Optional[dict], where: str) -> Optional[SchemaRecord]:
    """The ``totes.schema`` of a footer's key-value ``metadata``; None when it has none.

    Raises:
        LakeError: the entry is not a schema record (``where`` names the file).
    """
    raw = (metadata or {}).get(SCHEMA_KEY)
    if raw is None:
        return None
    try:
        return SchemaRecord.model_validate_json(raw)
    except ValueError as exc:
        raise LakeError(f"{where} has a malformed totes.schema in its footer: {exc}") from None


def record_of_arrow(schema: pa.Schema) -> SchemaRecord:
    """The record of a batch written without one (version 1): its Parquet schema's columns,
    without :data:`UNREADABLE` and the change columns, their source types unknown."""
    return SchemaRecord(columns=[ColumnRecord(name=f.name, type=str(f.type))
                                 for f in schema if f.name != UNREADABLE
                                 and f.name not in CDC_COLUMNS])


# ---- Arrow types as text -----------------------------------------------------------------
_SIMPLE = {str(t): t for t in (
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(),
    pa.uint64(), pa.bool_(), pa.date32(), pa.float32(), pa.float64(), pa.string(),
    pa.large_string(), pa.binary(), pa.null(), pa.time64("us"))}
_DECIMAL_TEXT = re.compile(r"^decimal(?:128|256)?\((\d+), ?(\d+)\)$")
_TIMESTAMP_TEXT = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]$")


def arrow_type_of(text: str) -> pa.DataType:
    """The Arrow type a record's ``type`` names (``str()`` of the type: ``int32``,
    ``decimal128(10, 2)``, ``timestamp[ms, tz=UTC]``).

    Raises:
        LakeError: a type this module does not know.
    """
    if text in _SIMPLE:
        return _SIMPLE[text]
    match = _DECIMAL_TEXT.match(text)
    if match:
        return pa.decimal128(int(match.group(1)), int(match.group(2)))
    match = _TIMESTAMP_TEXT.match(text)
    if match:
        return pa.timestamp(match.group(1), tz=match.group(2))
    raise LakeError(f"the lake's schema record names an unknown Arrow type {text!r}")


# ---- how a type changed ------------------------------------------------------------------
_UNITS = {"s": 0, "ms": 1, "us": 2, "ns": 3}
_UNBOUNDED_TEXT = {"text", "character varying", "varchar", "longtext", "mediumtext",
                   "tinytext"}
_LENGTH = re.compile(r"^(?:character varying|varchar|character|char|bpchar)\((\d+)\)$")


def _text_length(source_type: Optional[str]) -> Optional[float]:
    """The most characters a text type holds (inf: unbounded), None when not a text type
    this module knows."""
    if source_type is None:
        return None
    kind = source_type.lower()
    if kind in _UNBOUNDED_TEXT:
        return float("inf")
    match = _LENGTH.match(kind)
    return float(match.group(1)) if match else None


def _integer_digits(kind: pa.DataType) -> int:
    return kind.precision - kind.scale


def classify(old_type: pa.DataType, new_type: pa.DataType, old_source: Optional[str] = None,
             new_source: Optional[str] = None) -> str:
    """How a column's type changed from ``old_type`` (the lake's; ``old_source`` the source
    type it was read as) to ``new_type`` (``new_source``): ``same``, ``widened`` (every value
    of the old type is one of the new: the lake may take the new type), ``narrowed`` (every
    value of the new type is one of the old) or ``changed`` (neither)."""
    if old_type == new_type:
        if pa.types.is_string(old_type) or pa.types.is_large_string(old_type):
            old_length, new_length = _text_length(old_source), _text_length(new_source)
            if old_source == new_source or old_length is None or new_length is None:
                return "same" if old_source == new_source or None in (old_source, new_source) \
                    else "changed"
            return "same" if old_length == new_length else \
                "widened" if new_length > old_length else "narrowed"
        return "same"
    ints = pa.types.is_integer
    if ints(old_type) and ints(new_type) and pa.types.is_signed_integer(old_type) == \
            pa.types.is_signed_integer(new_type):
        return "widened" if new_type.bit_width > old_type.bit_width else "narrowed"
    if pa.types.is_decimal(old_type) and pa.types.is_decimal(new_type):
        more = (_integer_digits(new_type) >= _integer_digits(old_type),
                new_type.scale >= old_type.scale)
        fewer = (_integer_digits(new_type) <= _integer_digits(old_type),
                 new_type.scale <= old_type.scale)
        return "widened" if all(more) else "narrowed" if all(fewer) else "changed"
    digits = {8: 3, 16: 5, 32: 10, 64: 19}
    if pa.types.is_signed_integer(old_type) and pa.types.is_decimal(new_type):
        return "widened" if _integer_digits(new_type) >= digits[old_type.bit_width] \
            else "changed"
    if pa.types.is_decimal(old_type) and pa.types.is_signed_integer(new_type):
        return "narrowed" if old_type.scale == 0 and \
            _integer_digits(old_type) >= digits[new_type.bit_width] else "changed"
    if pa.types.is_timestamp(old_type) and pa.types.is_timestamp(new_type) and \
            (old_type.tz is None) == (new_type.tz is None):
        return "widened" if _UNITS[new_type.unit] > _UNITS[old_type.unit] else "narrowed"
    if pa.types.is_floating(old_type) and pa.types.is_floating(new_type):
        return "widened" if new_type.bit_width > old_type.bit_width else "narrowed"
    return "changed"


# ---- the contract's decision ---------------------------------------------------------------
@dataclass(frozen=True)
class SourceColumn:
    """A column as the source's catalog gives it: its name, the Arrow type it is read as,
    its source type, and whether it may be NULL (None: not known)."""

    name: str
    arrow_type: pa.DataType
    source_type: Optional[str] = None
    nullable: Optional[bool] = None
    unbounded: bool = False


@dataclass(frozen=True)
class SchemaDecision:
    """What the contract decided for one batch: the ``record`` its footer keeps, the lake
    schema it is written with (:data:`UNREADABLE` last), the columns whose values are cast
    from the source's type to the lake's (``casts``), and the columns whose values the lake
    cannot hold stop the table (``frozen_values``: unbounded numerics under ``data_type:
    freeze``)."""

    table: str
    record: SchemaRecord
    lake_schema: pa.Schema
    casts: dict[str, pa.DataType] = field(default_factory=dict)
    frozen_values: frozenset[str] = frozenset()

    @property
    def changes(self) -> list[SchemaChange]:
        return self.record.changes

    def footer(self) -> dict[bytes, str]:
        """The batch footer's ``totes.schema`` entry."""
        return schema_footer(self.record)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` (read in the source's types) as the lake schema: columns left out are
        dropped, and a value of a cast column that the lake's type cannot hold is NULL, its
        text added to :data:`UNREADABLE`.

        Raises:
            SourceSchemaError: a column of ``frozen_values`` holds a value the lake's type
                cannot (its text was read into :data:`UNREADABLE`), naming table, column and
                value.
        """
        unreadable = batch.column(UNREADABLE) if UNREADABLE in batch.schema.names \
            else pa.nulls(batch.num_rows, pa.string())
        if self.frozen_values and unreadable.null_count < len(unreadable):
            self._stop_on_frozen(unreadable)
        found: Optional[list] = None
        arrays = []
        for lake_field in self.lake_schema:
            if lake_field.name == UNREADABLE:
                continue
            values = batch.column(lake_field.name)
            if lake_field.name in self.casts and values.type != lake_field.type:
                values, bad = cast_or_null(values, lake_field.type)
                if bad:
                    found = found if found is not None else unreadable.to_pylist()
                    texts = values_as_text(batch.column(lake_field.name), bad)
                    for i, text in zip(bad, texts):
                        found[i] = add_unreadable(found[i], lake_field.name, text)
            arrays.append(values)
        arrays.append(pa.array(found, pa.string()) if found is not None else unreadable)
        return pa.RecordBatch.from_arrays(arrays, schema=self.lake_schema)

    def _stop_on_frozen(self, unreadable: pa.Array) -> None:
        for i in pc.indices_nonzero(pc.is_valid(unreadable)).to_pylist():
            for column, text in json.loads(unreadable[i].as_py()).items():
                if column in self.frozen_values:
                    raise SourceSchemaError(
                        f"{self.table}.{column} holds {text!r}, beyond "
                        f"{UNBOUNDED_DECIMAL} (the lake's type of a numeric without "
                        "precision), and the table's schema_contract says data_type: freeze; "
                        "declare the column numeric(p,s) in the source, or set data_type: "
                        "discard_value to quarantine such values")


def cast_or_null(values: pa.Array, kind: pa.DataType) -> tuple[pa.Array, list[int]]:
    """``values`` cast to ``kind``, each value that does not cast NULL; and the indices of
    those values. Found by halving: O(k log n) casts for k bad values."""
    bad = _not_castable(values, kind, 0)
    if not bad:
        return values.cast(kind), []
    mask = [False] * len(values)
    for i in bad:
        mask[i] = True
    kept = pc.if_else(pa.array(mask, pa.bool_()), pa.scalar(None, values.type), values)
    return kept.cast(kind), bad


def _not_castable(values: pa.Array, kind: pa.DataType, offset: int) -> list[int]:
    try:
        values.cast(kind)
        return []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(values) == 1:
            return [offset]
    middle = len(values) // 2
    return (_not_castable(values.slice(0, middle), kind, offset)
            + _not_castable(values.slice(middle), kind, offset + middle))


def values_as_text(values: pa.Array, indices: list[int]) -> list[str]:
    """The values at ``indices`` as text (what :data:`UNREADABLE` keeps)."""
    return [str(values[i].as_py()) for i in indices]


def decide(table: str, previous: Optional[SchemaRecord], source: list[SourceColumn],
           contract: SchemaContract, read_by_rules: frozenset[str] = frozenset(),
           moment: Optional[str] = None) -> SchemaDecision:
    """Compare the source's columns with ``previous`` (the newest batch's record; None: the
    table's first batch) and decide, by ``contract``, the next batch's record and lake
    schema (see the module docstring). ``read_by_rules`` are the columns transform reads
    (a dropped one is refused by the catalog check before this); ``moment`` (UTC text) is the
    extract's, recorded as ``changed_at`` when something changed.

    Raises:
        SourceSchemaError: the contract freezes what changed: a new column under ``columns:
            freeze`` (naming it and its type), a narrowing or incompatible type change under
            ``data_type: freeze`` (naming the column, the old and the new type).
    """
    changes: list[SchemaChange] = []
    columns: list[ColumnRecord] = []
    fields: list[pa.Field] = []
    casts: dict[str, pa.DataType] = {}
    discarded: list[str] = []
    names = {c.name for c in source}
    # (a record of an earlier release has no ``discarded``: its changes name them)
    left_out = set(previous.discarded) | {c.column for c in previous.changes
                                          if c.action == "discarded"} \
        if previous is not None else set()
    for column in source:
        old = previous.column(column.name) if previous is not None else None
        source_text = column.source_type or str(column.arrow_type)
        if previous is not None and old is None and column.name in left_out and \
                contract.columns == "discard_value":
            discarded.append(column.name)  # left out before, and still: not a change
            continue
        if previous is not None and old is None:
            if contract.columns == "freeze":
                raise SourceSchemaError(
                    f"table {table} has a new column {column.name!r} ({source_text}) and its "
                    "schema_contract says columns: freeze; set columns: evolve to keep it, or "
                    "discard_value to leave it out of the lake")
            kept = contract.columns == "evolve"
            changes.append(SchemaChange(column=column.name, change="added",
                                        new_type=source_text,
                                        action="evolved" if kept else "discarded"))
            if not kept:
                discarded.append(column.name)
                continue
            lake_type = column.arrow_type
        elif old is None:
            lake_type = column.arrow_type
        else:
            lake_type, change = _changed_type(table, old, column, contract)
            if change is not None:
                changes.append(change)
            if lake_type != column.arrow_type:  # this change's cast, or an earlier one's
                casts[column.name] = lake_type
            if old.nullable is not None and column.nullable is not None and \
                    old.nullable != column.nullable and change is None:
                changes.append(SchemaChange(
                    column=column.name, change="nullability",
                    old_type="NULL" if old.nullable else "NOT NULL",
                    new_type="NULL" if column.nullable else "NOT NULL", action="recorded"))
        columns.append(ColumnRecord(name=column.name, type=str(lake_type),
                                    source_type=column.source_type, nullable=column.nullable))
        fields.append(pa.field(column.name, lake_type))
    for old in previous.columns if previous is not None else []:
        if old.name not in names:
            changes.append(SchemaChange(column=old.name, change="dropped",
                                        old_type=old.source_type or old.type,
                                        action="recorded"))
    version = previous.version if previous is not None else FIRST_VERSION
    if changes:
        version += 1
    record = SchemaRecord(version=version, columns=columns, changes=changes,
                          changed_at=moment if changes else
                          (previous.changed_at if previous is not None else None),
                          discarded=discarded)
    frozen = frozenset(c.name for c in source if c.unbounded) \
        if contract.data_type == "freeze" else frozenset()
    return SchemaDecision(table, record, pa.schema(fields).append(unreadable_field()), casts,
                          frozen)


def _changed_type(table: str, old: ColumnRecord, column: SourceColumn,
                  contract: SchemaContract) -> tuple[pa.DataType, Optional[SchemaChange]]:
    """The lake's type of ``column`` after the newest batch's ``old``, and the change (None
    when its type did not change)."""
    old_type = arrow_type_of(old.type)
    if old.source_type is not None and old.source_type == column.source_type:
        return old_type, None  # as before (the lake's type may be an earlier change's)
    how = classify(old_type, column.arrow_type, old.source_type, column.source_type)
    if how == "same":
        return old_type, None
    old_text = old.source_type or old.type
    new_text = column.source_type or str(column.arrow_type)
    if how == "widened":
        return column.arrow_type, SchemaChange(column=column.name, change="widened",
                                               old_type=old_text, new_type=new_text,
                                               action="evolved")
    if contract.data_type == "freeze":
        raise SourceSchemaError(
            f"{table}.{column.name} changed type from {old_text} to {new_text} ({how}: "
            f"the lake holds {old.type}) and the table's schema_contract says data_type: "
            "freeze; change it back in the source, or set data_type: discard_value to keep "
            "the lake's type and quarantine the values that do not fit it")
    return old_type, SchemaChange(column=column.name, change=how, old_type=old_text,
                                  new_type=new_text, action="values_cast")
