"""The raw layer: every row version of a configured table, from the lake, in the warehouse.

For each table whose plan says ``raw`` (:func:`totes.contracts.config.raw_tables`: by default
every table no star-schema rule reads), load keeps, in the raw schema (``TOTES_RAW_SCHEMA``,
``raw``):

* ``raw.<table>``: every row version the lake holds: the source's columns (in the lake's
  types, mapped to PostgreSQL's as :data:`SQL_TYPES` says; money stays ``numeric``), then

  ====================== ============ =====================================================
  ``_totes_batch``       text         the lake batch (its key) that brought the version
  ``_totes_operation``   text         ``insert``, ``update``, ``delete`` (from the change
                                      log, or a delete found by ``delete_detection``);
                                      ``snapshot`` (a ``cdc`` table's initial copy);
                                      ``upsert`` (a polled version: new or changed)
  ``_totes_lsn``         bigint       the commit's log position (``cdc``; an initial copy's
                                      rows: the slot's position when it was taken)
  ``_totes_commit_time`` timestamptz  the commit's time (``cdc``), or when a delete was
                                      found
  ====================== ============ =====================================================

  Its grain is one row version, unique on the primary key and the version's identity
  (:data:`VERSION_KEYS`): the commit's log position for a ``cdc`` table, the watermark
  (and the operation: a found delete keeps the last version's watermark) for an
  ``incremental`` one, the batch for a ``full`` one (each snapshot is a version of every
  row). Rows are inserted ``ON CONFLICT DO NOTHING``: loading a batch again adds nothing.
* ``raw.<table>_current``: a view of the current version of each row, deletes left out:
  per primary key the greatest log position (``cdc``) or watermark, then the latest
  commit time (``incremental``); for a ``full`` table, the rows of the newest batch loaded.

**Which batches.** ``totes.raw_table`` keeps per table the newest lake key loaded
(``loaded_through``); a load takes the keys after it, oldest first (at most
``TOTES_LOAD_MAX_BATCHES`` per table; the rest wait for the next load), in the load's one
transaction, under its advisory lock, with the star schema's batches: the rows and
``loaded_through`` commit together or not at all. Lake keys are created in commit order
(:mod:`totes.contracts.watermark`), so a key after ``loaded_through`` is one not loaded; two
loads at once take turns on the lock, and a crash leaves the warehouse as it was.

**Schema changes.** Each file is copied as it was written: a column the raw table lacks is
added first (``ALTER TABLE … ADD COLUMN``, NULL in the versions before); a column whose type
widened (:func:`totes.contracts.source_schema.classify`) is altered to the wider type
(``ALTER COLUMN … TYPE``, the view dropped and created again around it), in the load's
transaction; a narrower file is cast to the raw column's type. A column dropped in the source
is NULL in every version after (its batches lack it) and recorded in
``totes.raw_table.dropped``.

Rows travel as the star schema's do: Arrow record batches from the lake file, binary COPY
into a temporary staging table, one ``INSERT … SELECT … ON CONFLICT DO NOTHING``.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

import pyarrow as pa

from totes.contracts.cdc import CDC_COLUMNS, COMMIT_TIME, LSN, OPERATION, SNAPSHOT_MODE
from totes.contracts.config import TablePlan
from totes.contracts.errors import ConfigError, SourceSchemaError
from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.source_schema import classify
from totes.contracts.stage_results import RawLoaded
from totes.contracts.watermark import part_keys
from totes.utils import settings
from totes.utils.settings import bookkeeping
from totes.utils.footers import read_footer
from totes.utils.lake import Lake
from totes.utils.postgres_copy import copy_binary_into
from totes.utils.postgres_merge import column_types

log = logging.getLogger(__name__)

#: The columns the raw layer adds to the source's, with their SQL and Arrow types.
BATCH = "_totes_batch"
RAW_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    (BATCH, "text NOT NULL", pa.string()),
    (OPERATION, "text NOT NULL", pa.string()),
    (LSN, "bigint", pa.int64()),
    (COMMIT_TIME, "timestamptz", pa.timestamp("us", "UTC")),
)
RAW_COLUMN_NAMES = tuple(name for name, _, _ in RAW_COLUMNS)
#: The operation of a polled version (the poll cannot tell an insert from an update) and of
#: a ``cdc`` table's initial copy.
UPSERT, SNAPSHOT = "upsert", "snapshot"
#: The version identity of each extract type (with the primary key: the raw table's key).
VERSION_KEYS = {"cdc": "lsn", "incremental": "watermark", "full": "batch"}
#: Rows per record batch streamed from a lake file into COPY (one batch in memory).
COPY_BATCH_ROWS = 65_536


def bookkeeping_ddl(book: str) -> tuple[str, ...]:
    """The bookkeeping of the raw layer in schema ``book`` (quoted; warehouse schema
    version 8)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {book}.raw_table ("
        " source_table text PRIMARY KEY,"
        " raw_schema text NOT NULL,"
        " version_key text NOT NULL,"
        " primary_key text NOT NULL,"
        " watermark_column text,"
        " loaded_through text,"
        " batches bigint NOT NULL DEFAULT 0,"
        " dropped text[] NOT NULL DEFAULT '{}',"
        " updated_at timestamptz NOT NULL DEFAULT now())",
    )


