"""Benchmark: totes on a source whose ``sales_order`` holds 2,000,000 rows (``make bench-large``;
``make bench-large ROWS=20000000`` for another count).

The source is the real ToteSys snapshot, with ``sales_order`` grown to ``ROWS`` rows by a
deterministic generator (:data:`GROW_SALES_ORDER`): every foreign key points at an existing
row (designs, staff, counterparties, currencies, addresses taken in turn), ``created_at``
spread evenly over the real rows' two years (from 2022-11-03, 741 days, whatever the count:
no row is dated in the future, which an extract rightly never reads), ``units_sold`` ranges
1,000-100,000 and ``unit_price`` 2.00-4.99, agreed dates 2-15 days after creation: the shapes
of the real rows.

Each stage runs in its own process (the ``totes`` command), so its wall-clock seconds and
its peak resident memory are its own (RSS sampled every 20 ms); each is run three times
(once above 2,000,000 rows; ``TOTES_BENCH_REPEATS`` sets it), into fresh lakes and
warehouse databases, and the median seconds and the highest peak printed. Next to them,
the floors the server reaches alone in the same run: ``COPY (SELECT
…) TO '/dev/null'`` for the extract and ``COPY … FROM`` a server-side file into an empty
table with the fact's primary key for the load, and ADBC's ingest of the same fact rows.
Then the first run as a whole (without and with its reconciliation), next to dlt's on the
same source (``benchmarks/dlt_pipeline.py``, in its own virtualenv) and to the bare floor of
a connectorx read and an ADBC ingest of every table (``benchmarks/floor_pipeline.py``, in
the same virtualenv; its ``sales_order`` read is the extract's measure), with the ratio to
each target of docs/performance.md; a run with nothing new, and a run
that brings 10 rows (median of three each), before and after the index ``totes plan``
advises for the watermark; the whole reconciliation, and ``totes rebuild`` of the star
schema from the lake (with and without its reconciliation). Prints numbers; asserts
nothing. About 8 minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess  # nosec B404 (the installed totes command, fixed arguments)
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
TOTES = str(Path(sys.executable).with_name("totes"))
ROWS = int(os.environ.get("TOTES_BENCH_ROWS", "2000000"))  # make bench-large ROWS=N
#: Rounds of each measurement: three at the default size, one above it (a 20,000,000-row
#: round of everything takes about half an hour here).
REPEATS = int(os.environ.get("TOTES_BENCH_REPEATS", "3" if ROWS <= 2_000_000 else "1"))

GROW_SALES_ORDER = """
WITH ids AS (
    SELECT (SELECT array_agg(design_id ORDER BY design_id) FROM design) AS designs,
           (SELECT array_agg(staff_id ORDER BY staff_id) FROM staff) AS staff,
           (SELECT array_agg(counterparty_id ORDER BY counterparty_id) FROM counterparty)
               AS counterparties,
           (SELECT array_agg(currency_id ORDER BY currency_id) FROM currency) AS currencies,
           (SELECT array_agg(address_id ORDER BY address_id) FROM address) AS addresses
), rows AS (
    SELECT i, timestamp '2022-11-03 14:20:52' + (i::float8 / :missing) * interval '741 days'
        AS moment
    FROM generate_series(1::bigint, :missing) i
)
INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, counterparty_id,
                         units_sold, unit_price, currency_id, agreed_delivery_date,
                         agreed_payment_date, agreed_delivery_location_id)
SELECT moment, moment,
       designs[1 + (i * 7919) % cardinality(designs)],
       staff[1 + (i * 104729) % cardinality(staff)],
       counterparties[1 + (i * 1299709) % cardinality(counterparties)],
       1000 + (i * 48271) % 99001,
       2.00 + ((i * 16807) % 300) / 100.0,
       currencies[1 + i % cardinality(currencies)],
       to_char(moment::date + (2 + i % 14)::int, 'YYYY-MM-DD'),
       to_char(moment::date + (3 + (i * 7) % 13)::int, 'YYYY-MM-DD'),
       addresses[1 + (i * 3571) % cardinality(addresses)]
FROM rows, ids
"""
NEW_ORDERS = """
INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, counterparty_id,
    units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date,
    agreed_delivery_location_id)
SELECT n.moment, n.moment, design_id, staff_id, counterparty_id, units_sold, unit_price,
       currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id
FROM (SELECT * FROM sales_order ORDER BY sales_order_id LIMIT 10) s,
     (SELECT max(last_updated) + interval '1 second' AS moment FROM sales_order) n
