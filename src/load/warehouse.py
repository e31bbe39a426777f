"""Merge transform batches into the warehouse, in one transaction per load.

For each batch (a transform manifest) and each of its tables, dimensions before facts:
``COPY ... FROM STDIN (FORMAT binary)`` streams the processed Parquet's record batches into
a temporary staging table, then one set-based statement merges it (a large fact batch is
bulk-loaded instead, see :func:`merge_file`):

* a dimension row is inserted, or replaces the row of its key when it is a newer version
  (its version columns, compared as a tuple, are later): loading a batch again, or an older
  batch after a newer one, never takes a dimension back to older values. ``dim_date``, whose
  values follow from its key, has no version: a row is rewritten only if a value differs;
* a fact row (one version of a source row) is inserted unless its version key (source id +
  last_updated date and time) is already there. A fact row whose foreign key has no
  dimension row yet is held (:mod:`totes.load.held_facts`) instead of failing the batch, and
  inserted by the first load after its dimension row arrives.

Pending work is the set of committed batches the warehouse has not recorded, in batch order
(as dlt derives pending loads from ``_dlt_loads``). The warehouse records each batch it loads
in ``totes.loaded_batch``, in the same transaction as the rows: a load lands whole, batch
keys included, or leaves the warehouse as it was. So that finding pending batches does not
list the whole history, ``totes.load_state.loaded_through`` keeps the newest manifest key up
to which every committed batch is loaded; only manifests after it are listed. A load of
chosen batches (``--batch``) records them without moving it, so older pending batches are
still found. An advisory lock serialises concurrent loads.

Warehouse schema: :func:`create_warehouse` creates the star schema and the bookkeeping tables,
and upgrades a warehouse created by an older version (``totes.schema_version``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc
from pg8000.exceptions import DatabaseError

from totes.contracts.errors import ConfigError, LakeError, PermissionDenied
from totes.contracts.manifest import Manifest, Repair
from totes.contracts.identifiers import qualified, quote_ident
from totes.contracts.source_tables import SOURCE_TABLES
from totes.contracts.stage_results import LoadResult, LoadedTable, counted
from totes.contracts.quarantine import VERSION_COLUMN, quarantine_prefix
from totes.contracts.star_schema import SOURCE_LSN, TABLES, TIME, WarehouseTable
from totes.contracts.config import TablePlan
from totes.load import held_facts, raw, widening
from totes.utils import settings
from totes.utils.settings import bookkeeping
from totes.utils.lake import Lake
from totes.utils.ledger import ALL_TABLES, Ledger, new_run_id
from totes.utils.manifests import (latest_manifest, manifests_after, read_manifest,
                                   read_repairs)
from totes.utils.databases import SourceDatabase
from totes.utils.postgres import Database
from totes.utils.postgres_copy import copy_binary_into
from totes.utils.postgres_errors import sqlstate_of
from totes.utils.postgres_merge import merge_staged
from totes.utils.run_tracking import check_lease, skip_reason, tracked

log = logging.getLogger(__name__)

# Arbitrary constant identifying the load lock among the warehouse's advisory locks.
LOAD_LOCK_ID = 7_001_007
#: Rows per record batch streamed from a processed file into COPY (one batch in memory).
COPY_BATCH_ROWS = 65_536
#: The warehouse schema this code writes. 1: the first release (time(3), no versions);
#: 2: times keep microseconds, dimensions carry source_last_updated, totes.load_state;
#: 3: held facts (totes.held_<fact>); 4: joined dimensions carry reference_last_updated;
#: 5: each fact's current-version view (<fact>_current); 6: deletes and log positions (every
#: fact and dimension but dim_date gains is_deleted and source_lsn; a fact's version key is
#: its source id, last_updated and source_lsn; the current views leave deleted ids out);
#: 7: the row versions the quarantine holds (totes.quarantined), for reconciliation;
#: 8: the raw layer's bookkeeping (totes.raw_table; the raw schema itself is created by the
#: first load that has a raw table, :mod:`totes.load.raw`).
WAREHOUSE_SCHEMA_VERSION = 8


def _bookkeeping_ddl(book: str) -> tuple[str, ...]:
    """The load's bookkeeping tables in schema ``book`` (quoted)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {book}.loaded_batch ("
        " manifest_key text PRIMARY KEY,"
        " loaded_at timestamptz NOT NULL DEFAULT now(),"
        " rows jsonb NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {book}.load_state ("
        " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
        " loaded_through text)",
        f"INSERT INTO {book}.load_state (singleton, loaded_through) "  # nosec B608
        "VALUES (true, NULL) "
        "ON CONFLICT DO NOTHING",
        # The row versions transform held in quarantine, recorded by the load of their batch:
        # what reconciliation counts as quarantined (a version, not a row's id).
        f"CREATE TABLE IF NOT EXISTS {book}.quarantined ("
        " source_table text NOT NULL,"
        " row_id bigint NOT NULL,"
        " version timestamp NOT NULL,"
        " rule text NOT NULL,"
        " batch text NOT NULL,"
        " PRIMARY KEY (source_table, row_id, version))",
    )


#: The variable that lets the warehouse share the source's database (a deliberate choice,
#: never a default: the star schema would be created among the source's tables).
ALLOW_SHARED_DATABASE = settings.variable("allow_shared_database")


def max_batches() -> int:
    """The most batches one load takes (``TOTES_LOAD_MAX_BATCHES``, 48): a backlog is loaded
    over several runs, each well inside a Lambda's time limit.

    Raises:
        ConfigError: not a positive integer.
    """
    return settings.current().load_max_batches