def raw_schema() -> str:
    """The warehouse schema of the raw layer (``TOTES_RAW_SCHEMA``, ``raw``).

    Raises:
        ConfigError: not a lower-case identifier.
    """
    return settings.current().raw_schema


def check_raw_schema(schema: str, star: str) -> None:
    """Refuse a raw schema that is the star schema's or the bookkeeping's.

    Raises:
        ConfigError: naming the setting.
    """
    book = settings.current().bookkeeping_schema
    if schema in (star, book):
        raise ConfigError(f"{settings.variable('raw_schema')}={schema} is the schema of the "
                          f"{'bookkeeping' if schema == book else 'star schema'}: the raw "
                          "layer needs a schema of its own (default raw)")


# ---- types ----------------------------------------------------------------------------------
def sql_type(kind: pa.DataType) -> str:
    """The raw layer's SQL type of a lake column of Arrow type ``kind``: ``int16`` →
    ``smallint``, ``int32`` → ``integer``, ``int64`` → ``bigint``, ``decimal128(p, s)`` →
    ``numeric(p,s)``, ``float32``/``float64`` → ``real``/``double precision``, ``bool``,
    ``date32`` → ``date``, ``time64`` → ``time``, ``timestamp`` → ``timestamp`` (with a
    time zone: ``timestamptz``; microseconds, so a widening of milliseconds to microseconds
    changes nothing), text → ``text`` (a ``varchar`` widening changes nothing), binary →
    ``bytea``.

    Raises:
        SourceSchemaError: a type the raw layer has no column for.
    """
    if pa.types.is_decimal(kind):
        return f"numeric({kind.precision},{kind.scale})"
    if pa.types.is_timestamp(kind):
        return "timestamp with time zone" if kind.tz else "timestamp without time zone"
    for test, name in _SQL_OF:
        if test(kind):
            return name(kind) if callable(name) else name
    raise SourceSchemaError(f"the raw layer has no column type for the lake's {kind}")


def _int_name(kind: pa.DataType) -> str:
    bits = kind.bit_width + (0 if pa.types.is_signed_integer(kind) else 1)
    return "smallint" if bits <= 16 else "integer" if bits <= 32 else \
        "bigint" if bits <= 64 else "numeric(20,0)"


_SQL_OF = (
    (pa.types.is_integer, _int_name),
    (pa.types.is_float32, "real"), (pa.types.is_float16, "real"),
    (pa.types.is_float64, "double precision"), (pa.types.is_boolean, "boolean"),
    (pa.types.is_date, "date"), (pa.types.is_time, "time without time zone"),
    (pa.types.is_string, "text"), (pa.types.is_large_string, "text"),
    (pa.types.is_binary, "bytea"), (pa.types.is_large_binary, "bytea"),
    (pa.types.is_null, "text"),
)
_ARROW_OF = {
    "smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(),
    "real": pa.float32(), "double precision": pa.float64(), "boolean": pa.bool_(),
    "date": pa.date32(), "time without time zone": pa.time64("us"), "text": pa.string(),
    "bytea": pa.binary(), "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", "UTC"),
}
_NUMERIC = re.compile(r"^numeric\((\d+),(\d+)\)$")