"""


#: Called before each measured command (a ``CHECKPOINT`` of the server, once it runs), so
#: that the pages one measurement dirtied are not written during the next.
BEFORE_EACH: list = []


def measured(argv: list[str], env: dict, children: bool = False) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes, stdout) of one command (with ``children``: the peak of the
    command and every process it started, summed: Spark's JVM and Python workers)."""
    for settle in BEFORE_EACH:
        settle()
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,  # nosec B603
                               stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            family = [watched, *watched.children(recursive=True)] if children else [watched]
            peak = max(peak, sum(p.memory_info().rss for p in family if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    out, err = process.communicate()
    seconds = time.monotonic() - started
    if process.returncode not in (0, 65):
        raise SystemExit(f"{' '.join(argv[1:3])} failed ({process.returncode}): {err[-2000:]}")
    return seconds, peak, out


def main() -> int:
    from totes.local.embedded import EmbeddedPostgres
    from totes.local.seed import seed
    from totes.utils.postgres import Database

    with tempfile.TemporaryDirectory(prefix="totes-bench-large-") as folder:
        home = Path(folder)
        server = EmbeddedPostgres(home)
        urls = server.start()
        try:
            source = Database.from_url("source", urls["totesys"])
            env = dict(os.environ, TOTES_HOME=str(home), TOTES_LEDGER=f"sqlite://{home}/l.db")
            flags = ["--source-url", urls["totesys"], "--warehouse-url", urls["warehouse"]]
            started = time.monotonic()
            seed(source)
            with source.session("bench", "growing sales_order") as session:
                (have,), = session.conn.run("SELECT count(*) FROM sales_order")
                session.conn.run(GROW_SALES_ORDER, missing=ROWS - have)
                session.conn.run("ANALYZE sales_order")
                floor_extract = _server_copy_out(session.conn)
            print(f"source: sales_order {ROWS:,} rows (built in {time.monotonic() - started:.0f}"
                  " s); other tables from the real snapshot", flush=True)

            def checkpoint():
                with source.session("bench", "a checkpoint between measurements") as session:
                    session.conn.run("CHECKPOINT")
            BEFORE_EACH.append(checkpoint)

            runs = {"ingest": [], "transform": [], "load": []}
            for repeat in range(REPEATS):  # the first in the default places, which runs reuse
                lake, processed, database, stage_env = [], [], urls["warehouse"], env
                if repeat:
                    folder = home / f"stages-{repeat}"
                    lake, processed = (["--lake", str(folder / "lake")],
                                       ["--processed", str(folder / "processed")])
                    database = _new_database(urls, f"warehouse_stages_{repeat}")
                    stage_env = dict(env, TOTES_LEDGER=f"sqlite://{folder}/l.db")
                for stage, argv in (
                        ("ingest", ["ingest", "--source-url", urls["totesys"], *lake]),
                        ("transform", ["transform", *lake, *processed]),
                        ("load", ["load", "--warehouse-url", database, *processed])):
                    runs[stage].append(measured([TOTES, *argv, "--json"], stage_env))
            stages = {stage: _median(found) for stage, found in runs.items()}
            ingest = {r["table"]: r for r in json.loads(stages["ingest"][2])}
            ingest["sales_order"]["seconds"] = statistics.median(
                next(r["seconds"] for r in json.loads(out) if r["table"] == "sales_order")
                for _, _, out in runs["ingest"])
            partitioned = {}
            for count in (2, 4):
                config = home / f"parted-{count}.yaml"
                shipped = (REPO / "config" / "pipeline.yaml").read_text()
                config.write_text(shipped.replace(
                    "  sales_order: {}", "  sales_order: {partition_column: sales_order_id, "
                    f"num_partitions: {count}}}"))
                partitioned[count] = measured(
                    [TOTES, "ingest", "--json", "--table", "sales_order", "--config",
                     str(config), "--lake", str(home / f"lake-{count}"), "--source-url",
                     urls["totesys"]], env)
            spark = measured([TOTES, "ingest", "--json", "--table", "sales_order", "--engine",
                              "spark", "--config", str(home / "parted-4.yaml"), "--lake",
                              str(home / "lake-spark"), "--source-url", urls["totesys"]], env,
                             children=True)
            same_rows = _same_rows(home / "lake-4", home / "lake-spark")
            # Transform and load of the first stage run's lake on a local Spark (the Glue
            # job's engine), into a processed area and a warehouse of their own.
            spark_env = dict(env, TOTES_LEDGER=f"sqlite://{home}/spark-stages.db")
            spark_transform = measured(
                [TOTES, "transform", "--json", "--engine", "spark", "--lake", str(home / "lake"),
                 "--processed", str(home / "processed-spark")], spark_env, children=True)
            spark_load = measured(
                [TOTES, "load", "--json", "--engine", "spark", "--warehouse-url",
                 _new_database(urls, "warehouse_spark"), "--processed",
                 str(home / "processed-spark")], spark_env, children=True)
            with Database.from_url("warehouse", urls["warehouse"]).session(
                    "bench", "timing a server-side load") as session:
                floor_load = _server_copy_in(session.conn, Database.from_url(
                    "source", urls["totesys"]), home)
            adbc_load = statistics.median(_adbc_ingest(urls["warehouse"], home, repeat)
                                          for repeat in range(REPEATS))
            breakdown = _load_breakdown(urls, home)

            def run(label, *more):
                times, extracts = [], []
                for _ in range(REPEATS):
                    if label == "10 new rows":
                        with source.session("bench", "adding rows") as session:
                            session.conn.run(NEW_ORDERS)
                    seconds, _, out = measured([TOTES, "run", "--json", *flags, *more], env)
                    times.append(seconds)
                    extracts.append(next(r["seconds"] for r in json.loads(out)["ingest"]
                                         if r["table"] == "sales_order"))
                return statistics.median(times), statistics.median(extracts)

            firsts = []
            for repeat in range(REPEATS):
                fresh = home / f"fresh-{repeat}"
                firsts.append(measured(
                    [TOTES, "run", "--json", "--no-reconcile", "--source-url", urls["totesys"],
                     "--warehouse-url", _new_database(urls, f"warehouse_first_{repeat}"),
                     "--lake", str(fresh / "lake"), "--processed", str(fresh / "processed")],
                    dict(env, TOTES_LEDGER=f"sqlite://{fresh}/l.db")))
            first = _median(firsts)
            defaults = []
            for repeat in range(REPEATS):
                fresh = home / f"default-{repeat}"
                defaults.append(measured(
                    [TOTES, "run", "--json", "--source-url", urls["totesys"],
                     "--warehouse-url", _new_database(urls, f"warehouse_default_{repeat}"),
                     "--lake", str(fresh / "lake"), "--processed", str(fresh / "processed")],
                    dict(env, TOTES_LEDGER=f"sqlite://{fresh}/l.db")))
            default = _median(defaults)
            dlt = _dlt_runs(urls, home, env)
            floor = _floor_runs(urls, home, env)
            no_index = run("nothing new")
            advice = json.loads(measured([TOTES, "plan", "--source-url", urls["totesys"]],
                                         env)[2])["warnings"]
            print(f"plan advises: {advice[0] if advice else '(nothing)'}", flush=True)
            with source.session("bench", "adding the index plan advises") as session:
                session.conn.run("CREATE INDEX ON sales_order (last_updated, sales_order_id)")
            nothing_new, ten_rows = run("nothing new"), run("10 new rows", "--no-reconcile")
            ten_reconciled = run("10 new rows")
            checked = measured([TOTES, "reconcile", "--json", *flags], env)
            rebuilt = measured([TOTES, "rebuild", "--json", *flags], env)
            rebuilt_unchecked = measured([TOTES, "rebuild", "--json", "--no-reconcile",
                                          *flags], env)
            start_only = statistics.median(measured([TOTES, "--version"], env)[0]
                                           for _ in range(REPEATS))
        finally:
            server.stop()

    sales = ingest["sales_order"]
    print(f"\n{'stage':<34}{'seconds':>9}{'rows/s':>12}{'peak RSS':>11}{'floor s':>9}"
          f"{'ratio':>7}")

    def line(name, seconds, rows=None, rss=None, floor=None):
        rate = f"{rows / seconds:>12,.0f}" if rows else f"{'':>12}"
        memory = f"{rss / 2**20:>9.0f}MB" if rss else f"{'':>11}"
        ratio = f"{floor:>9.2f}{seconds / floor:>7.1f}" if floor else ""
        print(f"{name:<34}{seconds:>9.2f}{rate}{memory}{ratio}", flush=True)

    all_rows = sum(r["rows"] for r in ingest.values())
    line("ingest, all tables (first)", stages["ingest"][0], all_rows, stages["ingest"][1])
    line("  of which sales_order extract", sales["seconds"], sales["rows"], None,
         floor_extract)
    for count, (_, rss, out) in partitioned.items():
        [result] = json.loads(out)
        line(f"  sales_order in {count} partitions", result["seconds"], result["rows"], rss,
             floor_extract)
    [spark_result] = json.loads(spark[2])
    line("  sales_order on Spark (4 parts)", spark[0], spark_result["rows"], spark[1],
         floor_extract)
    print(f"{'    of which the job itself':<34}{spark_result['seconds']:>9.2f}   (the rest: "
          f"starting Spark; RSS: driver, JVM and workers; rows identical to the 4 parts "
          f"read in threads: {'yes' if same_rows else 'NO'})", flush=True)
    for label, (seconds, rss, out), python in (
            ("transform on Spark (first batch)", spark_transform, stages["transform"]),
            ("load on Spark (first batch)", spark_load, stages["load"])):
        line(label, seconds, sales["rows"], rss)
        print(f"{'    of which the stage itself':<34}{json.loads(out)['seconds']:>9.2f}   "
              f"(the rest: starting Spark; in this process: {python[0]:.2f} s, "
              f"{python[1] / 2**20:.0f} MB)", flush=True)
    if not isinstance(floor, str):
        line("  sales_order read by connectorx", floor[1], sales["rows"])
        print(f"{'  sales_order extract / connectorx':<34}{sales['seconds'] / floor[1]:>9.2f}"
              "   (target: at most 1.1)", flush=True)
    line("transform (first batch)", stages["transform"][0], sales["rows"],
         stages["transform"][1])
    line("load (first batch)", stages["load"][0], sales["rows"], stages["load"][1], floor_load)
    run_load = statistics.median(json.loads(out)["load"]["seconds"] for _, _, out in firsts)
    line("  load stage of the first run", run_load, sales["rows"], None)
    line("  ADBC ingest, create, in Arrow", adbc_load, sales["rows"], None)
    print(f"{'  load stage / ADBC ingest':<34}{run_load / adbc_load:>9.2f}   "
          "(target: at most 2.0)", flush=True)
    print(f"{'  where the load stage goes':<34}   (one load in this process, by statement)",
          flush=True)
    for what, seconds in breakdown.items():
        if seconds >= 0.005:
            print(f"{'    ' + what:<34}{seconds:>9.2f}", flush=True)
    line("first totes run (no reconcile)", first[0], None, first[1])
    if isinstance(dlt, str):
        print(f"{'  dlt, same source':<34}   skipped: {dlt}", flush=True)
    else:
        line("  dlt, same source (first run)", dlt[0][0], None, dlt[0][1])
        print(f"{'  first totes run / dlt':<34}{first[0] / dlt[0][0]:>9.2f}   (target: at most "
              "1.0; dlt loads the rows as they are, no star schema)", flush=True)
    line("first totes run (default)", default[0], None, default[1])
    if not isinstance(dlt, str):
        print(f"{'  default totes run / dlt':<34}{default[0] / dlt[0][0]:>9.2f}   (target: at "
              "most 1.5)", flush=True)
    if isinstance(floor, str):
        print(f"{'  connectorx + ADBC, every table':<34}   skipped: {floor}", flush=True)
    else:
        line("  connectorx + ADBC, every table", floor[0][0], floor[0][2], floor[0][1])
        print(f"{'  first totes run / that floor':<34}{first[0] / floor[0][0]:>9.2f}   (read "
              "and ingest alone: no lake, no star schema, no keys)", flush=True)
    if not isinstance(dlt, str):
        line("dlt run with nothing new", dlt[1][0])
    line("run with nothing new, no index", no_index[0])
    line("  of which sales_order extract", no_index[1])
    line("run with nothing new (median)", nothing_new[0])
    line("  of which sales_order extract", nothing_new[1])
    line("run with 10 new rows (median)", ten_rows[0])
    line("  of which sales_order extract", ten_rows[1])
    line("  the same, reconciled after load", ten_reconciled[0])
    compared = sum(t["source_rows"] for t in json.loads(checked[2])["tables"])
    line("totes reconcile (whole source)", checked[0], compared, checked[1])
    rebuild_rows = sum(r["inserted"] for r in json.loads(rebuilt[2])["load"]["tables"])
    line("totes rebuild (whole star schema)", rebuilt[0], rebuild_rows, rebuilt[1])
    line("  the same, --no-reconcile", rebuilt_unchecked[0], rebuild_rows,
         rebuilt_unchecked[1])
    line("process start (totes --version)", start_only)
    print(f"{'  nothing new minus process start':<34}{nothing_new[0] - start_only:>9.2f}   "
          "(target: at most 0.30)", flush=True)
    return 0


def _median(results: list[tuple[float, int, str]]) -> tuple[float, int, str]:
    """Of repeated measurements: the median seconds, the highest peak RSS, the first's
    output."""
    return (statistics.median(r[0] for r in results), max(r[1] for r in results),
            results[0][2])


def _new_database(urls: dict, name: str) -> str:
    """Create database ``name`` on the benchmark's server; returns its URL."""
    from totes.utils.postgres import Database

    with Database.from_url("warehouse", urls["warehouse"]).session(
            "bench", f"creating database {name}") as session:
        session.conn.run(f"CREATE DATABASE {name}")  # a fixed name of this benchmark's
    return urls["warehouse"].replace("/warehouse?", f"/{name}?")


def _dlt_runs(urls: dict, home: Path, env: dict):
    """(first run, run with nothing new) of ``benchmarks/dlt_pipeline.py`` on the same source,
    each the median of :data:`REPEATS`, a database and a pipelines folder each, as
    ``(seconds, peak RSS, stdout)``; or why it was skipped (``TOTES_BENCH_DLT_PYTHON``, set
    by ``make bench-large``, names dlt's interpreter)."""
    from urllib.parse import parse_qs, urlsplit

    python = os.environ.get("TOTES_BENCH_DLT_PYTHON")
    if not python or not Path(python).exists():
        return "no dlt virtualenv (run make bench-large, which builds .venv-dlt)"
    socket_dir = parse_qs(urlsplit(urls["totesys"]).query)["host"][0]
    firsts, again = [], []
    try:
        for repeat in range(REPEATS):
            name = f"dlt_first_{repeat}"
            _new_database(urls, name)
            argv = [python, str(REPO / "benchmarks" / "dlt_pipeline.py"), socket_dir,
                    "totesys", name, str(home / f"dlt-pipelines-{repeat}")]
            firsts.append(measured(argv, env))
            again.append(measured(argv, env))
    except SystemExit as failed:
        return f"dlt failed: {failed}"
    return _median(firsts), _median(again)


def _floor_runs(urls: dict, home: Path, env: dict):
    """``((seconds, peak RSS, rows), sales_order read seconds)`` of
    ``benchmarks/floor_pipeline.py`` (connectorx read, ADBC ingest, every table) on the same
    source, each the median of :data:`REPEATS` into a new database each; or why it was
    skipped (it runs on dlt's interpreter, which has both libraries)."""
    from urllib.parse import parse_qs, urlsplit

    python = os.environ.get("TOTES_BENCH_DLT_PYTHON")
    if not python or not Path(python).exists():
        return "no dlt virtualenv (run make bench-large, which builds .venv-dlt)"
    socket_dir = parse_qs(urlsplit(urls["totesys"]).query)["host"][0]
    runs, reads = [], []
    try:
        for repeat in range(REPEATS):
            destination = _new_database(urls, f"floor_{repeat}")
            seconds, rss, out = measured(
                [python, str(REPO / "benchmarks" / "floor_pipeline.py"), socket_dir,
                 "totesys", destination], env)
            result = json.loads(out)
            runs.append((seconds, rss, result["rows"]))
            reads.append(result["sales_order_read_seconds"])
    except SystemExit as failed:
        return f"connectorx + ADBC failed: {failed}"
    return ((statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]),
            statistics.median(reads))


def _same_rows(one: Path, other: Path) -> bool:
    """Whether two lakes hold the same sales_order row versions (through their parts)."""
    from totes.utils.lake import Lake
    from totes.utils.footers import batch_files

    def rows(root: Path):
        lake = Lake(str(root))
        tables = [lake.read_table(f) for k in lake.keys_after("sales_order", None)
                  for f in batch_files(lake, k)]
        table = pa.concat_tables([t for t in tables if t.num_rows])
        return table.sort_by([("sales_order_id", "ascending")])

    return rows(one).equals(rows(other))


def _adbc_ingest(url: str, home: Path, repeat: int) -> float:
    """Seconds of ADBC's ``adbc_ingest(..., mode="create")`` of the lake's ``sales_order`` rows,
    already in Arrow (read before the clock starts), into a new table without keys, timed
    around that call alone (issue 24's measure of a client library's bulk load)."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    rows = pa.concat_tables(pq.read_table(path) for path in
                            sorted((home / "lake" / "sales_order").rglob("*.parquet")))
    rows = rows.select([name for name in rows.column_names if not name.startswith("_")])
    rows = rows.combine_chunks()
    for settle in BEFORE_EACH:
        settle()
    with adbc.connect(url) as client, client.cursor() as cursor:
        started = time.monotonic()
        cursor.adbc_ingest(f"adbc_sales_order_{repeat}", rows, mode="create")
        seconds = time.monotonic() - started
        client.commit()
    return seconds


#: How :func:`_load_breakdown` names a statement by its first word (else: the word).
_KINDS = {"COPY": "COPY (rows read, encoded, sent)", "ANALYZE": "ANALYZE",
          "CREATE": "CREATE (tables, views, indexes)", "SELECT": "SELECT (reads, checks)",
          "INSERT": "INSERT (dimensions, bookkeeping)", "ALTER": "ALTER (other)"}


def _kind(sql: str) -> str:
    text = " ".join(str(sql).split()).upper()
    if "FOREIGN KEY" in text and text.startswith("ALTER"):
        return "foreign keys added (validated)"
    if text.startswith("ALTER") and ("PRIMARY KEY" in text or "UNIQUE" in text):
        return "unique keys added (indexes built)"
    word = text.split(" ", 1)[0] if text else "?"
    return _KINDS.get(word, word)


def _load_breakdown(urls: dict, home: Path) -> dict[str, float]:
    """One load of the first batch (the stage runs' processed area) into a new warehouse
    database, in this process, its seconds summed by statement kind (pg8000's ``run``
    timed; a foreign key's validation is in its ``ALTER TABLE``), the rest being Python
    between statements."""
    import pg8000.native

    from totes.load.warehouse import load
    from totes.utils.lake import Lake
    from totes.utils.postgres import Database

    spent: dict[str, float] = {}
    run = pg8000.native.Connection.run

    def timed(self, sql, *args, **kwargs):
        started = time.monotonic()
        try:
            return run(self, sql, *args, **kwargs)
        finally:
            kind = _kind(sql)
            spent[kind] = spent.get(kind, 0.0) + time.monotonic() - started

    warehouse = Database.from_url("warehouse", _new_database(urls, "warehouse_breakdown"))
    for settle in BEFORE_EACH:
        settle()
    pg8000.native.Connection.run = timed
    try:
        started = time.monotonic()
        load(Lake(str(home / "processed")), warehouse)
        total = time.monotonic() - started
    finally:
        pg8000.native.Connection.run = run
    spent = dict(sorted(spent.items(), key=lambda item: -item[1]))
    spent["Python between statements"] = total - sum(spent.values())
    spent["whole load"] = total
    return spent


def _server_copy_out(conn) -> float:
    """Seconds the server takes to produce the extract alone (COPY to /dev/null)."""
    started = time.monotonic()
    conn.run("COPY (SELECT * FROM sales_order ORDER BY last_updated, sales_order_id) "
             "TO '/dev/null' WITH (FORMAT csv)")
    return time.monotonic() - started


def _server_copy_in(conn, source, home: Path) -> float:
    """Seconds the server takes to load the fact rows from a file of its own into an empty
    table with the fact's primary key (the floor of a load)."""
    path = home / "postgres" / "floor.csv"  # the data directory: the server may write there
    with source.session("bench", "writing the load floor's file") as session:
        # A fixed statement (the path is this benchmark's own temporary folder).
        session.conn.run(f"COPY (SELECT sales_order_id, created_at::date, created_at::time, "
                         f"last_updated::date, last_updated::time, staff_id, counterparty_id, "
                         f"units_sold, unit_price, currency_id, design_id, "
                         f"agreed_payment_date::date, agreed_delivery_date::date, "
                         f"agreed_delivery_location_id FROM sales_order) TO '{path}' "
                         "WITH (FORMAT csv)")  # nosec B608
    conn.run("CREATE TABLE floor_fact (LIKE fact_sales_order INCLUDING DEFAULTS)")
    conn.run("ALTER TABLE floor_fact ADD PRIMARY KEY (sales_order_id, last_updated_date, "
             "last_updated_time)")
    columns = ("sales_order_id, created_date, created_time, last_updated_date, "
               "last_updated_time, sales_staff_id, counterparty_id, units_sold, unit_price, "
               "currency_id, design_id, agreed_payment_date, agreed_delivery_date, "
               "agreed_delivery_location_id")
    for settle in BEFORE_EACH:
        settle()
    started = time.monotonic()
    conn.run(f"COPY floor_fact ({columns}) FROM '{path}' WITH (FORMAT csv)")  # nosec
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