def check_separate(source: SourceDatabase, warehouse: Database) -> None:
    """Refuse a warehouse that is the source database (same server and database name).

    Raises:
        ConfigError: both name the same database, and ``TOTES_ALLOW_SHARED_DATABASE`` is not 1.
    """
    if source.location() == warehouse.location() and \
            not settings.current().allow_shared_database:
        raise ConfigError(f"the warehouse is the {source.describe()}: point the warehouse at "
                          f"another database, or set {ALLOW_SHARED_DATABASE}=1 to keep the "
                          "star schema beside the source's tables")


def _refuse_source_tables(conn, schema: str) -> None:
    """Before the first creation: refuse a warehouse schema that holds the ToteSys tables."""
    found = [name for name, in conn.run(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') "
        "AND c.relname = ANY(CAST(:names AS text[])) ORDER BY 1", schema=schema,
        names=list(SOURCE_TABLES))]
    if len(found) >= 3 and not settings.current().allow_shared_database:
        (database,), = conn.run("SELECT current_database()")
        raise ConfigError(f"the warehouse database {database} holds the ToteSys source tables "
                          f"({', '.join(found[:4])}, …): it looks like the source. Point the "
                          f"warehouse at another database, or set {ALLOW_SHARED_DATABASE}=1")


def warehouse_schema() -> str:
    """The warehouse schema of the star schema (``TOTES_WAREHOUSE_SCHEMA``, ``public``).

    Raises:
        ConfigError: not a lower-case identifier.
    """
    return settings.current().warehouse_schema


def create_warehouse(conn, processed: Optional[Lake] = None,
                     schema: Optional[str] = None) -> None:
    """Create the star schema (in the warehouse schema ``schema``, default
    :func:`warehouse_schema`; created if absent) and the load bookkeeping (schema ``totes``)
    where absent, and upgrade a warehouse of an older schema version in place (adding the
    dimensions' version column, widening times to microseconds, ...:
    :data:`WAREHOUSE_SCHEMA_VERSION`). Runs inside the caller's transaction; a warehouse
    already at the version costs one query. Upgraded from before version 7, its record of
    quarantined versions is filled from ``processed`` (every quarantine file the newest
    manifest names).

    Raises:
        ConfigError: the warehouse's star schema is in another schema than ``schema`` (the
            message names it and the setting); the database holds the source's tables.
        PermissionDenied: the role may not create the schema or the tables in it.
    """
    schema = schema or warehouse_schema()
    create_schema(conn, settings.current().bookkeeping_schema)
    conn.run(f"CREATE TABLE IF NOT EXISTS {bookkeeping()}.schema_version (version int NOT NULL)")
    (current, here), = conn.run(
        "SELECT coalesce(max(version), 0), to_regclass(:dates) IS NOT NULL "  # nosec B608
        f"FROM {bookkeeping()}.schema_version", dates=TABLES["dim_date"].relation(schema))
    if current and not here:
        _wrong_schema(conn, schema)
    if current >= WAREHOUSE_SCHEMA_VERSION:
        return
    create_schema(conn, schema)
    (created,), = conn.run(f"SELECT to_regclass('{bookkeeping()}.loaded_batch') IS NOT NULL")
    if not created:
        _refuse_source_tables(conn, schema)
    for statement in _bookkeeping_ddl(bookkeeping()) + raw.bookkeeping_ddl(bookkeeping()):
        conn.run(statement)
    for table in TABLES.values():  # views first: a column a view uses cannot change type
        if table.current_view:
            conn.run(f"DROP VIEW IF EXISTS {table.current_relation(schema)}")
    for table in TABLES.values():
        conn.run(table.ddl(schema))
        _upgrade_columns(conn, table, table.relation(schema))
        if table.kind == "fact":
            _upgrade_key(conn, table.relation(schema), table, "u")
            conn.run(held_facts.held_ddl(table))
            held = held_facts.held_table(table)
            _upgrade_columns(conn, table, held)
            _upgrade_key(conn, held, table, "p")
            conn.run(table.current_view_ddl(schema))
    if 0 < current < 7 and processed is not None:
        newest_key, newest = latest_manifest(processed)
        for key in (newest.quarantine if newest else []):
            record_quarantined(conn, processed, key, newest_key or "")
    conn.run(f"INSERT INTO {bookkeeping()}.schema_version (version) VALUES (:v)",  # nosec B608
             v=WAREHOUSE_SCHEMA_VERSION)