def arrow_type(sql: str) -> pa.DataType:
    """The Arrow type a raw column of SQL type ``sql`` (as ``format_type`` prints it) is
    copied in (the inverse of :func:`sql_type`).

    Raises:
        SourceSchemaError: a type the raw layer does not create.
    """
    if sql in _ARROW_OF:
        return _ARROW_OF[sql]
    match = _NUMERIC.match(sql)
    if match:
        return pa.decimal128(int(match.group(1)), int(match.group(2)))
    raise SourceSchemaError(f"the raw layer does not know the column type {sql}")


# ---- the table and its view -----------------------------------------------------------------
def _version_columns(plan: TablePlan, kind: str) -> list[str]:
    if kind == "lsn":
        return [LSN]
    if kind == "batch":
        return [BATCH]
    return [plan.watermark(), OPERATION]


def _current_view_sql(plan: TablePlan, kind: str, schema: str, columns: list[str]) -> str:
    q_table, pk = qualified(schema, plan.table), quote_ident(plan.primary_key)
    listed = ", ".join(quote_ident(c) for c in columns)
    view = qualified(schema, f"{plan.table}_current")
    if kind == "batch":
        # A full table's current rows are its newest snapshot's (a row gone from it is gone).
        return (f"CREATE VIEW {view} AS SELECT {listed} FROM {q_table} "  # nosec B608
                f"WHERE {BATCH} = (SELECT loaded_through FROM {bookkeeping()}.raw_table "
                f"WHERE source_table = {_literal(plan.table)})")
    if kind == "lsn":
        order = f"{LSN} DESC"
    else:
        order = f"{quote_ident(plan.watermark())} DESC NULLS LAST, {COMMIT_TIME} DESC NULLS LAST"
    return (f"CREATE VIEW {view} AS SELECT {listed} FROM (SELECT DISTINCT ON ({pk}) "  # nosec
            f"{listed} FROM {q_table} ORDER BY {pk}, {order}) v "  # B608: quoted identifiers
            f"WHERE {OPERATION} <> 'delete'")


def _literal(name: str) -> str:
    """A validated identifier as an SQL string literal (it holds no quote)."""
    quote_ident(name)
    return f"'{name}'"


def _recreate_view(conn, plan: TablePlan, kind: str, schema: str) -> None:
    """Create ``<table>_current`` again over every column the raw table holds now."""
    conn.run(f"DROP VIEW IF EXISTS {qualified(schema, plan.table + '_current')}")
    columns = list(column_types(conn, qualified(schema, plan.table)))
    conn.run(_current_view_sql(plan, kind, schema, columns))


def _create_table(conn, plan: TablePlan, kind: str, schema: str,
                  file_schema: pa.Schema) -> None:
    """Create ``raw.<table>`` with the source columns of ``file_schema``, the raw layer's
    own and the version key, and its view.

    Raises:
        SourceSchemaError: the file lacks the primary key or the watermark column.
    """
    needed = [plan.primary_key] + ([plan.watermark()] if kind == "watermark" else [])
    missing = [c for c in needed if c not in file_schema.names]
    if missing:
        raise SourceSchemaError(f"table {plan.table}: its lake batches have no column "
                                f"{', '.join(missing)}, which the raw layer keys on")
    columns = [f"{quote_ident(f.name)} {sql_type(f.type)}"
               + (" NOT NULL" if f.name == plan.primary_key else "")
               for f in file_schema if f.name not in CDC_COLUMNS]
    columns += [f"{name} {kind_sql}" for name, kind_sql, _ in RAW_COLUMNS]
    key = ", ".join(quote_ident(c) for c in [plan.primary_key] + _version_columns(plan, kind))
    (version,), = conn.run("SELECT current_setting('server_version_num')::int")
    # A watermark may be NULL (a value the lake could not hold): still one version.
    nulls = " NULLS NOT DISTINCT" if version >= 150000 else ""
    conn.run(f"CREATE TABLE {qualified(schema, plan.table)} ({', '.join(columns)}, "
             f"UNIQUE{nulls} ({key}))")
    _recreate_view(conn, plan, kind, schema)
    log.info("raw layer: created %s.%s", schema, plan.table)


