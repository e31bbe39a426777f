"""Reconciliation: does the warehouse still agree with the source?

For every dimension built from a source table, and every fact, the source's current rows are
put through the transform's own rules (:mod:`totes.rules.dimensions`,
:func:`totes.rules.facts.fact_rows`) and compared with the warehouse: a dimension's rows,
a fact's current versions (``<fact>_current``). Three checks:

* **rows**: each expected key is in the warehouse and no other (``missing in the warehouse``,
  ``not in the source``); a row deleted in the source and marked deleted in the warehouse
  (``is_deleted``; left out of ``<fact>_current``) agrees;
* **values**: each column of each key is equal (a fact's ``last_updated_date``/``_time`` too,
  so a lost newer version shows as an older one); a dimension's version columns are left out;
* **sums**: each fact's money column summed per currency.

**The raw layer** (:mod:`totes.load.raw`): each raw table's current rows
(``raw.<table>_current``) are compared with the source table's, on its primary key, column by
column (rows and values as above; a column recorded as dropped is not compared), whether or
not a star-schema rule reads the table. Its entry in ``tables`` names it ``raw.<table>``.

**Pending, held, quarantined.** A source row changed after the warehouse's newest version of
its table (``loaded_through``: a fact's greatest ``last_updated``, a dimension's greatest
``source_last_updated``; for a joined dimension, its reference table's too) is *pending*: the
next load brings it, so it is not a difference. A fact row version waiting for its dimension
row (``totes.held_<fact>``) is *held*; a source row that breaks a rule is *quarantined*
(``totes quarantine`` lists it). Neither is a difference.

**Bounded memory, set-based.** Each source table is read once, in one snapshot, through the
source's own reader (PostgreSQL's ``COPY``, MySQL's streaming cursor) as record batches in key
order. A fact's current versions stream from the warehouse by ``COPY`` in the same order, on
their own connection and thread, and the two streams are merge-joined one source batch at a
time (Arrow joins and comparisons, no row-by-row Python). A dimension is compared whole
(dimensions are small: their source tables are reference data).

Result (``--json``)::

    {"equal": false, "differences": 3, "seconds": 1.2,
     "tables": [{"table": "fact_payment", "source_table": "payment", "source_rows": 15836,
                 "warehouse_rows": 15836, "pending": 0, "held": 0, "quarantined": 0,
                 "differences": 1, "loaded_through": "2024-11-15 14:40:10.123000",
                 "listed": [{"key": {"payment_id": 2}, "column": "payment_amount",
                             "source": "552548.62", "warehouse": "1.00",
                             "problem": "value differs"}]}, ...],
     "sums": [{"table": "fact_payment", "column": "payment_amount", "currency": "GBP",
               "source": "...", "warehouse": "...", "equal": true}, ...]}
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timezone
from decimal import Decimal
from typing import Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from totes.contracts.config import TablePlan
from totes.contracts.errors import ConfigError
from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.partitions import Partition
from totes.contracts.source_tables import SOURCE_TABLES
from totes.contracts.stage_results import (Difference, ReconcileCursor, ReconcileResult,
                                           SumCheck, TableReconciliation)
from totes.contracts.star_schema import IS_DELETED, SOURCE_LSN, TABLES, WarehouseTable
from totes.rules import dimensions as dims
from totes.rules.facts import FACT_SOURCES, fact_rows
from totes.utils import settings
from totes.utils.settings import bookkeeping
from totes.utils.lake import Lake
from totes.utils.manifests import read_manifest, read_repairs
from totes.utils.postgres import Database
from totes.utils.postgres_copy import copy_stream, csv_record_batches
from totes.utils.postgres_merge import column_types
from totes.utils.postgres_reader import key_condition
from totes.utils.source_reader import Job, measuring_pool, reader_for

log = logging.getLogger(__name__)

#: Differences listed per table (the totals count them all).
DEFAULT_LIMIT = 20
#: Bytes of CSV (or of rows, from MySQL) per record batch read from either side: two such
#: batches, their join and its comparison are what a reconciliation holds in memory.
BLOCK_BYTES = 4 << 20

#: dimension → (its source table, the reference table it is joined to, the source's column
#: holding the reference's key).
DIMENSION_SOURCES: dict[str, tuple[str, Optional[str], Optional[str]]] = {
    "dim_design": ("design", None, None),
    "dim_location": ("address", None, None),
    "dim_currency": ("currency", None, None),
    "dim_payment_type": ("payment_type", None, None),
    "dim_transaction": ("transaction", None, None),
    "dim_counterparty": ("counterparty", "address", "legal_address_id"),
    "dim_staff": ("staff", "department", "department_id"),
}


# ---- reading both sides ---------------------------------------------------------------------
@contextlib.contextmanager
def _source_batches(source, table: str, keys: Optional[Sequence[int]] = None,
                    primary_key: Optional[str] = None,
                    key_range: Optional[tuple[Optional[int], Optional[int]]] = None
                    ) -> Iterator[Iterator[pa.RecordBatch]]:
    """The current rows of source ``table`` (with ``keys``: of those primary keys only; with
    ``key_range`` ``(start, before)``: of the primary keys at or after ``start`` and before
    ``before``, either None: unbounded) as record batches, in key order (``primary_key``,
    default the registry's), read in one snapshot through the source's own reader (to be
    read to the end)."""
    primary_key = primary_key or SOURCE_TABLES[table].primary_key
    plan = TablePlan(table=table, primary_key=primary_key, extract_type="full", mode="full",
                     watermark_column=None,
                     partition_column=primary_key if key_range is not None else None)
    part = None
    if key_range is not None:  # a range of keys is a partition of the key column
        start, before = key_range
        part = Partition(0, 1, None if start is None else str(int(start)),
                         None if before is None else str(int(before)))
    reader = reader_for(source)
    doing = f"reading table {table} of the {source.describe()} to reconcile it"
    with source.session(f"totes-reconcile-{table}", doing) as session:
        conn = session.conn
        inspected = reader.inspect(conn, plan)
        reader.begin(conn)
        job = Job(plan, inspected.schema, None, measuring_pool(), BLOCK_BYTES, None)
        with reader.batches(conn, plan, inspected, job, doing, part=part, keys=keys) \
                as batches:
            yield batches
        conn.run("COMMIT")


def _source_table(source, table: str) -> Optional[pa.Table]:
    """The whole current ``table`` of the source (a dimension's: small), None when empty."""
    with _source_batches(source, table) as batches:
        collected = list(batches)
    return pa.Table.from_batches(collected) if collected else None


@contextlib.contextmanager
def _warehouse_batches(conn, sql: str, schema: pa.Schema, table: str
                       ) -> Iterator[Iterator[pa.RecordBatch]]:
    """The rows of ``SELECT`` ``sql`` (columns in ``schema``'s order) as record batches, by
    ``COPY`` (to be read to the end)."""
    doing = f"reading {table} of the warehouse to reconcile it"
    schema = _nullable(schema)
    with copy_stream(conn, f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", doing) as reader:
        yield csv_record_batches(reader, schema, table, BLOCK_BYTES)


def _warehouse_table(conn, sql: str, schema: pa.Schema, table: str) -> pa.Table:
    with _warehouse_batches(conn, sql, schema, table) as batches:
        collected = list(batches)
    return pa.Table.from_batches(collected) if collected else _nullable(schema).empty_table()


def _nullable(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every field nullable (as CSV batches are)."""
    return pa.schema([pa.field(f.name, f.type) for f in schema])


def _scalar(conn, sql: str):
    (value,), = conn.run(sql)
    return value


def _loaded_through(conn, table: WarehouseTable, schema: str,
                    column: str = "source_last_updated"):
    """The newest source version the warehouse holds of ``table`` (in the warehouse schema
    ``schema``; None: no row)."""
    q_table = table.relation(schema)
    if table.kind == "fact":
        return _scalar(conn, f"SELECT max(last_updated_date + last_updated_time) "  # nosec B608
                             f"FROM {q_table}")
    return _scalar(conn, f"SELECT max({quote_ident(column)}) FROM {q_table}")  # nosec B608


def _after(values: pa.ChunkedArray, moment) -> pa.Array:
    """Mask: ``values`` (timestamps) later than ``moment`` (everything when None)."""
    if moment is None:
        return pa.repeat(True, len(values))
    kind = values.type
    # To the column's unit, truncated: a version stamped in microseconds (a delete's commit
    # time) is a bound for a column of milliseconds.
    bound = pa.scalar(moment, pa.timestamp("us")).cast(pa.timestamp(kind.unit), safe=False)
    plain = values.cast(pa.timestamp(kind.unit)) if kind.tz else values
    return pc.fill_null(pc.greater(plain, bound), True)


# ---- the raw layer ---------------------------------------------------------------------------
#: The columns the raw layer adds to the source's (:mod:`totes.load.raw`): not compared.
RAW_COLUMNS = ("_totes_batch", "_totes_operation", "_totes_lsn", "_totes_commit_time",
               "_totes_unreadable")


def _raw_tables(conn) -> list[tuple]:
    """``(table, schema, primary key, watermark column, dropped columns)`` of every raw table
    the warehouse records (``totes.raw_table``) and holds."""
    (exists,), = conn.run(f"SELECT to_regclass('{bookkeeping()}.raw_table') IS NOT NULL")
    if not exists:
        return []
    return [tuple(row) for row in conn.run(
        "SELECT source_table, raw_schema, primary_key, watermark_column, dropped "  # nosec B608
        f"FROM {bookkeeping()}.raw_table WHERE to_regclass(quote_ident(raw_schema) || '.' || "
        "quote_ident(source_table) || '_current') IS NOT NULL ORDER BY source_table")]


def _raw(conn, source, table: str, schema: str, key: str, watermark: Optional[str],
         dropped: Sequence[str], limit: int,
         key_range: Optional[tuple[Optional[int], Optional[int]]] = None
         ) -> TableReconciliation:
    """A raw table's current rows (``<schema>.<table>_current``) against the source table's,
    column by column (the source's columns the raw table holds, less those recorded as
    dropped), both streamed in key order and merge-joined one source batch at a time (with
    ``key_range`` ``(start, before)``: of the keys at or after ``start`` and before
    ``before``, either None: unbounded). A source row whose watermark (the incremental
    table's, else ``last_updated`` when there is one) is after the raw table's newest is
    pending."""
    relation = f"{schema}.{table}"
    held = column_types(conn, qualified(schema, table))
    watermark = watermark or ("last_updated" if "last_updated" in held else None)
    through = _scalar(conn, f"SELECT max({quote_ident(watermark)}) "  # nosec B608: quoted
                            f"FROM {qualified(schema, table)}") if watermark else None
    tally = _Tally(relation, key, limit)
    counts = {"compared": 0, "pending": 0, "warehouse": 0}
    with _source_batches(source, table, primary_key=key, key_range=key_range) \
            as source_batches:
        first = next((b for b in source_batches if b.num_rows), None)
        names = [key] + [f.name for f in (first.schema if first is not None else [])
                         if f.name in held and f.name != key and f.name not in dropped
                         and f.name not in RAW_COLUMNS]
        types = {f.name: f.type for f in first.schema} if first is not None else {}
        # A timestamp with a time zone is compared in UTC, without it.
        wanted = pa.schema([pa.field(n, _naive(types.get(n, pa.int64()))) for n in names])
        listed = ", ".join(f"{quote_ident(n)} AT TIME ZONE 'UTC'" if
                           pa.types.is_timestamp(types.get(n, pa.int64())) and types[n].tz
                           else quote_ident(n) for n in names)
        view = (f"SELECT {listed} FROM {qualified(schema, table + '_current')} "  # nosec
                f"{_range_condition(quote_ident(key), key_range)}"  # B608: quoted names,
                f"ORDER BY {quote_ident(key)}")  # integers
        with _warehouse_batches(conn, view, wanted, relation) as warehouse_batches:
            expected_tables = (pa.table({n: _as_naive(batch.column(n)) for n in names})
                               for batch in _chain([] if first is None else [first],
                                                   source_batches))
            for expected, actual in _aligned(expected_tables, warehouse_batches, key,
                                             _nullable(wanted).empty_table()):
                if expected is None:  # rows after the source's last key
                    _raw_compared(_nullable(wanted).empty_table(), actual, key, names, None,
                                  None, tally, counts)
                else:
                    _raw_compared(expected, actual, key, names, watermark, through, tally,
                                  counts)
    return TableReconciliation(
        table=relation, source_table=table, source_rows=counts["compared"],
        warehouse_rows=counts["warehouse"], pending=counts["pending"],
        differences=tally.count, loaded_through=_text(through), listed=tally.listed,
        key_range=None if key_range is None else list(key_range))


def _range_condition(key: str, key_range: Optional[tuple[Optional[int], Optional[int]]]
                     ) -> str:
    """``WHERE <key> >= start AND <key> < before `` for ``key_range`` (either end None:
    unbounded; integers written out, as COPY takes no bound parameters), or ``""``."""
    if key_range is None or key_range == (None, None):
        return ""
    ends = [f"{key} >= {int(key_range[0])}"] if key_range[0] is not None else []
    ends += [f"{key} < {int(key_range[1])}"] if key_range[1] is not None else []
    return f"WHERE {' AND '.join(ends)} "


def _aligned(source_batches, warehouse_batches, key: str, empty: pa.Table):
    """Merge-join two streams ordered by ``key``: the source's record batches (or
    tables) and the warehouse's record batches. Yields ``(source batch, the warehouse rows
    whose key is at most the batch's highest and were not yielded before)`` for each source
    batch with rows, then ``(None, the warehouse rows after the source's last key)``.
    ``empty`` is the warehouse rows' empty table. At most the warehouse rows up to one
    record batch past the current source batch are held in memory."""
    waiting, exhausted = empty, False  # warehouse rows not compared yet
    for batch in source_batches:
        if not batch.num_rows:
            continue
        high = pc.max(batch.column(key)).as_py()
        while not exhausted and (not waiting.num_rows or pc.max(waiting[key]).as_py() <= high):
            following = next(warehouse_batches, None)
            if following is None:
                exhausted = True
            else:
                waiting = pa.concat_tables([waiting, pa.Table.from_batches([following])])
        upto = pc.less_equal(waiting[key], high)
        yield batch, waiting.filter(upto)
        waiting = waiting.filter(pc.invert(upto))
    for following in warehouse_batches:
        waiting = pa.concat_tables([waiting, pa.Table.from_batches([following])])
    yield None, waiting


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _naive(kind: pa.DataType) -> pa.DataType:
    return pa.timestamp(kind.unit) if pa.types.is_timestamp(kind) and kind.tz else kind


def _as_naive(values):
    return values.cast(_naive(values.type)) if pa.types.is_timestamp(values.type) else values


def _raw_compared(expected: pa.Table, actual: pa.Table, key: str, names: list[str],
                  watermark: Optional[str], through, tally: "_Tally", counts: dict) -> None:
    """Compare one stretch of keys; the source's pending rows (watermark after ``through``)
    are left out on both sides."""
    counts["warehouse"] += actual.num_rows
    if watermark is not None and watermark in names and through is not None \
            and expected.num_rows:
        late = _after(expected[watermark], through)
        pending_ids = _flat(expected[key].filter(late)).cast(pa.int64())
        counts["pending"] += len(pending_ids)
        expected, actual = _without(expected, key, pending_ids), _without(actual, key,
                                                                          pending_ids)
    counts["compared"] += expected.num_rows
    _compare(expected, actual, key, [n for n in names if n != key], tally)


# ---- comparing ------------------------------------------------------------------------------
class _Tally:
    """Differences of one table: counted, the first ``limit`` listed."""

    def __init__(self, table: str, key: str, limit: int):
        self.table, self.key, self.limit = table, key, limit
        self.count = 0
        self.listed: list[Difference] = []

    def add(self, keys: list, problem: str, column: Optional[str] = None,
            source: Optional[list] = None, warehouse: Optional[list] = None) -> None:
        self.count += len(keys)
        for i, key in enumerate(keys[:max(self.limit - len(self.listed), 0)]):
            self.listed.append(Difference(
                table=self.table, key={self.key: key}, column=column, problem=problem,
                source=None if source is None else _text(source[i]),
                warehouse=None if warehouse is None else _text(warehouse[i])))


def _text(value) -> Optional[str]:
    return None if value is None else str(value)


def _compare(expected: pa.Table, actual: pa.Table, key: str, columns: list[str],
             tally: _Tally) -> None:
    """Compare ``expected`` (from the source) with ``actual`` (the warehouse) on ``key``."""
    if expected.num_rows == actual.num_rows and pc.all(pc.equal(
            expected[key].cast(pa.int64()), actual[key].cast(pa.int64()))).as_py() is not False:
        # The usual case: the same keys in the same order, no join needed.
        _compare_aligned(expected, actual, key, columns, tally)
        return
    left = pa.table({key: expected[key].cast(pa.int64()),
                     "__s": pa.repeat(True, expected.num_rows),
                     **{f"s.{c}": expected[c] for c in columns}})
    right = pa.table({key: actual[key].cast(pa.int64()),
                      "__w": pa.repeat(True, actual.num_rows),
                      **{f"w.{c}": actual[c] for c in columns}})
    joined = left.join(right, keys=key, join_type="full outer").sort_by(key)
    in_source = pc.fill_null(joined["__s"], False)
    in_warehouse = pc.fill_null(joined["__w"], False)
    missing = joined.filter(pc.and_(in_source, pc.invert(in_warehouse)))
    tally.add(missing[key].to_pylist(), "missing in the warehouse")
    extra = joined.filter(pc.and_(in_warehouse, pc.invert(in_source)))
    tally.add(extra[key].to_pylist(), "not in the source")
    both = joined.filter(pc.and_(in_source, in_warehouse))
    _compare_aligned(pa.table({key: both[key], **{c: both[f"s.{c}"] for c in columns}}),
                     pa.table({key: both[key], **{c: both[f"w.{c}"] for c in columns}}),
                     key, columns, tally)


def _compare_aligned(expected: pa.Table, actual: pa.Table, key: str, columns: list[str],
                     tally: _Tally) -> None:
    """Compare two tables whose rows hold the same keys in the same order."""
    for column in columns:
        s, w = expected[column], actual[column]
        if s.type != w.type:
            s = s.cast(w.type)
        same = pc.or_kleene(pc.and_kleene(pc.is_null(s), pc.is_null(w)),
                            pc.fill_null(pc.equal(s, w), False))
        if pc.all(same).as_py() is False:
            differ = pc.invert(same)
            tally.add(expected[key].filter(differ).to_pylist(), "value differs", column,
                      s.filter(differ).to_pylist(), w.filter(differ).to_pylist())


def _dimension(conn, source, name: str, limit: int, schema: str) -> TableReconciliation:
    table = TABLES[name]
    source_table, reference, reference_column = DIMENSION_SOURCES[name]
    key = table.merge_key[0]
    source_key = SOURCE_TABLES[source_table].primary_key
    through = _loaded_through(conn, table, schema)
    ref_through = _loaded_through(conn, table, schema, "reference_last_updated") \
        if reference else None
    found = _source_table(source, source_table)
    rows = found if found is not None else pa.table({
        source_key: pa.array([], pa.int32()), "last_updated": pa.array([], pa.timestamp("ms"))})
    pending = _after(rows["last_updated"], through)
    reference_rows = None
    if reference:
        reference_rows = _source_table(source, reference)
        if reference_rows is not None:
            late = reference_rows.filter(_after(reference_rows["last_updated"], ref_through))
            ref_key = SOURCE_TABLES[reference].primary_key
            pending = pc.or_(pending, pc.is_in(rows[reference_column],
                                               value_set=late[ref_key].combine_chunks()))
    holds = _quarantine_holds(conn, source_table)
    in_quarantine = _version_held(rows, source_key, holds)
    pending = pc.and_(pending, pc.invert(in_quarantine))
    pending_ids = rows.filter(pending)[source_key].combine_chunks()
    checked = None
    if found is not None:  # the transform's own rule, every row as new
        rule = next(r for r in dims.DIMENSION_RULES if r.table == name)
        checked = rule.build(dims.BatchInputs(
            new={source_table: rows},
            state={source_table: rows, **({reference: reference_rows} if reference else {})}))
    expected = checked.rows if checked is not None else None
    # Quarantined: the rows whose current version the quarantine holds, whatever the rules
    # say of it now (a reference row may have arrived since: it waits for a retry).
    quarantined_ids = _flat(_flat(rows[source_key]).cast(pa.int64()).filter(in_quarantine))
    breaking = pa.array([], pa.int64())
    broken = None
    if checked is not None and checked.held is not None and checked.held.num_rows:
        held = checked.held.filter(pc.invert(pc.is_in(  # pending ones are pending
            checked.held[source_key].cast(pa.int64()), value_set=pa.concat_arrays(
                [pending_ids.cast(pa.int64()), quarantined_ids]))))
        if holds is None:  # a warehouse before schema 7: what the rules hold counts
            quarantined_ids = pa.concat_arrays([quarantined_ids,
                                                _flat(held[source_key]).cast(pa.int64())])
        else:
            broken = held
            breaking = _flat(broken[source_key]).cast(pa.int64())
    quarantined = len(quarantined_ids)
    columns = [c.name for c in table.columns if c.name not in table.version_columns
               and c.name not in (key, IS_DELETED)]
    # A row deleted in the source is kept in the warehouse, marked: not compared.
    select = (f"SELECT {', '.join(table.column_names)} FROM {table.relation(schema)} "  # nosec
              f"WHERE NOT {IS_DELETED}")
    actual = _warehouse_table(conn, select, table.arrow_schema(), name)
    skip = pa.concat_arrays([pending_ids.cast(pa.int64()), quarantined_ids, breaking])
    if expected is None:
        expected = table.arrow_schema().empty_table()
    expected = _without(expected, key, skip)
    actual_compared = _without(actual, key, skip)
    tally = _Tally(name, key, limit)
    if broken is not None and broken.num_rows:
        _rule_breaks(broken, source_key, actual, key, tally)
    _compare(expected, actual_compared, key, columns, tally)
    return TableReconciliation(
        table=name, source_table=source_table, source_rows=expected.num_rows,
        warehouse_rows=actual.num_rows, pending=len(pending_ids), quarantined=quarantined,
        differences=tally.count, loaded_through=_text(through), listed=tally.listed)


def _fact(conn, source, source_table: str, limit: int, sums: list[SumCheck], star: str,
          keys: Optional[Sequence[int]] = None,
          key_range: Optional[tuple[Optional[int], Optional[int]]] = None
          ) -> TableReconciliation:
    """A fact's current versions against the source's current rows (with ``keys``: of those
    source ids only, read by index on both sides; with ``key_range`` ``(start, before)``:
    of the ids at or after ``start`` and before ``before``, either None: unbounded): both
    sides streamed in key order (the source through its reader, the warehouse's
    ``<fact>_current`` by ``COPY``, each on its own connection and thread) and merge-joined
    one source batch at a time."""
    if keys is not None and key_range is not None:
        raise ValueError("reconcile a fact on keys or on a range of keys, not both")
    name = FACT_SOURCES[source_table][0]
    table = TABLES[name]
    key = table.merge_key[0]
    table = table.as_found(column_types(conn, table.relation(star)))  # a widened measure
    if keys is not None and not keys:  # the load brought no row of this fact
        return TableReconciliation(table=name, source_table=source_table, source_rows=0,
                                   warehouse_rows=0, pending=0, differences=0,
                                   loaded_through=None, listed=[], scoped_keys=0)
    through = _loaded_through(conn, table, star)
    holds = _quarantine_holds(conn, source_table)
    held_sql = (f"SELECT {quote_ident(key)}, last_updated_date + last_updated_time "  # nosec
                f"FROM totes.{quote_ident('held_' + name)}")  # B608: quoted identifiers
    held_versions = {(int(i), v) for i, v in conn.run(held_sql)}
    held_ids = pa.array(sorted({i for i, _ in held_versions}), pa.int64())
    money = [c.name for c in table.columns if c.sql_type.startswith("numeric")]
    codes = dict(conn.run("SELECT currency_id, currency_code "  # nosec B608: quoted
                          f"FROM {TABLES['dim_currency'].relation(star)}"))
    sums_of: dict[str, dict] = {"source": {}, "warehouse": {}}
    tally = _Tally(name, key, limit)
    counts = {"compared": 0, "pending": 0, "quarantined": 0, "held": 0, "warehouse": 0}
    # A version's log position is the warehouse's own: the source's current row has none.
    columns = [c.name for c in table.columns if c.name not in (key, SOURCE_LSN, IS_DELETED)]
    schema = table.arrow_schema()
    chosen = f"WHERE {key_condition(conn, key, keys)} " if keys is not None else ""
    if key_range is not None:
        chosen = _range_condition(key, key_range)
    view = (f"SELECT {', '.join(table.column_names)} "  # nosec B608: quoted identifiers
            f"FROM {table.current_relation(star)} "
            f"{chosen}ORDER BY {key}")
    with _source_batches(source, source_table, keys, key_range=key_range) as source_batches, \
            _warehouse_batches(conn, view, schema, name) as warehouse_batches:
        for batch, actual in _aligned(source_batches, warehouse_batches, key,
                                      _nullable(schema).empty_table()):
            if batch is None:  # rows after the source's last key
                _compared(_nullable(schema).empty_table(), actual, key, columns, money, codes,
                          sums_of, tally, counts)
                continue
            expected, actual = _expected_facts(batch, source_table, through, held_ids, actual,
                                               counts, holds, tally, held_versions, table)
            _compared(expected, actual, key, columns, money, codes, sums_of, tally, counts)
    for currency_key in sorted(set(sums_of["source"]) | set(sums_of["warehouse"])):
        column, currency = currency_key
        s = sums_of["source"].get(currency_key, Decimal(0))
        w = sums_of["warehouse"].get(currency_key, Decimal(0))
        sums.append(SumCheck(table=name, column=column, currency=currency, source=str(s),
                             warehouse=str(w), equal=s == w))
    return TableReconciliation(
        table=name, source_table=source_table, source_rows=counts["compared"],
        warehouse_rows=counts["warehouse"], pending=counts["pending"], held=counts["held"],
        quarantined=counts["quarantined"], differences=tally.count,
        loaded_through=_text(through), listed=tally.listed,
        scoped_keys=None if keys is None else len(keys),
        key_range=None if key_range is None else list(key_range))


def _expected_facts(batch: pa.RecordBatch, source_table: str, through, held_ids: pa.Array,
                    actual: pa.Table, counts: dict, holds: Optional[set] = None,
                    tally: Optional["_Tally"] = None,
                    held_versions: Optional[set] = None,
                    target: Optional[WarehouseTable] = None) -> tuple[pa.Table, pa.Table]:
    """The fact rows ``batch`` (source rows) should be, and the warehouse rows to compare them
    with, leaving out of both: a version the quarantine holds (``holds``: quarantined), a
    row held for its dimension row (``held_ids``; held), and a row changed after
    ``through`` that is neither (pending). A source row the rules hold although the
    quarantine does not hold that version is a difference (see :func:`_rule_breaks`)."""
    name = FACT_SOURCES[source_table][0]
    key = TABLES[name].merge_key[0]
    counts["warehouse"] += actual.num_rows
    rows = pa.Table.from_batches([batch])
    ids = _flat(rows[key]).cast(pa.int64())
    in_quarantine = _version_held(rows, key, holds)
    waiting = _version_held(rows, key, held_versions)  # that very version is held
    late = pc.and_(_after(rows["last_updated"], through),
                   pc.invert(pc.or_(in_quarantine, waiting)))
    counts["pending"] += pc.sum(late).as_py() or 0
    counts["quarantined"] += pc.sum(in_quarantine).as_py() or 0
    skip = [_flat(ids.filter(late)), _flat(ids.filter(in_quarantine)), held_ids]
    current = rows.filter(pc.invert(pc.or_(late, in_quarantine))).combine_chunks()
    target = target or TABLES[name]  # widened as the warehouse holds it
    expected = target.arrow_schema().empty_table()
    if current.num_rows:
        checked = fact_rows(current.to_batches()[0], source_table, target)
        if checked.rows is not None:
            expected = checked.rows
        if checked.held is not None and checked.held.num_rows:
            broken_ids = _flat(checked.held[key]).cast(pa.int64())
            skip.append(broken_ids)
            if holds is None:  # a warehouse before schema 7: what the rules hold counts
                counts["quarantined"] += len(broken_ids)
            elif tally is not None:
                _rule_breaks(checked.held, key, actual, key, tally)
    counts["held"] += pc.sum(pc.is_in(expected[key].cast(pa.int64()),
                                      value_set=held_ids)).as_py() or 0
    skip_ids = pa.concat_arrays(skip)
    return _without(expected, key, skip_ids), _without(actual, key, skip_ids)


def _rule_breaks(broken: pa.Table, source_key: str, actual: pa.Table, key: str,
                 tally: "_Tally") -> None:
    """Differences for source rows that break a rule although the quarantine does not hold
    their version (changed in the source without a new ``last_updated``, so never
    extracted): the column the rule names, the source's value and the warehouse's."""
    found = {row[key]: row for row in actual.to_pylist()}
    for row in broken.to_pylist():
        column = row.get("_totes_column")
        kept = found.get(row[source_key])
        tally.add([row[source_key]], f"breaks the rule {row.get('_totes_rule')} in the "
                  "source, but the quarantine does not hold that version (changed without a "
                  "new last_updated?)", column, [row.get("_totes_value")],
                  [None if kept is None or column not in kept else kept[column]])


def _quarantine_holds(conn, source_table: str) -> Optional[set]:
    """The row versions ``(id, last_updated)`` of ``source_table`` the quarantine holds, as
    the loads recorded them (``totes.quarantined``); None for a warehouse of a schema before
    it, where a row the rules hold counts as quarantined."""
    (exists,), = conn.run(f"SELECT to_regclass('{bookkeeping()}.quarantined') IS NOT NULL")
    if not exists:
        return None
    return {(int(i), v) for i, v in conn.run(
        f"SELECT row_id, version FROM {bookkeeping()}.quarantined "  # nosec B608
        "WHERE source_table = :t",
        t=source_table)}


def _version_held(rows: pa.Table, key: str, holds: Optional[set]) -> pa.Array:
    """A boolean per row of ``rows`` (source rows: ``key``, ``last_updated``): whether its
    version is in ``holds`` (``(id, naive UTC time)`` pairs: the quarantine's, or a fact's
    held rows). Only the rows whose id is in ``holds`` are looked at one by one."""
    ids = _flat(rows[key]).cast(pa.int64())
    candidates = pc.is_in(ids, value_set=pa.array(sorted({i for i, _ in holds or ()}),
                                                  pa.int64()))
    where = pc.indices_nonzero(candidates)
    if not len(where):
        return candidates
    flags = []
    for row_id, moment in zip(ids.take(where).to_pylist(),
                              rows["last_updated"].take(where).to_pylist()):
        if moment is not None and moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        flags.append((row_id, moment) in holds)  # type: ignore[operator]
    return pc.replace_with_mask(candidates, candidates, pa.array(flags, pa.bool_()))


def _compared(expected: pa.Table, actual: pa.Table, key: str, columns: list[str],
              money: list[str], codes: dict, sums_of: dict, tally: "_Tally",
              counts: dict) -> None:
    counts["compared"] += expected.num_rows
    _add_sums(expected, money, codes, sums_of["source"])
    _add_sums(actual, money, codes, sums_of["warehouse"])
    _compare(expected, actual, key, columns, tally)


def _flat(values) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _without(rows: pa.Table, key: str, ids: pa.Array) -> pa.Table:
    """``rows`` whose ``key`` is not among ``ids``."""
    if not len(ids):
        return rows
    return rows.filter(pc.invert(pc.is_in(rows[key].cast(pa.int64()), value_set=ids)))


def _add_sums(rows: pa.Table, money: list[str], codes: dict, into: dict) -> None:
    if not rows.num_rows:
        return
    for column in money:
        grouped = rows.group_by("currency_id").aggregate([(column, "sum")])
        for currency_id, total in zip(grouped["currency_id"].to_pylist(),
                                      grouped[f"{column}_sum"].to_pylist()):
            currency = codes.get(currency_id, f"currency_id {currency_id}")
            into[(column, currency)] = into.get((column, currency), Decimal(0)) + \
                (total or Decimal(0))


#: A load scope's most keys per fact (:func:`load_scope`); a load that brought more is
#: followed by a reconciliation of the whole fact (it read about as many rows anyway).
SCOPE_MAX_KEYS = 50_000


def load_scope(processed: Lake, manifest_keys: Sequence[str],
               max_keys: int = SCOPE_MAX_KEYS) -> dict[str, Optional[list[int]]]:
    """Per fact table, the source ids whose versions the batches ``manifest_keys`` brought
    (sorted, distinct; an empty list when they brought none), or None when more than
    ``max_keys``: the scope of the reconciliation that follows a load, so that its cost
    follows the load's size, not the source's. Reads only the key column of each batch's
    processed fact files.

    Raises:
        LakeError / StorageUnavailable: a manifest or a file could not be read.
    """
    found: dict[str, Optional[set[int]]] = {name: set() for name in
                                            (FACT_SOURCES[t][0] for t in FACT_SOURCES)}
    repairs = read_repairs(processed) if manifest_keys else []
    for manifest_key in manifest_keys:
        manifest = read_manifest(processed, manifest_key, repairs)
        for name, ids in found.items():
            output = manifest.output(name)
            if output is None or ids is None:
                continue
            column = TABLES[name].merge_key[0]
            for batch in processed.iter_batches(output.key, 1 << 16, columns=[column]):
                ids.update(pc.unique(batch.column(0)).to_pylist())
                if len(ids) > max_keys:  # stop at once: a set of every id would not fit
                    found[name] = None
                    break
    return {name: None if ids is None else sorted(ids) for name, ids in found.items()}


def reconcile(source, warehouse: Database, limit: int = DEFAULT_LIMIT,
              scope: Optional[dict[str, Optional[list[int]]]] = None,
              raw: Optional[Sequence[str]] = None) -> ReconcileResult:
    """Compare ``source`` (PostgreSQL or MySQL) with ``warehouse`` as the module docstring
    says; ``limit``: differences listed per table. With ``scope`` (:func:`load_scope`), a
    fact is compared only on the source ids it lists (a fact it maps to None, or leaves out,
    whole); dimensions are compared whole. The raw layer's tables are compared whole: every
    one, or with ``raw`` those it names (the tables a load brought versions of).

    Raises:
        ConfigError: the warehouse has no star schema (of version 5) yet.
        DatabaseUnavailable / DatabaseRejected: a database could not be reached.
        SourceSchemaError: a source table is missing or lacks a column transform reads.
    """
    started = time.monotonic()
    tables: list[TableReconciliation] = []
    sums: list[SumCheck] = []
    with _star_session(warehouse) as (conn, star):
        tables += _dimensions(conn, source, star, limit)
        for source_table in FACT_SOURCES:
            keys = (scope or {}).get(FACT_SOURCES[source_table][0])
            tables.append(_fact(conn, source, source_table, limit, sums, star, keys))
        tables += _raw_layer(conn, source, limit, raw)
    return _result(tables, sums, started)


def reconcile_step(source, warehouse: Database, resume: Optional[ReconcileCursor] = None,
                   max_rows: Optional[int] = None, limit: int = DEFAULT_LIMIT
                   ) -> ReconcileResult:
    """One bounded step of a whole reconciliation (the state machine's Reconcile state,
    invoked again while ``resume`` is not None): the first step (``resume`` None) compares
    every dimension whole, then every step compares the facts, in :data:`FACT_SOURCES`'
    order, then the raw layer's tables, by name, each in ranges of source ids, from
    ``resume`` on, until about ``max_rows`` rows were compared (default
    ``TOTES_RECONCILE_MAX_ROWS``, 20,000,000: about 2 minutes on the benchmark's machine,
    well inside Lambda's 15). A range ends where the warehouse's ``max_rows``-th version from
    its start is (an index-only scan of the table's unique key, whose first column is the
    source id), or for a table's last range where the source's ``max_rows``-th id is; both
    sides read only that range, so a step's work is bounded whatever the table's size.
    Each step's result is whole for its ranges (rows, values, and money sums per currency
    over those ids; ``key_range`` says which ids): the source and warehouse agree when
    every step is equal. Returns the step's :class:`ReconcileResult`, whose ``resume`` is
    where the next step begins (None: the last range was compared).

    Raises:
        ConfigError: the warehouse has no star schema yet, or ``resume`` names no fact or
            raw table.
        DatabaseUnavailable / DatabaseRejected: a database could not be reached.
        SourceSchemaError: a source table is missing or lacks a column transform reads.
    """
    started = time.monotonic()
    tables: list[TableReconciliation] = []
    sums: list[SumCheck] = []
    with _star_session(warehouse) as (conn, star):
        units = [_FactUnit(t, star) for t in FACT_SOURCES] + \
            [_RawUnit(*entry) for entry in _raw_tables(conn)]
        index, start = _resumed_at(units, resume)
        budget = max(1, max_rows or settings.current().reconcile_max_rows)
        if resume is None:
            tables += _dimensions(conn, source, star, limit)
        while index < len(units) and budget > 0:
            unit = units[index]
            before, versions = _range_end(conn, unit.relation, unit.key, start, budget)
            if before is None:  # the warehouse's last range: the source may hold far more
                before = _source_range_end(source, unit.source_table, start, budget,
                                           unit.source_key)
            found = unit.compare(conn, source, limit, sums, (start, before))
            tables.append(found)
            if before is not None:
                start, budget = before, 0
            else:
                index, start = index + 1, None
                budget -= max(versions, found.source_rows + found.pending, 1)
    result = _result(tables, sums, started)
    if index < len(units):
        result.resume = units[index].cursor(start)
    return result


@dataclass(frozen=True)
class _FactUnit:
    """A fact, as :func:`reconcile_step` goes through it in ranges."""

    source_table: str
    star: str

    @property
    def table(self) -> WarehouseTable:
        return TABLES[FACT_SOURCES[self.source_table][0]]

    @property
    def relation(self) -> str:
        return self.table.relation(self.star)

    @property
    def key(self) -> str:
        return self.table.merge_key[0]

    @property
    def source_key(self) -> str:
        return SOURCE_TABLES[self.source_table].primary_key

    def compare(self, conn, source, limit, sums, key_range) -> TableReconciliation:
        return _fact(conn, source, self.source_table, limit, sums, self.star,
                     key_range=key_range)

    @property
    def label(self) -> str:
        return self.table.name

    def cursor(self, start: Optional[int]) -> ReconcileCursor:
        return ReconcileCursor(fact=self.table.name, start=start)


@dataclass(frozen=True)
class _RawUnit:
    """A raw-layer table (a row of :func:`_raw_tables`), as :func:`reconcile_step` goes
    through it in ranges."""

    source_table: str
    schema: str
    source_key: str
    watermark: Optional[str]
    dropped: Optional[list]

    @property
    def relation(self) -> str:
        return qualified(self.schema, self.source_table)

    @property
    def key(self) -> str:
        return quote_ident(self.source_key)

    def compare(self, conn, source, limit, sums, key_range) -> TableReconciliation:
        return _raw(conn, source, self.source_table, self.schema, self.source_key,
                    self.watermark, self.dropped or [], limit, key_range)

    @property
    def label(self) -> str:
        return f"raw table {self.source_table}"

    def cursor(self, start: Optional[int]) -> ReconcileCursor:
        return ReconcileCursor(raw_table=self.source_table, start=start)


def _resumed_at(units: list, resume: Optional[ReconcileCursor]) -> tuple[int, Optional[int]]:
    """The unit (its index in ``units``) and the first id where ``resume`` says the step
    begins; the first unit's first id without one.

    Raises:
        ConfigError: ``resume`` names no fact or raw table there is.
    """
    if resume is None:
        return 0, None
    for i, unit in enumerate(units):
        if unit.cursor(resume.start) == resume:
            return i, resume.start
    names = [u.label for u in units]
    raise ConfigError(f"reconcile: cannot resume at {resume.raw_table or resume.fact!r}, "
                      f"which is not a fact or raw table (one of {', '.join(names)})")


def carry_differences(earlier: ReconcileResult, step: ReconcileResult) -> ReconcileResult:
    """``step``'s result carrying what the steps before it found (``earlier``: the last
    step's result, itself carrying the ones before): its tables and sums, and the tables
    and sums of ``earlier`` that differ (those that agree are left out, so that the state
    stays small whatever the number of steps); ``equal`` only when every step was,
    ``differences`` and ``seconds`` the totals, ``resume`` the step's. What the state
    machine passes from step to step, so that the alert after the last step names every
    step's differences."""
    tables = [t for t in earlier.tables if t.differences] + list(step.tables)
    sums = [s for s in earlier.sums if not s.equal] + list(step.sums)
    return ReconcileResult(equal=earlier.equal and step.equal,
                           differences=earlier.differences + step.differences,
                           tables=tables, sums=sums,
                           seconds=round(earlier.seconds + step.seconds, 3),
                           resume=step.resume)


def _range_end(conn, relation: str, key: str, start: Optional[int],
               rows: int) -> tuple[Optional[int], int]:
    """Where a step's range of ``relation`` (a fact, or a raw table, quoted; ``key``, quoted:
    its source id, the first column of its unique key) from ``start`` (None: from its first
    id) ends: ``(before, versions)``, ``before`` the first source id after ``rows`` of its
    versions (past the range's first id whatever its versions), or None with ``versions``,
    how many there are, when fewer follow ``start``. Index-only scans of the unique key."""
    after = f"WHERE {key} >= :start " if start is not None else ""
    values = {"start": int(start)} if start is not None else {}
    found = conn.run(f"SELECT {key} FROM {relation} {after}"  # nosec B608: quoted names
                     f"ORDER BY {key} OFFSET :rows LIMIT 1", rows=int(rows), **values)
    end = int(found[0][0]) if found else None
    if end is not None:
        (first,), = conn.run(f"SELECT min({key}) FROM {relation} {after}",  # nosec B608
                             **values)
        if end <= first:  # the range's first id has more versions than ``rows``: take it whole
            (end,), = conn.run(f"SELECT min({key}) FROM {relation} "  # nosec B608: as above
                               f"WHERE {key} > :first", first=int(first))
    if end is None:
        (versions,), = conn.run(f"SELECT count(*) FROM {relation} {after}",  # nosec B608
                                **values)
        return None, int(versions)
    return int(end), int(rows)


def _source_range_end(source, table: str, start: Optional[int], rows: int,
                      key: str) -> Optional[int]:
    """Where the last range of a fact or raw table ends on the source's side: the id ``rows``
    ids after ``start`` in source ``table`` (``key``: its primary key), or None when fewer
    follow (a source far ahead of the warehouse, as while a first extract of a large table
    is paused by the time limit, is compared in bounded ranges too)."""
    doing = f"reading the ids of table {table} of the {source.describe()} to reconcile it"
    with source.session(f"totes-reconcile-{table}", doing) as session:
        return reader_for(source).key_after(session.conn, table, key, start, rows)


@contextlib.contextmanager
def _star_session(warehouse: Database) -> Iterator[tuple[object, str]]:
    """A warehouse session and its star schema's name, once the star schema is there.

    Raises:
        ConfigError: the warehouse has no star schema (of version 5) yet.
    """
    with warehouse.session("totes-reconcile", f"reconciling the {warehouse.describe()}") \
            as session:
        conn = session.conn
        star = settings.current().warehouse_schema
        (ready,), = conn.run("SELECT to_regclass(:v) IS NOT NULL",
                             v=TABLES["fact_payment"].current_relation(star))
        if not ready:
            raise ConfigError(f"the {warehouse.describe()} has no star schema in schema "
                              f"{star} yet (or one before the current-version views of "
                              "version 5): run `totes load` (or `totes run`) first")
        yield conn, star


def _dimensions(conn, source, star: str, limit: int) -> list[TableReconciliation]:
    """Every dimension, compared whole."""
    return [_dimension(conn, source, name, limit, star) for name in DIMENSION_SOURCES]


def _raw_layer(conn, source, limit: int, raw: Optional[Sequence[str]]
               ) -> list[TableReconciliation]:
    """The raw layer's tables (those ``raw`` names, or every one), compared whole."""
    return [_raw(conn, source, table, schema, key, watermark, dropped or [], limit)
            for table, schema, key, watermark, dropped in _raw_tables(conn)
            if raw is None or table in raw]


def _result(tables: list[TableReconciliation], sums: list[SumCheck],
            started: float) -> ReconcileResult:
    differences = sum(t.differences for t in tables) + sum(not s.equal for s in sums)
    result = ReconcileResult(equal=differences == 0, differences=differences, tables=tables,
                             sums=sums, seconds=round(time.monotonic() - started, 3))
    (log.info if result.equal else log.warning)(result.summary())
    return result
