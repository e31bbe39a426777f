"""Benchmark: the cost of a small incremental run after 1, 10 and 100 earlier batches.

On a throwaway embedded PostgreSQL seeded with the whole real snapshot, each batch brings 10
new sales orders (copies of real ones, one second of data time after the newest). After 1, 10
and 100 earlier batches, three such runs are timed and the median printed, with its stages.
If the pipeline's work grows with the change and not with the history, the columns stay flat.

Run with ``make bench`` (about a minute). Prints numbers; asserts nothing.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MILESTONES = (1, 10, 100)
TIMED_RUNS = 3

NEW_ORDERS = """
INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, counterparty_id,
    units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date,
    agreed_delivery_location_id)
SELECT n.moment, n.moment, design_id, staff_id, counterparty_id, units_sold, unit_price,
       currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id
FROM (SELECT * FROM sales_order ORDER BY sales_order_id LIMIT 10) s,
     (SELECT max(last_updated) + interval '1 second' AS moment FROM sales_order) n
"""


def main() -> int:
    from totes.local.embedded import EmbeddedPostgres
    from totes.local.runner import Resources, run_pipeline
    from totes.local.seed import seed
    from totes.utils.postgres import Database
    from totes.utils.lake import Lake

    with tempfile.TemporaryDirectory(prefix="totes-bench-") as folder:
        state = Path(folder)
        server = EmbeddedPostgres(state)
        urls = server.start()
        try:
            source = Database.from_url("source", urls["totesys"])
            resources = Resources(source, Database.from_url("warehouse", urls["warehouse"]),
                                  Lake(str(state / "lake")), Lake(str(state / "processed")),
                                  str(REPO / "config" / "pipeline.yaml"))
            seed(source)
            started = time.monotonic()
            run_pipeline(resources)
            print(f"first run, whole snapshot (48,066 rows): {time.monotonic() - started:.2f} s",
                  flush=True)
            batches = 1

            def small_run() -> tuple[float, object]:
                with source.session("bench", "adding sales orders") as session:
                    session.conn.run(NEW_ORDERS)
                started = time.monotonic()
                result = run_pipeline(resources)
                wall = time.monotonic() - started
                assert sum(r.rows for r in result.ingest) == 10, result.ingest
                return wall, result

            print(f"\n{'earlier batches':>15} {'run s':>7} {'ingest s':>9} {'transform s':>12}"
                  f" {'load s':>7} {'lake files read':>16}")
            for milestone in MILESTONES:
                while batches < milestone:
                    small_run()
                    batches += 1
                timed = []
                for _ in range(TIMED_RUNS):
                    timed.append(small_run())
                    batches += 1
                _, median = sorted(timed, key=lambda run: run[0])[TIMED_RUNS // 2]
                ingest = max(r.seconds for r in median.ingest)
                print(f"{milestone:>15} {statistics.median(wall for wall, _ in timed):>7.3f} "
                      f"{ingest:>9.3f} {median.transform.seconds:>12.3f} "
                      f"{median.load.seconds:>7.3f} "
                      f"{median.transform.source_files:>16}", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