def check_warehouse(warehouse: Database, schema: Optional[str] = None,
                    raw_schema: Optional[str] = None) -> None:
    """Before a run starts: check that the warehouse role can create the star schema in the
    warehouse schema ``schema`` (default :func:`warehouse_schema`) and its bookkeeping in
    ``totes`` (CREATE on each, or on the database where a schema does not exist yet), and
    that it owns the star schema's tables already there (a bulk load drops and adds their
    keys, an upgrade alters them). With ``raw_schema`` (a run with raw-layer tables), that
    it may create the raw layer's tables there too.

    Raises:
        PermissionDenied: a privilege is missing (the message names the schema or tables,
            the role and the GRANT or ALTER that gives it).
        ConfigError: the star schema is in another schema (see :func:`create_warehouse`).
        DatabaseUnavailable / DatabaseRejected: the warehouse could not be reached.
    """
    schema = schema or warehouse_schema()
    if raw_schema is not None:
        raw.check_raw_schema(raw_schema, schema)
    with warehouse.session("totes-plan", f"checking the {warehouse.describe()}") as session:
        conn = session.conn
        book = settings.current().bookkeeping_schema
        for name in dict.fromkeys((book, schema) + ((raw_schema,) if raw_schema else ())):
            _check_schema(conn, name)
        (versioned, here), = conn.run(
            f"SELECT to_regclass('{bookkeeping()}.schema_version') IS NOT NULL, "
            "to_regclass(:t) IS NOT NULL", t=TABLES["dim_date"].relation(schema))
        if versioned and not here:
            (version,), = conn.run(
                f"SELECT coalesce(max(version), 0) "  # nosec B608
                f"FROM {bookkeeping()}.schema_version")
            if version:
                _wrong_schema(conn, schema)
        (role,), = conn.run("SELECT current_user")
        foreign = [name for name, in conn.run(
            "SELECT c.relname FROM pg_class c WHERE c.oid = ANY(ARRAY(SELECT to_regclass(t) "
            "FROM unnest(CAST(:tables AS text[])) t)) AND NOT pg_has_role(c.relowner, "
            "'USAGE') ORDER BY 1", tables=[t.relation(schema) for t in TABLES.values()])]
        if foreign:
            raise PermissionDenied(
                f"the warehouse role {role} does not own {', '.join(foreign)} in schema "
                f"{schema}: load alters them (keys dropped and added by a bulk load, columns "
                f"by an upgrade). As their owner: ALTER TABLE {schema}.<table> OWNER TO "
                f"{quote_ident(role)}, or GRANT <owner> TO {quote_ident(role)}")


def _check_schema(conn, schema: str) -> None:
    """The role may create in ``schema``, or may create ``schema`` when it is absent.

    Raises:
        PermissionDenied: it may not (the message gives the GRANT).
    """
    (exists, allowed, role, database), = conn.run(
        "SELECT n IS NOT NULL, CASE WHEN n IS NULL THEN has_database_privilege("
        "current_database(), 'CREATE') ELSE has_schema_privilege(n, 'CREATE') "
        "AND has_schema_privilege(n, 'USAGE') END, current_user, current_database() "
        "FROM to_regnamespace(:s) AS n", s=quote_ident(schema))
    if allowed:
        return
    if not exists:
        raise PermissionDenied(f"the warehouse has no schema {schema} and the role {role} may "
                               f"not create it: CREATE SCHEMA {quote_ident(schema)} (as its "
                               f"owner), or GRANT CREATE ON DATABASE {quote_ident(database)} "
                               f"TO {quote_ident(role)}; or set "
                               f"{settings.variable('warehouse_schema')} to a schema it owns")
    raise PermissionDenied(f"the warehouse role {role} may not create tables in schema "
                           f"{schema} of database {database}: GRANT USAGE, CREATE ON SCHEMA "
                           f"{quote_ident(schema)} TO {quote_ident(role)}; or set "
                           f"{settings.variable('warehouse_schema')} to a schema it owns")


def create_schema(conn, schema: str) -> None:
    """Create the database schema ``schema`` when it does not exist. (``CREATE SCHEMA IF NOT
    EXISTS`` is not used: it needs the database's CREATE privilege even when the schema
    exists.)

    Raises:
        PermissionDenied: the role may not create it (the message says which grant helps).
    """
    (exists,), = conn.run("SELECT to_regnamespace(:s) IS NOT NULL", s=quote_ident(schema))
    if exists:
        return
    _check_schema(conn, schema)
    conn.run(f"CREATE SCHEMA {quote_ident(schema)}")


