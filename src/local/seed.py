"""Load the ToteSys snapshot into a source database, as it was at any moment of its history.

The snapshot (``data/totesys-2024-11/PROVENANCE.md`` says where it comes from) holds each
row's latest version. The state "as of T" is: the rows created at or before T; a row updated
after T is shown as it was before the update (``last_updated = created_at``, and for a
payment ``paid = false``: in the real history only payments are updated, when they are
paid).

Seeding is an upsert of that state that only moves rows forward (a row is replaced only by a
version with a later ``last_updated``), so ``--as-of T`` on an empty database and
``--advance-to T2`` on a seeded one are the same operation, and each can run again safely.
Types are the database's: ids back to integers, money back to numeric(10,2) (rounded to the
cent from the snapshot's float64), timestamps to milliseconds.

The source may be PostgreSQL (``totesys_schema.sql``; upsert through a staged ``COPY``) or
MySQL/MariaDB (``totesys_schema_mysql.sql``; ``INSERT ... ON DUPLICATE KEY UPDATE`` in chunks
of :data:`SEED_BATCH_ROWS`, each column taking the new value only when ``last_updated``
moves forward).
"""
from __future__ import annotations

import logging
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from totes.contracts.errors import ConfigError
from totes.contracts.identifiers import quote_ident
from totes.contracts.source_tables import SOURCE_TABLES
from totes.utils.postgres import run_script
from totes.utils.postgres_catalog import arrow_type, table_columns
from totes.utils.postgres_copy import copy_into
from totes.utils.postgres_merge import merge_staged

log = logging.getLogger(__name__)

#: Rows per COPY chunk when seeding (one chunk's CSV in memory).
SEED_BATCH_ROWS = 50_000


def default_snapshot_dir() -> Path:
    """``data/totesys-2024-11`` of this checkout."""
    return Path(__file__).resolve().parents[2] / "data" / "totesys-2024-11"


def create_schema(conn, engine: str = "postgresql") -> None:
    """Create the ToteSys types and tables where they are absent (``totesys_schema.sql``, or
    ``totesys_schema_mysql.sql`` for ``engine`` "mysql")."""
    script = "totesys_schema_mysql.sql" if engine == "mysql" else "totesys_schema.sql"
    run_script(conn, resources.files("totes.local").joinpath(script).read_text())


def snapshot_as_of(snapshot: pa.Table, table: str, as_of: Optional[datetime]) -> pa.Table:
    """The rows of ``snapshot`` (one source table) as they were at ``as_of`` (all when None)."""
    if as_of is None:
        return snapshot
    moment = pa.scalar(as_of, pa.timestamp("ns"))
    snapshot = snapshot.filter(pc.less_equal(snapshot["created_at"], moment))
    updated_later = pc.greater(snapshot["last_updated"], moment)
    before = {"last_updated": snapshot["created_at"]}
    if table == "payment":
        before["paid"] = pa.repeat(False, snapshot.num_rows)
    for column, old in before.items():
        index = snapshot.schema.get_field_index(column)
        snapshot = snapshot.set_column(index, column,
                                       pc.if_else(updated_later, old, snapshot[column]))
    return snapshot