def _evolve(conn, plan: TablePlan, kind: str, schema: str, file_schema: pa.Schema,
            key: str) -> dict[str, str]:
    """Bring ``raw.<table>`` to hold the file's columns: add those it lacks, widen those the
    file holds wider; returns the table's ``{column: SQL type}`` after.

    Raises:
        SourceSchemaError: a column's type changed in a way that is no widening or narrowing.
    """
    q_table = qualified(schema, plan.table)
    held = column_types(conn, q_table)
    changes = []
    for field in file_schema:
        if field.name in CDC_COLUMNS:
            continue
        incoming = sql_type(field.type)
        if field.name not in held:
            changes.append(f"ADD COLUMN {quote_ident(field.name)} {incoming}")
            continue
        if held[field.name] == incoming:
            continue
        old, new = arrow_type(held[field.name]), arrow_type(incoming)
        change = classify(old, new)
        if change == "widened":
            changes.append(f"ALTER COLUMN {quote_ident(field.name)} TYPE {incoming}")
        elif change not in ("narrowed", "same"):
            rebuild = _rebuild_advice(q_table, plan.table)
            raise SourceSchemaError(
                f"raw layer: {schema}.{plan.table}.{field.name} is {held[field.name]}, and "
                f"lake batch {key} holds it as {field.type} (neither wider nor narrower): "
                f"rebuild the raw table ({rebuild}) to load it again")
    if changes:
        conn.run(f"DROP VIEW IF EXISTS {qualified(schema, plan.table + '_current')}")
        conn.run(f"ALTER TABLE {q_table} {', '.join(changes)}")
        _recreate_view(conn, plan, kind, schema)
        log.warning("raw layer: %s.%s: %s (batch %s)", schema, plan.table,
                    ", ".join(changes), key)
        held = column_types(conn, q_table)
    return held


# ---- loading --------------------------------------------------------------------------------
def _raw_batches(lake: Lake, file_key: str, batch_key: str, columns: list[str],
                 arrow: dict[str, pa.DataType], snapshot_lsn: Optional[int]):
    """The record batches of the lake file ``file_key`` (of batch ``batch_key``) as the
    staging table takes them: the source ``columns`` cast to the raw types ``arrow``, then
    the raw layer's columns."""
    present = set(lake.metadata(file_key).schema.to_arrow_schema().names)
    read = columns + [c for c in (OPERATION, LSN, COMMIT_TIME) if c in present]
    for batch in lake.iter_batches(file_key, COPY_BATCH_ROWS, columns=read):
        n = batch.num_rows
        arrays = [batch.column(c).cast(arrow[c]) for c in columns]
        if OPERATION in present:
            operation = batch.column(OPERATION).cast(pa.string())
            lsn = batch.column(LSN).cast(pa.int64())
            commit = batch.column(COMMIT_TIME).cast(pa.timestamp("us", "UTC"))
        else:
            operation = pa.array([SNAPSHOT if snapshot_lsn is not None else UPSERT] * n,
                                 pa.string())
            lsn = pa.array([snapshot_lsn] * n, pa.int64())
            commit = pa.nulls(n, pa.timestamp("us", "UTC"))
        arrays += [pa.array([batch_key] * n, pa.string()), operation, lsn, commit]
        yield pa.RecordBatch.from_arrays(arrays, names=columns + list(RAW_COLUMN_NAMES))


