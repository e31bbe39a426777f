"""Benchmark: change data capture on the 2,000,000-row ``sales_order`` (``make bench-cdc``).

The source of ``make bench-large`` (the real snapshot, ``sales_order`` grown to 2,000,000
rows by the same generator), with ``sales_order`` on ``extract_type: cdc``. Times, each as
a ``totes`` command in its own process (wall-clock seconds, median of three where it
repeats): the first run (the initial copy of the 2,000,000 rows, transform, load); a run
with nothing new; a run that brings 10,000 changes (100 transactions of 100 updates each)
read from the log; and, beside it, the same 10,000 changes on a polled ``sales_order``
(``extract_type: incremental``, each change moving ``last_updated``). Prints numbers;
asserts nothing. About 3 minutes on 2 cores.
"""
from __future__ import annotations

import os
import statistics
import subprocess  # nosec B404 (the installed totes command, fixed arguments)
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TOTES = str(Path(sys.executable).with_name("totes"))
sys.path.insert(0, str(REPO / "benchmarks"))
from large_source import GROW_SALES_ORDER, ROWS  # noqa: E402

CHANGES = """
UPDATE sales_order SET units_sold = units_sold + 1,
       last_updated = (SELECT max(last_updated) FROM sales_order) + interval '1 second'
WHERE sales_order_id BETWEEN :low AND :low + 99
"""


def timed(argv: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)  # nosec B603
    if done.returncode not in (0, 65):
        raise SystemExit(f"{' '.join(argv[1:3])} failed: {done.stderr[-2000:]}")
    return time.monotonic() - started


def main() -> int:
    from totes.local.embedded import EmbeddedPostgres
    from totes.local.seed import seed
    from totes.utils.postgres import Database

    with tempfile.TemporaryDirectory(prefix="totes-bench-cdc-") as folder:
        home = Path(folder)
        server = EmbeddedPostgres(home)
        urls = server.start(("totesys", "warehouse", "polled"))
        try:
            source = Database.from_url("source", urls["totesys"])
            seed(source)
            with source.session("bench", "growing sales_order") as session:
                (have,), = session.conn.run("SELECT count(*) FROM sales_order")
                session.conn.run(GROW_SALES_ORDER, missing=ROWS - have)
                session.conn.run("ANALYZE sales_order")
            config = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())
            config["tables"]["sales_order"] = {"extract_type": "cdc"}
            (home / "cdc.yaml").write_text(yaml.safe_dump(config))
            env = dict(os.environ, TOTES_HOME=str(home), TOTES_LEDGER=f"sqlite://{home}/l.db",
                       TOTES_CONFIG=str(home / "cdc.yaml"))
            flags = ["--source-url", urls["totesys"], "--warehouse-url", urls["warehouse"],
                     "--no-reconcile"]
            polled_env = dict(env, TOTES_CONFIG=str(REPO / "config" / "pipeline.yaml"),
                              TOTES_LEDGER=f"sqlite://{home}/p.db")
            polled_flags = ["--source-url", urls["totesys"], "--warehouse-url",
                            urls["polled"], "--lake", str(home / "polled-lake"),
                            "--processed", str(home / "polled-processed"), "--no-reconcile"]
            subprocess.run([TOTES, "cdc", "init", "--source-url", urls["totesys"]], env=env,
                           check=True, capture_output=True)  # nosec B603
            first = timed([TOTES, "run", *flags], env)
            print(f"cdc first run (initial copy of {ROWS:,} sales orders, transform, load): "
                  f"{first:.2f} s", flush=True)
            timed([TOTES, "run", *polled_flags], polled_env)
            quiet = [timed([TOTES, "run", *flags], env) for _ in range(3)]
            print(f"cdc run with nothing new: {statistics.median(quiet):.2f} s "
                  f"(median of 3: {', '.join(f'{q:.2f}' for q in quiet)})", flush=True)
            changed, polled = [], []
            for repeat in range(3):
                with source.session("bench", "10,000 changes") as session:
                    for batch in range(100):
                        session.conn.run(CHANGES, low=1 + repeat * 10_000 + batch * 100)
                changed.append(timed([TOTES, "run", *flags], env))
                polled.append(timed([TOTES, "run", *polled_flags], polled_env))
            print(f"cdc run with 10,000 changes (100 transactions): "
                  f"{statistics.median(changed):.2f} s (median of 3: "
                  f"{', '.join(f'{c:.2f}' for c in changed)})")
            print(f"the same changes polled (extract_type: incremental): "
                  f"{statistics.median(polled):.2f} s (median of 3: "
                  f"{', '.join(f'{p:.2f}' for p in polled)})")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