def _to_database_types(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = []
    for target in schema:
        name, target = target.name, target.type
        column = rows[name]
        if pa.types.is_decimal(target) and pa.types.is_floating(column.type):
            column = pc.round(column, target.scale)
        arrays.append(column.cast(target))
    return pa.table(arrays, names=schema.names)


def seed(source, as_of: Optional[datetime] = None,
         snapshot_dir: Optional[Path] = None, advance: bool = False,
         progress: Callable[[str, int], None] = lambda table, rows: None) -> dict[str, dict]:
    """Create the ToteSys schema in ``source`` (a PostgreSQL :class:`Database` or a
    :class:`totes.utils.mysql.MySQLDatabase`) and upsert the snapshot as of ``as_of``, in one
    transaction. With ``advance``, refuse to move a database backwards.

    Returns ``{table: {"inserted": n, "updated": n}}``.

    Raises:
        ConfigError: the snapshot is missing a table, or (``advance``) the database already
            holds rows changed after ``as_of``.
        DatabaseUnavailable / DatabaseRejected: the source could not be reached.
    """
    snapshot_dir = Path(snapshot_dir or default_snapshot_dir())
    counts: dict[str, dict] = {}
    with source.session("totes-seed", f"seeding the {source.describe()}") as session:
        conn = session.conn
        mysql = source.engine == "mysql"
        if mysql:
            create_schema(conn, "mysql")  # DDL commits in MySQL: before the transaction
            conn.run("START TRANSACTION")
        else:
            conn.run("START TRANSACTION")
            create_schema(conn)
        if advance and as_of is not None:
            _refuse_to_go_back(conn, as_of)
        for table in SOURCE_TABLES:  # parents first: foreign keys resolve in one transaction
            path = snapshot_dir / f"{table}.parquet"
            if not path.exists():
                raise ConfigError(f"snapshot {snapshot_dir} has no {table}.parquet")
            schema = _schema(conn, table, mysql)
            rows = _to_database_types(snapshot_as_of(pq.read_table(path), table, as_of), schema)
            upsert = _upsert_mysql if mysql else _upsert
            counts[table] = upsert(conn, table, SOURCE_TABLES[table].primary_key, rows)
            progress(table, rows.num_rows)
        conn.run("COMMIT")
    return counts


def _refuse_to_go_back(conn, as_of: datetime) -> None:
    for table in SOURCE_TABLES:
        q_table = quote_ident(table)
        (newest,), = conn.run(f"SELECT max(last_updated) FROM {q_table}")  # nosec B608
        if newest is not None and newest > as_of:
            raise ConfigError(f"the source already holds {table} rows changed at {newest}, "
                              f"after {as_of}; --advance-to only moves forward")


def _schema(conn, table: str, mysql: bool) -> pa.Schema:
    """The Arrow schema of ``table`` as the source database declares it."""
    if mysql:
        from totes.utils import mysql_catalog

        return mysql_catalog.arrow_schema(mysql_catalog.table_columns(conn, table), table)
    return pa.schema([(name, arrow_type(pg_type, table, name))
                      for name, pg_type in table_columns(conn, table)])


def _upsert_mysql(conn, table: str, key: str, rows: pa.Table) -> dict:
    """Upsert ``rows`` into a MySQL ``table``: a row is inserted, or its columns replaced
    when the new ``last_updated`` is later (``last_updated`` assigned last, since MySQL
    evaluates the assignments left to right)."""
    q_table = quote_ident(table)
    names = [n for n in rows.column_names if n != "last_updated"] + ["last_updated"]
    newer = f"{quote_ident('last_updated')} < VALUES({quote_ident('last_updated')})"
    updates = ", ".join(f"{quote_ident(n)} = IF({newer}, VALUES({quote_ident(n)}), "
                        f"{quote_ident(n)})" for n in names if n != key)
    sql = (f"INSERT INTO {q_table} ({', '.join(quote_ident(n) for n in names)}) "  # nosec B608
           f"VALUES ({', '.join(['%s'] * len(names))}) ON DUPLICATE KEY UPDATE {updates}")
    (before,), = conn.run(f"SELECT count(*) FROM {q_table}")  # nosec B608
    changed = 0
    with conn.raw.cursor() as cursor:
        for batch in rows.select(names).to_batches(max_chunksize=SEED_BATCH_ROWS):
            changed += cursor.executemany(sql, list(zip(*(c.to_pylist()
                                                          for c in batch.columns)))) or 0
    (after,), = conn.run(f"SELECT count(*) FROM {q_table}")  # nosec B608
    inserted = after - before
    return {"inserted": inserted, "updated": (changed - inserted) // 2}


def _upsert(conn, table: str, key: str, rows: pa.Table) -> dict:
    stage = f"seed_{table}"
    q_table, q_stage = quote_ident(table), quote_ident(stage)
    conn.run(f"CREATE TEMP TABLE {q_stage} (LIKE {q_table}) ON COMMIT DROP")
    copy_into(conn, stage, rows.column_names, rows.to_batches(max_chunksize=SEED_BATCH_ROWS))
    inserted, updated = merge_staged(conn, table, stage, rows.column_names, [key],
                                     f"{q_table}.last_updated < EXCLUDED.last_updated")
    conn.run("SELECT setval(pg_get_serial_sequence(:table, :key), "  # nosec B608
             f"(SELECT coalesce(max({quote_ident(key)}), 0) + 1 FROM {q_table}), false)",
             table=table, key=key)
    return {"inserted": inserted, "updated": updated}