def _load_file(conn, lake: Lake, plan: TablePlan, kind: str, schema: str, file_key: str,
               batch_key: str, snapshot_lsn: Optional[int]) -> tuple[int, int]:
    """Copy one lake file into ``raw.<table>``; returns (rows read, rows inserted)."""
    metadata = lake.metadata(file_key)
    if not metadata.num_rows:
        return 0, 0
    file_schema = metadata.schema.to_arrow_schema()
    (exists,), = conn.run("SELECT to_regclass(:t) IS NOT NULL",
                          t=qualified(schema, plan.table))
    if not exists:
        _create_table(conn, plan, kind, schema, file_schema)
    held = _evolve(conn, plan, kind, schema, file_schema, batch_key)
    columns = [f.name for f in file_schema if f.name not in CDC_COLUMNS]
    arrow = {c: arrow_type(held[c]) for c in columns}
    staged = pa.schema([pa.field(c, arrow[c]) for c in columns] +
                       [pa.field(name, kind_arrow) for name, _, kind_arrow in RAW_COLUMNS])
    stage_name = f"stage_raw_{plan.table}"[:63]
    stage = quote_ident(stage_name)
    listed = ", ".join(quote_ident(c) for c in staged.names)
    conn.run(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS "  # nosec B608: quoted identifiers
             f"SELECT {listed} FROM {qualified(schema, plan.table)} WITH NO DATA")
    copied = copy_binary_into(conn, stage_name, staged,
                              _raw_batches(lake, file_key, batch_key, columns, arrow,
                                           snapshot_lsn))
    key = ", ".join(quote_ident(c) for c in [plan.primary_key] + _version_columns(plan, kind))
    (inserted,), = conn.run(
        f"WITH inserted AS (INSERT INTO {qualified(schema, plan.table)} ({listed}) "  # nosec
        f"SELECT {listed} FROM {stage} ON CONFLICT ({key}) DO NOTHING RETURNING 1) "  # B608
        "SELECT count(*) FROM inserted")
    conn.run(f"DROP TABLE {stage}")
    return copied, inserted


def _state(conn, plan: TablePlan, kind: str, schema: str) -> Optional[str]:
    """The newest lake key loaded into ``raw.<table>`` (None: none), the table's record
    created when it has none.

    Raises:
        ConfigError: the raw table was built for another extract type, key or schema.
    """
    found = conn.run("SELECT raw_schema, version_key, primary_key, loaded_through "  # nosec B608
                     f"FROM {bookkeeping()}.raw_table WHERE source_table = :t", t=plan.table)
    if not found:
        conn.run(f"INSERT INTO {bookkeeping()}.raw_table "  # nosec B608
                 "(source_table, raw_schema, version_key, primary_key, watermark_column) "
                 "VALUES (:t, :s, :k, :p, :w)",
                 t=plan.table, s=schema, k=kind, p=plan.primary_key,
                 w=plan.watermark_column if kind == "watermark" else None)
        return None
    (was_schema, was_kind, was_key, through), = found
    if (was_schema, was_kind, was_key) != (schema, kind, plan.primary_key):
        raise ConfigError(
            f"raw layer: table {plan.table} was loaded into {was_schema}.{plan.table} keyed "
            f"on {was_key} and its {was_kind}; it is now configured for {schema}, "
            f"{plan.primary_key} and its {kind}. To rebuild it from the lake: "
            f"{_rebuild_advice(qualified(was_schema, plan.table), plan.table)}")
    return through


def _rebuild_advice(q_table: str, table: str) -> str:
    """The statements that empty a raw table for a reload from the lake, for a message
    (``q_table`` quoted; never run)."""
    return (f"DROP TABLE {q_table} CASCADE; DELETE FROM {bookkeeping()}.raw_table "  # nosec B608
            f"WHERE source_table = '{table}'")


