"""The floor ``make bench-large`` measures totes against: every table of the source read by
connectorx into Arrow and written by ADBC's ``adbc_ingest(..., mode="create")`` into new
tables without keys, nothing between them (no lake, no star schema, no integrity). Run in
dlt's virtualenv (``.venv-dlt``, which has both libraries), never imported by totes.

Usage: ``python floor_pipeline.py SOCKET_DIR SOURCE_DB DESTINATION_URL`` (the embedded
server's Unix socket folder, user ``postgres``; a libpq URL of an empty database). Prints one
JSON object: ``{"rows": total rows, "read_seconds": {table: s}, "ingest_seconds": {table: s},
"sales_order_read_seconds": s}``, seconds of each call alone (monotonic clock).
"""
import json
import sys
import time
from urllib.parse import quote

import adbc_driver_postgresql.dbapi as adbc
import connectorx


def main() -> int:
    socket_dir, source_db, destination = sys.argv[1:4]
    # connectorx takes a Unix socket as a percent-encoded host.
    source = f"postgresql://postgres:x@{quote(socket_dir, safe='')}:5432/{source_db}"
    tables = connectorx.read_sql(
        source, "SELECT table_name::text AS name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
        return_type="arrow")["name"].to_pylist()
    read, ingest, rows = {}, {}, 0
    with adbc.connect(destination) as client, client.cursor() as cursor:
        for table in tables:
            started = time.monotonic()
            # A name the source's own catalog gave, quoted.
            arrow = connectorx.read_sql(source, f'SELECT * FROM "{table}"',  # nosec B608
                                        return_type="arrow")
            read[table] = time.monotonic() - started
            started = time.monotonic()
            cursor.adbc_ingest(f"floor_{table}", arrow, mode="create")
            ingest[table] = time.monotonic() - started
            rows += arrow.num_rows
        client.commit()
    print(json.dumps({"rows": rows, "read_seconds": read, "ingest_seconds": ingest,
                      "sales_order_read_seconds": read.get("sales_order")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
