"""Benchmark: change data capture on the 2,000,000-row ``sales_order`` (``make bench-cdc``;
``make bench-cdc SOURCE=mysql`` for a MariaDB source read from its binlog).

The source of ``make bench-large`` (the real snapshot, ``sales_order`` grown to 2,000,000
rows by the same generator), with ``sales_order`` on ``extract_type: cdc``. Times, each as
a ``totes`` command in its own process (wall-clock seconds, median of three where it
repeats): the first run (the initial copy of the 2,000,000 rows, transform, load); a run
with nothing new; a run that brings 10,000 changes (100 transactions of 100 updates each)
read from the log; and, beside it, the same 10,000 changes on a polled ``sales_order``
(``extract_type: incremental``, each change moving ``last_updated``). Prints numbers;
asserts nothing. About 3 minutes on 2 cores (``--source mysql``: 55 minutes on a 2-core
machine busy with other work, 4.5 of them growing ``sales_order``).

With ``--source mysql`` the source is a MariaDB server started as the tests start one
(``tests/mariadb.py``: binlog on, ``ROW``, ``FULL`` images and metadata), seeded with the
snapshot, ``sales_order`` grown by :data:`GROW_SALES_ORDER_MYSQL` (the same shapes as the
PostgreSQL generator, from MariaDB's ``seq_1_to_N`` sequence table; not written to the
binlog, since the initial copy reads the table itself); the warehouse is the embedded
PostgreSQL still. The seconds the growth took are printed first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess  # nosec B404 (the installed totes command, fixed arguments)
import sys
import tempfile
import time
from datetime import timedelta
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
#: The same 100 updates on MySQL (which may not read the table it updates in a subquery: the
#: newest ``last_updated`` is read first).
CHANGES_MYSQL = """
UPDATE sales_order SET units_sold = units_sold + 1, last_updated = %(at)s
WHERE sales_order_id BETWEEN %(low)s AND %(low)s + 99
"""
#: The tables the MySQL generator takes foreign keys from, each numbered from 0 in key order
#: (``bench_<table>``: ``n``, ``id``), with the step it strides through them by.
_PICKS = (("design", 7919), ("staff", 104729), ("counterparty", 1299709), ("currency", 1),
          ("address", 3571))
#: :data:`large_source.GROW_SALES_ORDER` for MariaDB: ``{missing}`` rows, ``created_at``
#: spread over 741 days (64,022,400,000 ms) from 2022-11-03 14:20:52, each foreign key taken
#: in turn from the ``bench_<table>`` numbering.
GROW_SALES_ORDER_MYSQL = """
INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, counterparty_id,
                         units_sold, unit_price, currency_id, agreed_delivery_date,
                         agreed_payment_date, agreed_delivery_location_id)
SELECT r.moment, r.moment, d.id, s.id, c.id,
       1000 + (r.seq * 48271) % 99001,
       2.00 + ((r.seq * 16807) % 300) / 100.0,
       cu.id,
       DATE_FORMAT(DATE(r.moment) + INTERVAL (2 + r.seq % 14) DAY, '%Y-%m-%d'),
       DATE_FORMAT(DATE(r.moment) + INTERVAL (3 + (r.seq * 7) % 13) DAY, '%Y-%m-%d'),
       a.id
FROM (SELECT seq, TIMESTAMP '2022-11-03 14:20:52' + INTERVAL
             (seq * 64022400000 DIV {missing}) * 1000 MICROSECOND AS moment
      FROM seq_1_to_{missing}) r