def _wrong_schema(conn, schema: str) -> None:
    """A warehouse with a star schema, but not in ``schema``: raise, naming where it is.

    Raises:
        ConfigError: always.
    """
    found = [name for name, in conn.run(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = 'dim_date' AND c.relkind = 'r' ORDER BY 1")]
    (database,), = conn.run("SELECT current_database()")
    variable = settings.variable("warehouse_schema")
    if not found:
        raise ConfigError(f"the warehouse database {database} records a star schema "
                          "(totes.schema_version) but holds none: it was dropped. To build "
                          "it again from the processed area, DROP SCHEMA totes CASCADE (the "
                          "load's bookkeeping) and load again")
    advice = (f": set {variable}={found[0]} (an older release put it where the role's "
              f"search_path said), or move its tables and views to {schema} with ALTER "
              "TABLE … SET SCHEMA" if len(found) == 1 else "")
    raise ConfigError(f"the star schema of the warehouse database {database} is in schema "
                      f"{', '.join(found)}, not in schema {schema} ({variable}){advice}")


def record_quarantined(conn, processed: Lake, key: str, batch: str) -> int:
    """Record the row versions of the quarantine file ``key`` (of ``batch``) in
    ``totes.quarantined`` (once each; a version without a ``last_updated`` is left out);
    returns how many it recorded."""
    table = key.split("/")[1]
    pk = SOURCE_TABLES[table].primary_key if table in SOURCE_TABLES else f"{table}_id"
    rows = processed.read_table(key, columns=[pk, VERSION_COLUMN, "_totes_rule"])
    # A version whose last_updated could not be read has no time to record; reconciliation
    # finds such a row's rule break itself.
    rows = rows.filter(pc.is_valid(rows[VERSION_COLUMN]))
    if not rows.num_rows:
        return 0
    conn.run(f"INSERT INTO {bookkeeping()}.quarantined "  # nosec B608
             "(source_table, row_id, version, rule, batch) "
             "SELECT CAST(:t AS text), q.id, q.version, q.rule, CAST(:b AS text) FROM "
             "unnest(CAST(:ids AS bigint[]), CAST(:versions AS timestamp[]), "
             "CAST(:rules AS text[])) AS q(id, version, rule) ON CONFLICT DO NOTHING",
             t=table, b=batch, ids=rows[pk].to_pylist(),
             versions=[_utc_text(v) for v in rows[VERSION_COLUMN].to_pylist()],
             rules=rows["_totes_rule"].to_pylist())
    return rows.num_rows


def _utc_text(moment) -> Optional[str]:
    """A version as text in UTC, as ``totes.quarantined`` keeps it (``timestamp``)."""
    if moment is None:
        return None
    if getattr(moment, "tzinfo", None) is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(sep=" ")


def _upgrade_columns(conn, table: WarehouseTable, q_table: str) -> None:
    """Bring the existing relation ``q_table`` (quoted: ``table`` or its held table) to
    ``table``'s declared columns: add the nullable ones it lacks, and those with a default
    (their rows take it: ``is_deleted`` false, ``source_lsn`` 0); give its times
    microseconds."""
    for column in table.columns:
        q_column = quote_ident(column.name)
        if column.nullable:
            conn.run(f"ALTER TABLE {q_table} ADD COLUMN IF NOT EXISTS {q_column} "
                     f"{column.sql_type}")
        elif column.default is not None:
            conn.run(f"ALTER TABLE {q_table} ADD COLUMN IF NOT EXISTS {q_column} "
                     f"{column.sql_type} NOT NULL DEFAULT {column.default}")
        if (column.sql_type, column.arrow_type) == TIME:
            conn.run(f"ALTER TABLE {q_table} ALTER COLUMN {q_column} TYPE {column.sql_type}")


def _upgrade_key(conn, q_table: str, table: WarehouseTable, kind: str) -> None:
    """Make the unique (``kind`` ``u``) or primary (``p``) key of the relation ``q_table``
    the fact's version key (:attr:`WarehouseTable.merge_key`), replacing a key of an older
    schema (before version 6: without ``source_lsn``)."""
    wanted = list(table.merge_key)
    for name, columns in conn.run(
            "SELECT c.conname, array_agg(a.attname::text ORDER BY k.i) FROM pg_constraint c "
            "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, i) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
            "WHERE c.conrelid = CAST(:t AS regclass) AND c.contype = CAST(:k AS \"char\") "
            "GROUP BY c.conname", t=q_table, k=kind):
        if list(columns) == wanted:
            return
        conn.run(f"ALTER TABLE {q_table} DROP CONSTRAINT {quote_ident(name)}")
    listed = ", ".join(quote_ident(c) for c in wanted)
    conn.run(f"ALTER TABLE {q_table} ADD {'PRIMARY KEY' if kind == 'p' else 'UNIQUE'} "
             f"({listed})")


def _newer_version(table: WarehouseTable) -> str:
    """The condition under which an existing dimension row is replaced: the incoming row is
    a newer version, its version columns compared as a tuple (a row loaded before versions
    existed has none: any version is newer); for a table without versions, a value
    differs."""
    target = quote_ident(table.name)
    if table.version_columns:
        types = {c.name: c.sql_type for c in table.columns}
        # A missing version sorts first: -infinity for a time, -1 for a log position.
        lowest = {c: "-1" if types[c] == "bigint" else "'-infinity'"
                  for c in table.version_columns}
        versions = [(quote_ident(c), lowest[c]) for c in table.version_columns]
        current = ", ".join(f"coalesce({target}.{v}, {low})" for v, low in versions)
        incoming = ", ".join(f"coalesce(EXCLUDED.{v}, {low})" for v, low in versions)
        return f"(({current}) < ({incoming}))"
    others = [quote_ident(c) for c in table.column_names if c not in table.merge_key]
    current = ", ".join(f"{target}.{c}" for c in others)
    incoming = ", ".join(f"EXCLUDED.{c}" for c in others)
    return f"({current}) IS DISTINCT FROM ({incoming})"


@dataclass(frozen=True)
class StagedRows:
    """A fact file's rows already in a warehouse table (``relation``, quoted), staged by the
    Spark engine (:mod:`totes.load.spark_load`) with ``ORDINAL``: each row's position in the
    file, so that they are taken in the file's order (and the fact's serial keys follow it,
    as the Lambda path's COPY does)."""

    relation: str
    rows: int


#: The column of a :class:`StagedRows` table that holds each row's position in its file.
ORDINAL = "_totes_ordinal"
#: Stages a fact file in the warehouse before the load's transaction merges it: called with
#: the fact (widened for the file) and the file's key; None to copy it in the transaction.
Stager = Callable[[WarehouseTable, str], Optional[StagedRows]]


def _fill(conn, table: WarehouseTable, rows, target: str, in_schema: Optional[str]) -> int:
    """Put ``rows`` (record batches, or :class:`StagedRows`) into ``target`` (of the schema
    ``in_schema``, else a temporary table) in the table's columns; returns the rows put."""
    if not isinstance(rows, StagedRows):
        return copy_binary_into(conn, target, table.arrow_schema(), rows, in_schema=in_schema)
    columns = ", ".join(quote_ident(c) for c in table.column_names)
    relation = qualified(in_schema, target) if in_schema else quote_ident(target)
    # Identifiers only: the schema's names and the stager's quoted relation.
    conn.run(f"INSERT INTO {relation} ({columns}) SELECT {columns} "  # nosec B608
             f"FROM {rows.relation} ORDER BY {ORDINAL}")
    return conn.row_count


def merge_file(conn, table: WarehouseTable, processed: Lake, key: str,
               batch: str, schema: str, stage: Optional[Stager] = None
               ) -> tuple[LoadedTable, int]:
    """Load one processed file of ``table`` (of ``batch``) into the warehouse schema
    ``schema``; returns its rows, inserted and updated, and for a fact the rows newly held
    for want of a dimension row.

    A dimension's file, and a fact file too small for a bulk load (:func:`_bulk`), is staged
    (binary COPY into a temporary table) and merged in one statement, a fact's orphan rows
    held first. A large fact file is bulk-loaded: straight into the fact table when it is
    empty (:func:`bulk_copy`: the first load of a table, a full reload), otherwise staged and
    inserted by :func:`bulk_insert`. A fact version read without a log position (by a cursor
    or in a copy: ``source_lsn`` 0) is the one of its id and ``last_updated`` already loaded,
    whatever that one's position (:func:`_drop_known_versions`). With ``stage`` (the Spark
    engine's), a fact file's rows come from the table it staged them in instead of a COPY
    in this transaction, which then drops that table."""
    metadata = processed.metadata(key)
    rows = metadata.num_rows
    file_schema = metadata.schema.to_arrow_schema()
    table = widening.widen_for_file(conn, table, file_schema, schema)  # a widened source
    staged = stage(table, key) if stage is not None and table.kind == "fact" else None
    batches = staged if staged is not None else \
        file_batches(processed, key, table, file_schema.names)
    q_table = table.relation(schema)
    bulk = table.kind == "fact" and _bulk(conn, table, rows, schema)
    if bulk:
        # Before looking at the table: nothing else writes it until the load commits.
        conn.run(f"LOCK TABLE {q_table} IN ACCESS EXCLUSIVE MODE")
        (empty,), = conn.run(f"SELECT NOT EXISTS (SELECT 1 FROM {q_table})")  # nosec B608
        if empty:
            inserted, held = bulk_copy(conn, table, batches, batch, schema)
            _drop_staged(conn, staged)
            return LoadedTable(table=table.name, rows=rows, inserted=inserted), held
    stage_name = f"stage_{table.name}"
    columns = ", ".join(quote_ident(c) for c in table.column_names)
    conn.run(f"CREATE TEMP TABLE {quote_ident(stage_name)} ON COMMIT DROP AS "  # nosec B608
             f"SELECT {columns} FROM {q_table} WITH NO DATA")
    _fill(conn, table, batches, stage_name, None)
    _drop_staged(conn, staged)
    if table.kind == "fact":
        _drop_known_versions(conn, table, stage_name, schema)
    held = held_facts.hold_orphans(conn, table, quote_ident(stage_name), batch, schema)[1] \
        if table.kind == "fact" else 0
    if bulk:
        inserted, updated = bulk_insert(conn, table, stage_name, schema), 0
    else:
        inserted, updated = merge_staged(conn, table.name, stage_name, table.column_names,
                                         list(table.merge_key),
                                         None if table.kind == "fact" else _newer_version(table),
                                         schema=schema)
    conn.run(f"DROP TABLE {quote_ident(stage_name)}")
    return LoadedTable(table=table.name, rows=rows, inserted=inserted, updated=updated), held


def _drop_staged(conn, staged: Optional[StagedRows]) -> None:
    """Drop the Spark engine's staging table, in the load's transaction (a load that fails
    leaves it, and the next one replaces it)."""
    if staged is not None:
        conn.run(f"DROP TABLE {staged.relation}")


def complete_batch(batch: pa.RecordBatch, table: WarehouseTable,
                   missing: list) -> pa.RecordBatch:
    """``batch`` in the table's columns, each of ``missing`` (the columns a file of an older
    release lacks: ``is_deleted``, ``source_lsn``) with its default."""
    if not missing:
        return batch
    for column in missing:
        batch = batch.append_column(column.name, pa.array(
            [column.default_value()] * batch.num_rows, column.arrow_type))
    return batch.select(table.column_names)


def file_batches(processed: Lake, key: str, table: WarehouseTable, present: list[str]):
    """The record batches of the processed file ``key`` of ``table`` (``present``: the
    columns it holds), in the table's columns (:func:`complete_batch`)."""
    missing = [c for c in table.columns if c.name not in present]
    for batch in processed.iter_batches(key, COPY_BATCH_ROWS,
                                        columns=[c for c in table.column_names if c in present]):
        yield complete_batch(batch, table, missing)


def _drop_known_versions(conn, table: WarehouseTable, stage: str, schema: str) -> None:
    """Remove from the staged fact rows the versions without a log position (``source_lsn``
    0: read by a cursor, or in an initial copy) whose id and ``last_updated`` the fact
    already holds at any position: a copy of a row that the change log brought before is
    the same version (the unique key's index serves the lookup)."""
    same = " AND ".join(f"f.{quote_ident(c)} = s.{quote_ident(c)}"
                        for c in table.merge_key if c != SOURCE_LSN)
    # Identifiers only, each through quote_ident.
    conn.run(f"DELETE FROM {quote_ident(stage)} s WHERE s.{SOURCE_LSN} = 0 "  # nosec B608
             f"AND EXISTS (SELECT 1 FROM {table.relation(schema)} f WHERE {same} "
             f"AND f.{SOURCE_LSN} <> 0)")


#: A fact batch of at least this many rows, and at least 1/20 of the table's rows, is
#: bulk-loaded (see :func:`bulk_copy` and :func:`bulk_insert`); smaller ones are inserted
#: row-checked.
BULK_MIN_ROWS = 10_000
BULK_TABLE_FRACTION = 20


def _bulk(conn, table: WarehouseTable, rows: int, schema: str) -> bool:
    """Whether a bulk load is cheaper. Measured on 2,000,000 sales orders (2 cores): the
    row-checked insert pays about 32 µs per row (9 foreign-key triggers and the unique
    index's conflict check), the bulk insert 1.2 µs per row plus 1.4 µs per row of the whole
    table (rebuilding two indexes and validating nine foreign keys)."""
    if rows < BULK_MIN_ROWS:
        return False
    (existing,), = conn.run("SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                            "WHERE oid = to_regclass(:t)", t=table.relation(schema))
    return rows * BULK_TABLE_FRACTION >= existing


class _Constraints:
    """A fact's primary, unique and foreign keys as the catalog defines them, to drop before
    a bulk load and add again after it (in the load's transaction)."""

    def __init__(self, conn, table: WarehouseTable, schema: str):
        self.conn, self.q_table = conn, table.relation(schema)
        found = conn.run(
            "SELECT conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
            "WHERE conrelid = to_regclass(:t) AND contype IN ('p', 'u', 'f') ORDER BY conname",
            t=self.q_table)
        self.keys = [(n, d) for n, d, kind in found if kind in ("p", "u")]
        self.foreign_keys = [(n, d) for n, d, kind in found if kind == "f"]

    def drop(self) -> None:
        for name, _ in self.foreign_keys + self.keys:
            self.conn.run(f"ALTER TABLE {self.q_table} DROP CONSTRAINT {quote_ident(name)}")

    def add(self, which: list[tuple[str, str]]) -> None:
        for name, definition in which:
            # The definition is the catalog's own (pg_get_constraintdef), of a name it holds.
            self.conn.run(f"ALTER TABLE {self.q_table} ADD CONSTRAINT "  # nosec B608
                          f"{quote_ident(name)} {definition}")

    def add_or(self, which: list[tuple[str, str]], sqlstate: str, repair, first=None) -> None:
        """Call ``first()`` (when given) and add ``which``; when that fails with
        ``sqlstate``, undo both, call ``repair()`` and add them again (a second failure
        raises)."""
        self.conn.run("SAVEPOINT totes_bulk")
        try:
            if first is not None:
                first()
            self.add(which)
        except DatabaseError as exc:
            if sqlstate_of(exc) != sqlstate:
                raise
            self.conn.run("ROLLBACK TO SAVEPOINT totes_bulk")
            repair()
            self.add(which)
        self.conn.run("RELEASE SAVEPOINT totes_bulk")


_UNIQUE_VIOLATION, _FOREIGN_KEY_VIOLATION = "23505", "23503"


def _same_version(table: WarehouseTable, left: str, right: str) -> str:
    """``left.k = right.k AND ...`` over the fact's version key (its merge key)."""
    return " AND ".join(f"{left}.{quote_ident(c)} = {right}.{quote_ident(c)}"
                        for c in table.merge_key)


def bulk_copy(conn, table: WarehouseTable, batches, batch: str,
              schema: str) -> tuple[int, int]:
    """Load a large batch into the empty fact ``table`` (in the warehouse schema ``schema``)
    at COPY speed, in the load's transaction (the table locked); returns (rows inserted, rows
    newly held).

    The fact's keys and foreign keys are dropped, the batch's record ``batches`` (or the
    :class:`StagedRows` the Spark engine staged) copied straight into it (binary COPY: no
    staging table, no per-row conflict check or trigger), then every constraint is added
    again as the catalog defined it, and validated: the unique and primary keys first (when
    the batch holds one version twice, the later copies are deleted and the keys added
    again), then the foreign keys, each checked by one scan of the table. When a foreign
    key finds a row without its dimension row, the attempt is undone, the orphan rows move
    to the held table (:func:`held_facts.hold_orphans`, with the same reasons as a staged
    batch's) and the foreign keys are added again. A clean batch so pays for one check of
    its foreign keys, not two (measured on 2,000,000 sales
    orders: the set-wise orphan check 1.4 s, the nine validations 2.0 s). The catalog
    declares the same keys afterwards.
    """
    q_table = table.relation(schema)
    constraints = _Constraints(conn, table, schema)
    constraints.drop()
    copied = _fill(conn, table, batches, table.name, schema)
    removed = {"duplicates": 0, "orphans": 0, "held": 0}

    def remove_duplicates() -> None:
        # Identifiers only, each through quote_ident.
        (removed["duplicates"],), = conn.run(
            f"WITH gone AS (DELETE FROM {q_table} a USING {q_table} b "  # nosec B608
            f"WHERE {_same_version(table, 'a', 'b')} AND a.ctid > b.ctid RETURNING 1) "
            "SELECT count(*) FROM gone")

    def hold_orphans() -> None:
        removed["orphans"], removed["held"] = held_facts.hold_orphans(
            conn, table, q_table, batch, schema)

    constraints.add_or(constraints.keys, _UNIQUE_VIOLATION, remove_duplicates)
    constraints.add_or(constraints.foreign_keys, _FOREIGN_KEY_VIOLATION, hold_orphans)
    conn.run(f"ANALYZE {q_table}")
    return copied - removed["duplicates"] - removed["orphans"], removed["held"]


def bulk_insert(conn, table: WarehouseTable, stage: str, schema: str) -> int:
    """Insert the staged versions a fact (in the warehouse schema ``schema``) lacks at bulk
    speed, in the load's transaction; returns how many were inserted.

    The fact's keys and foreign keys are dropped, the rows inserted (each version once: the
    fact's existing versions left out by an anti-join, the batch's own duplicates removed
    when the unique key finds any), then every constraint is added again as it was, the
    foreign keys validated against the dimensions (a scan of the table, not a trigger per
    row). So the catalog declares the same keys after the load, and no fact row can
    reference a missing dimension row: a violation fails the load, which then leaves
    nothing. The table is locked (ACCESS EXCLUSIVE) until the load commits; readers wait,
    as for any schema change.
    """
    q_table, q_stage = table.relation(schema), quote_ident(stage)
    constraints = _Constraints(conn, table, schema)
    constraints.drop()
    columns = ", ".join(quote_ident(c) for c in table.column_names)
    key = ", ".join(quote_ident(c) for c in table.merge_key)
    same = _same_version(table, "f", "s")

    def insert(distinct: bool) -> int:
        chosen = f"DISTINCT ON ({key}) " if distinct else ""
        order = f" ORDER BY {key}" if distinct else ""
        # Identifiers only, each through quote_ident.
        (count,), = conn.run(
            f"WITH inserted AS (INSERT INTO {q_table} ({columns}) "  # nosec B608
            f"SELECT {chosen}{columns} FROM {q_stage} s WHERE NOT EXISTS "
            f"(SELECT 1 FROM {q_table} f WHERE {same}){order} RETURNING 1) "
            "SELECT count(*) FROM inserted")
        return count

    # A batch rarely holds one version twice (two lake files of the same rows, a reingest
    # beside an incremental batch): insert as it is, and only when the unique key refuses
    # it, again with the duplicates removed (a sort of the batch, 1.6 s of 2,000,000 rows).
    inserted = {"rows": 0}
    constraints.add_or(constraints.keys, _UNIQUE_VIOLATION,
                       first=lambda: inserted.update(rows=insert(distinct=False)),
                       repair=lambda: inserted.update(rows=insert(distinct=True)))
    constraints.add(constraints.foreign_keys)
    conn.run(f"ANALYZE {q_table}")
    return inserted["rows"]


def pending_batches(conn, processed: Lake, limit: Optional[int] = None,
                    max_rows: Optional[int] = None
                    ) -> tuple[list[str], Optional[str], bool]:
    """The committed batches the warehouse has not loaded, oldest first (at most ``limit``,
    and with ``max_rows`` whole batches up to that many rows of processed files, at least
    one: the rest wait for the next load), the newest manifest key up to which every batch
    is loaded once these are (the next ``loaded_through``; None when it stays), and whether
    batches beyond those bounds wait. Lists only the manifests after
    ``totes.load_state.loaded_through``.

    Raises:
        LakeError / StorageUnavailable: a manifest could not be read.
    """
    (through,), = conn.run(f"SELECT loaded_through FROM {bookkeeping()}.load_state")  # nosec B608
    listed = manifests_after(processed, through)
    if not listed:
        return [], None, False
    loaded = {key for key, in conn.run(
        f"SELECT manifest_key FROM {bookkeeping()}.loaded_batch "  # nosec B608
        "WHERE manifest_key = ANY(CAST(:keys AS text[]))", keys=listed)}
    unloaded = [key for key in listed if key not in loaded]
    pending = unloaded[:limit]
    if max_rows is not None and len(pending) > 1:
        repairs, rows = read_repairs(processed), 0
        for i, key in enumerate(pending):
            rows += sum(o.rows for o in read_manifest(processed, key, repairs).outputs)
            if rows >= max_rows:
                pending = pending[:i + 1]
                break
    done, new_through = loaded | set(pending), None
    for key in listed:
        if key not in done:
            break
        new_through = key
    return pending, new_through, len(unloaded) > len(pending)


def _load_batch(session, conn, processed: Lake, manifest_key: str,
                totals: dict[str, LoadedTable], held: dict[str, int], schema: str,
                repairs: list[Repair], stage: Optional[Stager] = None) -> None:
    """Load one batch (its manifest read through ``repairs``).

    Raises:
        LakeError: a file of the batch is missing or damaged; the message gives the command
            that rebuilds the batch from the lake.
    """
    manifest = read_manifest(processed, manifest_key, repairs)
    try:
        _load_files(session, conn, processed, manifest_key, manifest, totals, held, schema,
                    stage)
    except LakeError as exc:
        raise LakeError(f"{exc}. The lake still holds the inputs of batch {manifest_key}: "
                        f"`totes transform --rebuild {manifest_key}` writes its files again, "
                        "and the next load takes it "
                        "(docs/how-to/damaged-processed-file.md)") from exc


def _load_files(session, conn, processed: Lake, manifest_key: str, manifest: Manifest,
                totals: dict[str, LoadedTable], held: dict[str, int], schema: str,
                stage: Optional[Stager] = None) -> None:
    counts = {}
    for name, table in TABLES.items():
        output = manifest.output(name)
        if output is None:
            continue
        session.doing = f"loading {name} of batch {manifest_key} into the " \
                        f"{session.database.describe()}"
        merged, newly_held = merge_file(conn, table, processed, output.key, manifest_key,
                                        schema, stage)
        counts[name] = merged.model_dump(exclude={"table"}) | {"held": newly_held}
        total = totals.setdefault(name, LoadedTable(table=name))
        total.rows += merged.rows
        total.inserted += merged.inserted
        total.updated += merged.updated
        if newly_held:
            held[name] = held.get(name, 0) + newly_held
    for source_table in manifest.quarantined:  # this batch's files: the last named
        prefix = f"{quarantine_prefix(source_table)}/"
        own = [k for k in manifest.quarantine if k.startswith(prefix)]
        if own:
            record_quarantined(conn, processed, own[-1], manifest_key)
    conn.run(f"INSERT INTO {bookkeeping()}.loaded_batch (manifest_key, rows) "  # nosec B608
             "VALUES (:key, CAST(:rows AS jsonb)) ON CONFLICT (manifest_key) DO NOTHING",
             key=manifest_key, rows=json.dumps(counts))


def _release_held(conn, totals: dict[str, LoadedTable], schema: str) -> dict[str, int]:
    """Insert the held fact rows whose dimension rows have arrived; counts them as inserted."""
    released = {}
    for name, table in TABLES.items():
        if table.kind == "fact":
            count = held_facts.release(conn, table, schema)
            if count:
                released[name] = count
                totals.setdefault(name, LoadedTable(table=name)).inserted += count
    return released


def load(processed: Lake, warehouse: Database, manifest_keys: Optional[list[str]] = None,
         ledger: Optional[Ledger] = None, run_id: Optional[str] = None,
         lake: Optional[Lake] = None,
         raw_tables: Optional[list[TablePlan]] = None,
         stage: Optional[Stager] = None) -> LoadResult:
    """Load the given transform batches (default: every committed batch not loaded yet) in
    one transaction, then release the held fact rows whose dimension rows have arrived;
    with a ``ledger``, under the ``load`` lease (waited for) and recorded there. With the
    ``lake`` and ``raw_tables`` (:func:`totes.contracts.config.raw_tables`), the same
    transaction loads into the raw layer (schema ``TOTES_RAW_SCHEMA``) the lake batches of
    those tables it has not loaded (:func:`totes.load.raw.load_raw`). ``stage`` is the Spark
    engine's (:mod:`totes.load.spark_load`): it stages each fact file before it is merged.

    Returns the stage result (:class:`~totes.contracts.stage_results.LoadResult`): the batches
    loaded, in order, per warehouse table the rows staged, inserted and updated, and the fact
    rows held, released and still waiting.

    Raises:
        DatabaseUnavailable: the warehouse could not be reached or the connection broke (retry).
        TerminalError: the warehouse rejected the rows (a constraint; the message names it and
            the key), nothing was written.
        LakeError / StorageUnavailable: a batch's file is missing or unreadable.
        SourceSchemaError: a raw table's column changed type incompatibly in the lake.
    """
    def skipped(holder) -> LoadResult:
        return LoadResult(batches=[], tables=[], skipped=skip_reason(holder), seconds=0.0)

    def summary(result: LoadResult) -> dict:
        return {"rows": sum(t.inserted + t.updated for t in result.tables),
                "key": result.batches[-1] if result.batches else None,
                "details": {"batches": result.batches,
                            "tables": {t.table: t.model_dump(exclude={"table"})
                                       for t in result.tables},
                            "held": result.held, "released": result.released,
                            "raw": {t.table: t.model_dump(exclude={"table"})
                                    for t in result.raw}}}

    return tracked(ledger, "load", ALL_TABLES, run_id or new_run_id(),
                   "batches" if manifest_keys else None,
                   lambda: _load(processed, warehouse, manifest_keys, lake, raw_tables, stage),
                   skipped, summary,
                   wait=True)


def _load(processed: Lake, warehouse: Database, manifest_keys: Optional[list[str]],
          lake: Optional[Lake] = None,
          raw_tables: Optional[list[TablePlan]] = None,
          stage: Optional[Stager] = None) -> LoadResult:
    started = time.monotonic()
    totals: dict[str, LoadedTable] = {}
    held: dict[str, int] = {}
    schema = warehouse_schema()
    raw_plans = raw_tables if lake is not None else None
    raw_loaded = []
    if raw_plans:
        raw.check_raw_schema(raw.raw_schema(), schema)
    with warehouse.session("totes-load", f"loading into the {warehouse.describe()}") as session:
        conn = session.conn
        conn.run("START TRANSACTION")
        conn.run("SELECT pg_advisory_xact_lock(:id)", id=LOAD_LOCK_ID)
        from totes.load.swap import adoption_pending  # (swap imports this module)

        swapped_at = adoption_pending(conn, settings.current().bookkeeping_schema)
        if swapped_at is not None:
            raise ConfigError(
                f"the rebuild swapped in at {swapped_at} did not finish moving its processed "
                f"area into {processed.uri}: run `totes rebuild` to finish it (a load now "
                "would read batches from a half-moved area)")
        create_warehouse(conn, processed, schema)
        if manifest_keys is None:
            keys, through, more = pending_batches(conn, processed, max_batches(),
                                                  settings.current().load_max_rows)
        else:
            keys, through, more = list(manifest_keys), None, False
        repairs = read_repairs(processed) if keys else []
        for manifest_key in keys:
            _load_batch(session, conn, processed, manifest_key, totals, held, schema, repairs,
                        stage)
        session.doing = f"releasing held fact rows in the {warehouse.describe()}"
        released = _release_held(conn, totals, schema)
        still_waiting = held_facts.waiting(conn)
        if raw_plans and lake is not None:
            session.doing = f"loading the raw layer into the {warehouse.describe()}"
            create_schema(conn, raw.raw_schema())
            raw_loaded = raw.load_raw(conn, lake, raw_plans, raw.raw_schema(), max_batches())
        if through is not None:
            conn.run(f"UPDATE {bookkeeping()}.load_state "  # nosec B608
                     "SET loaded_through = :k", k=through)
        check_lease()
        conn.run("COMMIT")
    if held:
        log.warning("held %s whose dimension rows are missing: %s",
                    counted(sum(held.values()), "fact row"),
                    ", ".join(f"{t} {n:,}" for t, n in held.items()))
    log.info("loaded %s", counted(len(keys), "batch", "batches"))
    return LoadResult(batches=keys, tables=[totals[n] for n in TABLES if n in totals],
                      held=held, held_rows=sum(held.values()), released=released,
                      waiting=still_waiting, waiting_rows=sum(still_waiting.values()),
                      raw=raw_loaded, more=more or any(r.more for r in raw_loaded),
                      seconds=round(time.monotonic() - started, 3))
