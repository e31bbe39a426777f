"""One transform batch: the lake files no batch has transformed yet → the star schema.

Processed area layout (besides ``<warehouse_table>/YYYY/MM/DD/HHMMSSffffff.parquet``):

* ``_state/<table>/YYYY/MM/DD/HHMMSSffffff.parquet``: the latest row of every key of the
  reference tables that dimensions join (address, department, counterparty, staff), so that a
  change on either side of a join refreshes the dimension without rereading the lake's history.
* ``_manifests/YYYY/MM/DD/HHMMSSffffff.json``: written last, it commits the batch::

      {"batch_time": "2024-11-15 14:40:10.123000",
       "lake": {"payment": "payment/2024/11/15/144010123000.parquet", ...},
       "state": {"address": "_state/address/2024/....parquet", ...},
       "source_files": {"payment": ["payment/2024/11/15/144010123000.parquet"]},
       "outputs": [{"table": "fact_payment", "key": "fact_payment/....parquet", "rows": 12}]}

  ``lake`` holds, per source table, the newest lake key transformed so far: the next batch
  starts after it. A run that fails before its manifest leaves only files that no manifest
  names; the next run transforms the same lake files again, under new keys. Load reads only
  what manifests name.

The batch's time is the newest lake key's time (data time), so keys sort as the data does.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from totes.transform import dimensions as dims
from totes.transform.facts import FACT_SOURCES, fact_dates, fact_rows
from totes.utils.errors import LakeError
from totes.utils.lake import Lake, key_time
from totes.utils.star_schema import TABLES

log = logging.getLogger(__name__)

MANIFESTS = "_manifests"
STATE = "_state"
#: Source tables whose latest rows are kept, with their keys.
REFERENCE_TABLES = {"address": "address_id", "department": "department_id",
                    "counterparty": "counterparty_id", "staff": "staff_id"}
SOURCE_TABLES = ("address", "counterparty", "currency", "department", "design", "staff",
                 "payment_type", "transaction", "sales_order", "purchase_order", "payment")
FACT_BATCH_ROWS = 65_536


def latest_manifest(processed: Lake) -> tuple[Optional[str], dict]:
    """The newest manifest's key and content (``None, {}`` before the first batch)."""
    key = processed.newest_key(MANIFESTS, "json")
    if key is None:
        return None, {}
    return key, read_manifest(processed, key)


def read_manifest(processed: Lake, key: str) -> dict:
    """The content of the manifest at ``key``.

    Raises:
        LakeError: the manifest is missing or not JSON.
    """
    try:
        return json.loads(processed.read_bytes(key))
    except ValueError as exc:
        raise LakeError(f"{processed.uri}/{key} is not a JSON manifest: {exc}") from None


class _Outputs:
    """Staged Parquet files, one per warehouse table, published together at the end."""

    def __init__(self, processed: Lake, stack: contextlib.ExitStack):
        self.processed, self.stack = processed, stack
        self.writers: dict[str, tuple[str, pq.ParquetWriter]] = {}
        self.rows: dict[str, int] = {}

    def write(self, name: str, rows: Optional[pa.Table]) -> None:
        if rows is None or rows.num_rows == 0:
            return
        if name not in self.writers:
            path = self.stack.enter_context(self.processed.staging_file())
            schema = rows.schema if name.startswith(STATE) else TABLES[name].arrow_schema()
            writer = pq.ParquetWriter(path, schema, compression="zstd")
            self.stack.callback(writer.close)
            self.writers[name] = (path, writer)
        self.writers[name][1].write_table(rows)
        self.rows[name] = self.rows.get(name, 0) + rows.num_rows

    def publish(self, moment) -> dict[str, str]:
        """Close every file and publish it under its key; returns name → key."""
        keys = {}
        for name, (path, writer) in self.writers.items():
            writer.close()
            key = self.processed.next_key(name, moment)
            self.processed.publish(path, key)
            keys[name] = key
        return keys


