"""The pipeline ``make bench-large`` compares totes with: dlt (https://dlthub.com), run in
its own virtualenv (``.venv-dlt``, from ``benchmarks/requirements-dlt.txt``), never imported
by totes.

Every table of the source, read by dlt's ``sql_database`` source with the connectorx backend
(Arrow, Rust), incremental on ``last_updated``, loaded as Parquet into PostgreSQL (dlt uses
ADBC's driver for Parquet when it is installed) into the schema ``dlt_totesys``: the rows as
they are, with no star schema, no foreign keys. A second run with the same pipelines folder
finds nothing new.

Usage: ``python dlt_pipeline.py SOCKET_DIR SOURCE_DB DESTINATION_DB PIPELINES_DIR`` (the
embedded server's Unix socket folder; user ``postgres``). Prints the rows loaded.
"""
import sys
from urllib.parse import quote

import dlt
from dlt.sources.sql_database import sql_database


def main() -> int:
    socket_dir, source_db, destination_db, pipelines_dir = sys.argv[1:5]
    source = sql_database(
        f"postgresql+psycopg2://postgres:x@localhost/{source_db}?host={socket_dir}",
        backend="connectorx",
        # connectorx takes a Unix socket as a percent-encoded host.
        backend_kwargs={"conn": f"postgresql://postgres:x@{quote(socket_dir, safe='')}:5432/"
                                f"{source_db}"})
    for resource in source.resources.values():
        resource.apply_hints(incremental=dlt.sources.incremental("last_updated"))
    pipeline = dlt.pipeline(
        "totes_bench", pipelines_dir=pipelines_dir, dataset_name="dlt_totesys",
        destination=dlt.destinations.postgres(
            credentials=f"postgresql://postgres:x@localhost:5432/{destination_db}"
                        f"?host={socket_dir}"))
    info = pipeline.run(source, loader_file_format="parquet")
    if info.has_failed_jobs:
        print(info, file=sys.stderr)
        return 1
    rows = sum((pipeline.last_trace.last_normalize_info.row_counts or {}).values())
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
