"""Spark, for the stages' Spark engine (the ``glue`` job type): a session, references by
which executors find a database (a secret id, so that no password travels in a task's
closure in AWS; a URL locally), and the line of a Spark failure that says what failed.

Used by :mod:`totes.ingest.spark_extract`, :mod:`totes.transform.spark_transform` and
:mod:`totes.load.spark_load`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Protocol

from totes.contracts.errors import ConfigError
from totes.utils.databases import database_from_secret, database_from_url


@dataclass(frozen=True)
class DatabaseRef:
    """How a Spark executor finds a database (``role``: ``source`` or ``warehouse``): its URL,
    or the id of the Secrets Manager secret that holds it (executors of a Glue job read it
    with the job's role)."""

    url: Optional[str] = None
    secret_id: Optional[str] = None
    role: str = "source"

    def __repr__(self) -> str:  # a URL may hold a password: never shown
        return f"DatabaseRef({self.role}, secret_id={self.secret_id!r})" if self.secret_id \
            else f"DatabaseRef({self.role}, url=…)"

    def database(self):
        """The database (a :class:`~totes.utils.postgres.Database`, or a MySQL source).

        Raises:
            ConfigError: neither a URL nor a secret id, or as :func:`database_from_url` /
                :func:`database_from_secret`.
        """
        if self.url:
            return database_from_url(self.role, self.url)
        if self.secret_id:
            return database_from_secret(self.role, self.secret_id)
        raise ConfigError(f"no URL or secret id for the {self.role} database")


def spark_session(app_name: str = "totes", master: Optional[str] = None,
                  local: bool = True):
    """A Spark session: with ``local``, a local one (``master``, default ``local[N]`` for N
    cores) whose Python workers run this interpreter (so they import ``totes`` as the driver
    does); else the cluster's (a Glue job's).

    Raises:
        ConfigError: pyspark is not installed (``pip install pyspark``).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("the spark engine needs pyspark: pip install -r "
                          "requirements-dev.txt (or pyspark==3.5.5)") from None
    builder = SparkSession.builder.appName(app_name)
    if local:
        # Python workers are started with PYSPARK_PYTHON: this interpreter imports totes.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or f"local[{os.cpu_count() or 2}]") \
            .config("spark.ui.enabled", "false") \
            .config("spark.pyspark.python", sys.executable) \
            .config("spark.pyspark.driver.python", sys.executable) \
            .config("spark.task.maxFailures", "2") \
            .config("spark.ui.showConsoleProgress", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def first_python_error(exc: Exception) -> str:
    """The line of a Spark error that says what failed (``ModuleNotFoundError: No module
    named 'totes'``), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        head = line.split(":", 1)[0]
        ours = not head.startswith(("org.", "py4j", "java."))
        if head.endswith(("Error", "Exception")) and ours:
            return line[:500]
    return lines[0][:500] if lines else type(exc).__name__


def run_tasks(spark, work, tasks: list, doing: str) -> list:
    """Run ``work(task)`` for each of ``tasks`` as one Spark task each (a partition of one
    element), with the driver's ``TOTES_*`` settings, and return their results in the order
    of ``tasks``. ``work`` returns
    ``("ok", value)`` or ``("error", exception)``: the first task error is raised as itself
    (its type says whether a retry can help), not as Spark's wrapper of it.

    Raises:
        SparkJobFailed: Spark itself failed (a task that could not start); the message says
            ``doing`` and the Python error.
        the first task's own error.
    """
    from totes.contracts.errors import SparkJobFailed
    from totes.utils import settings

    if not tasks:
        return []
    driver = settings.variables()  # the executors read the driver's settings

    def task(item):
        settings.set_variables(driver)
        return work(item)

    try:
        answers = spark.sparkContext.parallelize(tasks, len(tasks)).map(task).collect()
    except Exception as exc:  # Spark's own failure
        raise SparkJobFailed(f"the Spark job {doing} failed: "
                             f"{first_python_error(exc)}") from None
    failures = [answer for status, answer in answers if status == "error"]
    if failures:
        raise failures[0]
    return [answer for _, answer in answers]


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of row group ``row_group`` of the Parquet file ``file``;
    ``offset``: the position of its first row among all the files' rows (0-based)."""

    file: str
    row_group: int
    start: int
    stop: int
    offset: int


class _Footers(Protocol):
    def metadata(self, key: str): ...


def row_ranges(store: _Footers, files: list[str], tasks: int) -> list[list[RowRange]]:
    """``files`` (Parquet files of one table, in order, in ``store``: a
    :class:`~totes.utils.lake.Lake`) cut into at most ``tasks`` contiguous ranges of about
    equal rows, in file order, one per Spark task; a row group is cut only where a range ends
    inside it. Empty when the files hold no rows.

    Raises:
        LakeError / StorageUnavailable: a footer could not be read.
    """
    groups = [(file, i, metadata.row_group(i).num_rows) for file in files
              for metadata in [store.metadata(file)] for i in range(metadata.num_row_groups)]
    total = sum(rows for *_, rows in groups)
    if total == 0:
        return []
    count = max(1, min(tasks, total))
    ends = [round(total * (k + 1) / count) for k in range(count)]
    ranges: list[list[RowRange]] = [[] for _ in range(count)]
    task, position = 0, 0
    for file, group, rows in groups:
        start = 0
        while start < rows:
            while ends[task] <= position:
                task += 1
            stop = min(rows, start + ends[task] - position)
            ranges[task].append(RowRange(file, group, start, stop, position))
            position += stop - start
            start = stop
    return [chunk for chunk in ranges if chunk]


def read_range(store, piece: RowRange, columns: Optional[list[str]] = None):
    """The rows of ``piece`` (a ``pyarrow.Table``: one row group, sliced), of ``columns``
    when given.

    Raises:
        LakeError / StorageUnavailable: the file could not be read.
    """
    with store.parquet_file(piece.file) as parquet:
        rows = parquet.read_row_group(piece.row_group, columns=columns)
    return rows.slice(piece.start, piece.stop - piece.start)