def load_raw(conn, lake: Lake, plans: list[TablePlan], schema: str,
             limit: Optional[int] = None) -> list[RawLoaded]:
    """Load into the raw layer (warehouse schema ``schema``, which exists) the lake batches
    of each table of ``plans`` after its ``totes.raw_table.loaded_through`` (at most
    ``limit`` per table), in the caller's transaction, which holds the load's lock; returns,
    per table with batches, the batches and rows read and the row versions inserted.

    Raises:
        ConfigError: a table's raw table was built for another key (the message says how to
            rebuild it).
        SourceSchemaError: a lake column's type changed incompatibly, or the lake lacks the
            key columns.
        LakeError / StorageUnavailable: a lake file is missing or unreadable.
    """
    results = []
    for plan in plans:
        kind = VERSION_KEYS[plan.extract_type]
        through = _state(conn, plan, kind, schema)
        found = lake.keys_after(plan.table, through)
        keys = found[:limit]
        if not keys:
            continue
        loaded = RawLoaded(table=plan.table, relation=f"{schema}.{plan.table}",
                           more=len(found) > len(keys))
        dropped: set[str] = set(conn.run(
            f"SELECT dropped FROM {bookkeeping()}.raw_table "  # nosec B608
            "WHERE source_table = :t", t=plan.table)[0][0] or [])
        for key in keys:
            footer = read_footer(lake, key)
            snapshot_lsn = footer.cdc.through_lsn \
                if footer.mode == SNAPSHOT_MODE and footer.cdc is not None else None
            if kind == "lsn" and snapshot_lsn is None and footer.mode != "cdc":
                snapshot_lsn = 0  # a batch of the table before it was read from the log
            for file_key in part_keys(footer, key):
                rows, inserted = _load_file(conn, lake, plan, kind, schema, file_key, key,
                                            snapshot_lsn)
                loaded.rows += rows
                loaded.inserted += inserted
            for change in (footer.source_schema.changes if footer.source_schema else []):
                if change.change == "dropped":
                    dropped.add(change.column)
                elif change.change == "added":
                    dropped.discard(change.column)
            loaded.batches += 1
        conn.run(f"UPDATE {bookkeeping()}.raw_table "  # nosec B608
                 "SET loaded_through = :k, batches = batches + :n, "
                 "dropped = CAST(:d AS text[]), updated_at = now() WHERE source_table = :t",
                 k=keys[-1], n=len(keys), d=sorted(dropped), t=plan.table)
        results.append(loaded)
    return results


def unloaded_raw_batches(conn, lake: Lake, plans: list[TablePlan]) -> int:
    """How many lake batches of ``plans``' tables the raw layer has not loaded (0 for none;
    every batch of a table it has never loaded)."""
    (exists,), = conn.run(f"SELECT to_regclass('{bookkeeping()}.raw_table') IS NOT NULL")
    through = dict(conn.run(
        f"SELECT source_table, loaded_through FROM {bookkeeping()}.raw_table"  # nosec B608
    )) if exists else {}
    return sum(len(lake.keys_after(plan.table, through.get(plan.table))) for plan in plans)


def raw_counts(conn) -> list[dict]:
    """Per raw table the warehouse holds (``totes.raw_table``, by name): ``{"table",
    "relation", "versions", "current", "batches", "loaded_through", "dropped"}``: its row
    versions, the rows of its ``_current`` view, the lake batches loaded, the newest, and
    the source columns recorded as dropped. Empty before the raw layer exists."""
    (exists,), = conn.run(f"SELECT to_regclass('{bookkeeping()}.raw_table') IS NOT NULL")
    if not exists:
        return []
    found = []
    for table, schema, batches, through, dropped in conn.run(
            "SELECT source_table, raw_schema, batches, loaded_through, dropped "  # nosec B608
            f"FROM {bookkeeping()}.raw_table ORDER BY source_table"):
        relation = qualified(schema, table)
        (here,), = conn.run("SELECT to_regclass(:t) IS NOT NULL", t=relation)
        if not here:
            continue
        (versions,), = conn.run(f"SELECT count(*) FROM {relation}")  # nosec B608: quoted
        (current,), = conn.run(
            f"SELECT count(*) FROM {qualified(schema, table + '_current')}")  # nosec B608
        found.append({"table": table, "relation": f"{schema}.{table}", "versions": versions,
                      "current": current, "batches": batches, "loaded_through": through,
                      "dropped": list(dropped or [])})
    return found
