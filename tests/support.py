"""Helpers the tests share (the fixtures are in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from totes.utils.db import Database

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config" / "pipeline.yaml")
SNAPSHOT = REPO / "data" / "totesys-2024-11"
TEMPLATE = "totesys_template"


def query(database: Database, sql: str, **params):
    """Rows of ``sql`` run on ``database``."""
    conn = database.connect("totes-test")
    try:
        return conn.run(sql, **params)
    finally:
        conn.close()


def snapshot(table: str):
    """The real snapshot of one source table, as an Arrow table."""
    return pq.read_table(SNAPSHOT / f"{table}.parquet")
