"""Merging a staged table into its target in one set-based PostgreSQL statement
(``INSERT ... SELECT ... ON CONFLICT``): how load upserts dimensions and inserts fact versions,
and how the seeder applies a snapshot. Identifiers only, each through ``quote_ident``; no
values are formatted into the statement."""
from __future__ import annotations

from typing import Optional

from totes.contracts.identifiers import qualified, quote_ident


def merge_staged(conn, target: str, stage: str, columns: list[str], key: list[str],
                 update_when: Optional[str] = None,
                 schema: Optional[str] = None) -> tuple[int, int]:
    """``INSERT INTO target (columns) SELECT columns FROM stage`` in one set-based statement
    (``target`` in ``schema`` when given, else where the ``search_path`` finds it; ``stage``
    is a temporary table). On a ``key`` conflict the row is left as it is when
    ``update_when`` is None; otherwise its other columns are updated where ``update_when``
    holds (a condition over the quoted ``target`` and ``EXCLUDED``, built from identifiers
    only). Returns (inserted, updated)."""
    names = [quote_ident(c) for c in columns]
    q_target = qualified(schema, target) if schema else quote_ident(target)
    listed = ", ".join(names)
    conflict = ", ".join(quote_ident(c) for c in key)
    if update_when is None:
        action = "DO NOTHING"
    else:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c, raw in zip(names, columns) if raw not in key)
        # Identifiers only (update_when is built from quoted identifiers by the caller).
        action = f"DO UPDATE SET {sets} WHERE {update_when}"  # nosec B608
    # Identifiers only, each through quote_ident; no values.
    (inserted, updated), = conn.run(
        f"WITH merged AS (INSERT INTO {q_target} ({listed}) "  # nosec B608
        f"SELECT {listed} FROM {quote_ident(stage)} ON CONFLICT ({conflict}) {action} "
        "RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) "
        "FROM merged")
    return inserted, updated


def column_types(conn, relation: str) -> dict[str, str]:
    """``{column: format_type}`` of the table ``relation`` (schema-qualified and quoted);
    empty when it does not exist. What a widened fact column is held as
    (:meth:`totes.contracts.star_schema.WarehouseTable.as_found`)."""
    return {name: kind for name, kind in conn.run(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(:relation) AND a.attnum > 0 AND NOT a.attisdropped",
        relation=relation)}