def _read_all(lake: Lake, keys: list[str]) -> Optional[pa.Table]:
    tables = [lake.parquet_file(key).read() for key in keys]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def transform(lake: Lake, processed: Lake) -> dict:
    """Transform every lake file newer than the last batch's, then commit a manifest.

    Returns (the state machine's transform output)::

        {"manifest": "_manifests/2024/11/15/144010123000.json" | null, "source_files": 11,
         "tables": [{"table": "fact_payment", "key": "fact_payment/...parquet", "rows": 15836},
                    ...], "seconds": 2.1}

    ``manifest`` is null and ``tables`` empty when the lake has nothing new.

    Raises:
        DataError: a source row breaks a rule (names table, row id and column).
        LakeError / StorageUnavailable: storage broke its contract or could not be reached.
    """
    started = time.monotonic()
    _, previous = latest_manifest(processed)
    consumed: dict = dict(previous.get("lake", {}))
    new_keys = {t: keys for t in SOURCE_TABLES if (keys := lake.keys_after(t, consumed.get(t)))}
    if not new_keys:
        return {"manifest": None, "source_files": 0, "tables": [],
                "seconds": round(time.monotonic() - started, 3)}
    moment = max(key_time(keys[-1]) for keys in new_keys.values())
    state_keys: dict = dict(previous.get("state", {}))

    with contextlib.ExitStack() as stack:
        outputs = _Outputs(processed, stack)
        new = {t: _read_all(lake, new_keys[t]) for t in SOURCE_TABLES
               if t in new_keys and t not in FACT_SOURCES}
        state = {}
        for table, key in REFERENCE_TABLES.items():
            old = processed.parquet_file(state_keys[table]).read() if table in state_keys \
                else None
            if table in new:
                merged = [t for t in (old, new[table]) if t is not None]
                state[table] = dims.latest_per_key(
                    pa.concat_tables(merged, promote_options="default"), key)
                outputs.write(f"{STATE}/{table}", state[table])
            else:
                state[table] = old

        def ids(table, key):
            return new[table][key] if table in new else pa.array([], pa.int32())

        if "design" in new:
            outputs.write("dim_design", dims.dim_design(new["design"]))
        if "address" in new:
            outputs.write("dim_location", dims.dim_location(new["address"]))
        if "currency" in new:
            outputs.write("dim_currency", dims.dim_currency(new["currency"]))
        if "payment_type" in new:
            outputs.write("dim_payment_type", dims.dim_payment_type(new["payment_type"]))
        if "transaction" in new:
            outputs.write("dim_transaction", dims.dim_transaction(new["transaction"]))
        if "counterparty" in new or "address" in new:
            outputs.write("dim_counterparty", dims.dim_counterparty(
                state["counterparty"], state["address"], ids("counterparty", "counterparty_id"),
                ids("address", "address_id")))
        if "staff" in new or "department" in new:
            outputs.write("dim_staff", dims.dim_staff(
                state["staff"], state["department"], ids("staff", "staff_id"),
                ids("department", "department_id")))

        dates = []
        for source_table, (fact_name, _) in FACT_SOURCES.items():
            for key in new_keys.get(source_table, []):
                for batch in lake.parquet_file(key).iter_batches(batch_size=FACT_BATCH_ROWS):
                    rows = fact_rows(batch, source_table)
                    outputs.write(fact_name, rows)
                    dates.append(fact_dates(rows))
        if dates:
            outputs.write("dim_date", dims.dim_date(pa.concat_arrays(dates)))

        published = outputs.publish(moment)

    for table in REFERENCE_TABLES:
        if f"{STATE}/{table}" in published:
            state_keys[table] = published[f"{STATE}/{table}"]
    tables = [{"table": name, "key": published[name], "rows": outputs.rows[name]}
              for name in TABLES if name in published]
    manifest = {
        "batch_time": moment.isoformat(sep=" ", timespec="microseconds"),
        "lake": {**consumed, **{t: keys[-1] for t, keys in new_keys.items()}},
        "state": state_keys,
        "source_files": new_keys,
        "outputs": tables,
    }
    manifest_key = processed.next_key(MANIFESTS, moment, "json")
    processed.put_bytes(manifest_key, json.dumps(manifest, indent=1).encode())
    log.info("transformed %d lake files into %s", sum(map(len, new_keys.values())),
             manifest_key)
    return {"manifest": manifest_key, "source_files": sum(map(len, new_keys.values())),
            "tables": tables, "seconds": round(time.monotonic() - started, 3)}