JOIN bench_design d ON d.n = (r.seq * 7919) % {designs}
JOIN bench_staff s ON s.n = (r.seq * 104729) % {staff}
JOIN bench_counterparty c ON c.n = (r.seq * 1299709) % {counterparty}
JOIN bench_currency cu ON cu.n = r.seq % {currency}
JOIN bench_address a ON a.n = (r.seq * 3571) % {address}
"""


def timed(argv: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)  # nosec B603
    if done.returncode not in (0, 65):
        raise SystemExit(f"{' '.join(argv[1:3])} failed: {done.stderr[-2000:]}")
    return time.monotonic() - started


def grow_mysql(source) -> None:
    """Grow a seeded MariaDB source's ``sales_order`` to :data:`ROWS` rows, outside the
    binlog (``sql_log_bin = 0``; the role must be allowed to set it)."""
    conn = source.connect("bench")
    try:
        conn.run("SET SESSION sql_log_bin = 0")
        counts = {}
        for table, _ in _PICKS:  # names from _PICKS, fixed
            conn.run(f"CREATE TABLE bench_{table} (n INT PRIMARY KEY, id INT NOT NULL)")
            conn.run(f"INSERT INTO bench_{table} SELECT ROW_NUMBER() OVER (ORDER BY "  # nosec
                     f"{table}_id) - 1, {table}_id FROM {table}")
            (counts[table],), = conn.run(f"SELECT count(*) FROM bench_{table}")  # nosec B608
        (have,), = conn.run("SELECT count(*) FROM sales_order")
        conn.run("SET SESSION foreign_key_checks = 0")  # every key exists, by construction
        conn.run(GROW_SALES_ORDER_MYSQL.format(  # nosec B608 (integers)
            missing=int(ROWS - have), designs=counts["design"], staff=counts["staff"],
            counterparty=counts["counterparty"], currency=counts["currency"],
            address=counts["address"]))
        conn.run("SET SESSION foreign_key_checks = 1")
        for table, _ in _PICKS:
            conn.run(f"DROP TABLE bench_{table}")
        conn.run("ANALYZE TABLE sales_order")
    finally:
        conn.close()


def change_mysql(source, first: int) -> None:
    """100 transactions of 100 updates of ``sales_order`` on MySQL, from id ``first``, each
    a second past the one before (the newest ``last_updated`` read once: ``sales_order``
    has no index on it, and 100 scans of 2,000,000 rows took minutes)."""
    conn = source.connect("bench")
    try:
        (newest,), = conn.run("SELECT max(last_updated) FROM sales_order")
        for batch in range(100):
            conn.run(CHANGES_MYSQL, at=newest + timedelta(seconds=batch + 1),
                     low=first + batch * 100)
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    from totes.local.embedded import EmbeddedPostgres
    from totes.local.seed import seed
    from totes.utils.postgres import Database

    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--source", choices=("postgresql", "mysql"), default="postgresql")
    mysql = arguments.parse_args(argv).source == "mysql"
    with tempfile.TemporaryDirectory(prefix="totes-bench-cdc-") as folder:
        home = Path(folder)
        server = EmbeddedPostgres(home)
        urls = server.start(("totesys", "warehouse", "polled"))
        mariadb = None
        try:
            if mysql:
                sys.path.insert(0, str(REPO / "tests"))
                from mariadb import MariaDB, missing_binaries

                reason = missing_binaries()
                if reason:
                    raise SystemExit(f"--source mysql needs a MariaDB server: {reason}")
                mariadb = MariaDB().start()
                source = mariadb.database("totesys")
                urls["totesys"] = mariadb.url("totesys")
                started = time.monotonic()
                seed(source)
                seeded = time.monotonic()
                grow_mysql(source)
                print(f"MariaDB source: snapshot seeded in {seeded - started:.1f} s; "
                      f"sales_order grown to {ROWS:,} rows in {time.monotonic() - seeded:.1f} "
                      "s", flush=True)
            else:
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
            log = "binlog" if mysql else "log"
            first = timed([TOTES, "run", *flags], env)
            print(f"cdc first run (initial copy of {ROWS:,} sales orders, transform, load): "
                  f"{first:.2f} s", flush=True)
            timed([TOTES, "run", *polled_flags], polled_env)
            quiet = [timed([TOTES, "run", *flags], env) for _ in range(3)]
            print(f"cdc run with nothing new: {statistics.median(quiet):.2f} s "
                  f"(median of 3: {', '.join(f'{q:.2f}' for q in quiet)})", flush=True)
            changed, polled = [], []
            for repeat in range(3):
                if mysql:
                    change_mysql(source, 1 + repeat * 10_000)
                else:
                    with source.session("bench", "10,000 changes") as session:
                        for batch in range(100):
                            session.conn.run(CHANGES, low=1 + repeat * 10_000 + batch * 100)
                changed.append(timed([TOTES, "run", *flags], env))
                polled.append(timed([TOTES, "run", *polled_flags], polled_env))
            print(f"cdc run with 10,000 changes (100 transactions) read from the {log}: "
                  f"{statistics.median(changed):.2f} s (median of 3: "
                  f"{', '.join(f'{c:.2f}' for c in changed)})")
            print(f"the same changes polled (extract_type: incremental): "
                  f"{statistics.median(polled):.2f} s (median of 3: "
                  f"{', '.join(f'{p:.2f}' for p in polled)})")
        finally:
            if mariadb is not None:
                mariadb.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
