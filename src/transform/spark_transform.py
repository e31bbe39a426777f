"""Transform on Spark (for the tables whose ``job_type`` is ``glue``, and ``totes transform
--engine spark``): one batch, the same files and manifest as the Lambda path, its facts built
by Spark tasks.

A transform batch is one commit over every table (its manifest, written last): the driver does
what the Lambda does (:func:`totes.transform.run.transform`: the pending lake files, under the
``transform`` lease, recorded in the ledger; the reference state and the dimensions, which are
small by nature);
the facts of the tables whose ``job_type`` is ``glue`` (all of them locally), which grow with
the source, are split by rows over Spark tasks; the other facts are written by the driver as
the Lambda writes them:

1. per fact source, the driver splits the batch's lake files into contiguous row ranges
   (:func:`totes.utils.spark.row_ranges`: whole row groups where it can, a row group cut
   where it must), one per task, at least two when there are two rows;
2. each task streams its range through the fact rules (:func:`totes.rules.facts.fact_rows`)
   and publishes its fact rows and its quarantined versions as part files under
   ``_spark/<run_id>/<fact>/<task>-<attempt>.parquet`` in the processed area, and returns
   their keys and the dates its rows refer to;
3. the driver appends the parts, in task order, to the batch's fact file, one record batch at
   a time (bounded memory), deletes them, and commits the batch as the Lambda path does.

Rows leave the tasks in the order the Lambda path reads them, so the batch's files hold the
same rows in the same order: load, reconcile and ``totes transform --rebuild`` cannot tell
which engine wrote a batch. A run that fails leaves part files no manifest names (and no
batch); the next run transforms the same lake files again. A task attempt that Spark retries
leaves its part files unread (the driver reads only the keys the successful attempt
returned), and removed with the run's scratch folder once the batch is committed.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Optional

import pyarrow as pa

from totes.contracts.stage_results import TransformResult
from totes.rules.facts import FACT_SOURCES
from totes.transform.run import (FACT_BATCH_ROWS, _Outputs, fact_target, transform, write_fact,
                                 write_fact_rows)
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, new_run_id
from totes.utils.spark import RowRange, read_range, row_ranges, run_tasks

log = logging.getLogger(__name__)

#: Where tasks publish their part files in the processed area (removed once appended).
PARTS_PREFIX = "_spark"


def _part_key(run_id: str, name: str, task: int) -> str:
    """A part file's key: unique to the task's attempt, so that an attempt Spark retries (or
    a run repeated under the same id) never meets the key of one that failed; only the keys
    the driver receives are read."""
    return f"{PARTS_PREFIX}/{run_id}/{name.replace('/', '__')}/{task:05d}-" \
           f"{uuid.uuid4().hex}.parquet"


def _transform_part(task: int, ranges: list[RowRange], source_table: str, target,
                    lake_uri: str, processed_uri: str, run_id: str) -> tuple:
    """One Spark task: the rows of ``ranges`` through the fact rules, published as part
    files. Returns ``("ok", {"parts": {name: key}, "dates": pa.Array})`` or ``("error",
    exception)`` (raised by the driver as itself)."""
    try:
        lake, processed = Lake(lake_uri), Lake(processed_uri)
        with contextlib.ExitStack() as stack:
            outputs = _Outputs(processed, stack)
            outputs.schemas[FACT_SOURCES[source_table][0]] = target.arrow_schema()
            batches = (batch for piece in ranges
                       for batch in read_range(lake, piece).to_batches(FACT_BATCH_ROWS))
            dates = write_fact_rows(batches, source_table, target, outputs)
            parts = outputs.publish(key_of=lambda name: _part_key(run_id, name, task))
        return "ok", {"parts": parts, "dates": dates}
    except Exception as exc:  # handed to the driver, which raises it
        return "error", exc


def fact_writer(spark, lake_uri: str, processed_uri: str, run_id: str,
                tasks: Optional[int] = None, tables: Optional[set[str]] = None):
    """The Spark engine's fact writer (a :data:`totes.transform.run.FactWriter`): the facts
    of the source ``tables`` (default: every fact source) built by Spark tasks, as the module
    docstring says, the others here (:func:`totes.transform.run.write_fact`); ``tasks`` per
    fact (default the session's parallelism, at least 2)."""
    count = max(2, tasks or spark.sparkContext.defaultParallelism)

    def write(lake: Lake, new_keys: dict[str, list[str]], outputs: _Outputs,
              retry: dict[str, pa.Table]) -> pa.Array:
        dates = [pa.array([], pa.date32())]
        for source_table, (fact_name, _) in FACT_SOURCES.items():
            keys = new_keys.get(source_table, [])
            if tables is not None and source_table not in tables:
                dates.append(write_fact(lake, source_table, keys, outputs,
                                        retry.get(source_table)))
                continue
            files, target = fact_target(lake, source_table, keys, outputs)
            ranges = row_ranges(lake, files, count)
            if ranges:
                log.info("%s: %d Spark tasks over %d lake files", fact_name, len(ranges),
                         len(files))
            answers = run_tasks(
                spark, lambda item: _transform_part(item[0], item[1], source_table, target,
                                                    lake_uri, processed_uri, run_id),
                list(enumerate(ranges)), f"transforming {source_table} into {fact_name}")
            for answer in answers:  # in task order: the rows in the Lambda path's order
                for name, key in answer["parts"].items():
                    for batch in outputs.processed.iter_batches(key, FACT_BATCH_ROWS):
                        outputs.write(name, pa.Table.from_batches([batch]))
                    outputs.processed.delete(key)
                dates.append(answer["dates"])
            if source_table in retry:  # here, after the lake's rows, as the Lambda path
                dates.append(write_fact_rows(retry[source_table].to_batches(FACT_BATCH_ROWS),
                                             source_table, target, outputs))
        return pa.concat_arrays(dates)

    return write


def transform_on_spark(spark, lake_uri: str, processed_uri: str,
                       ledger: Optional[Ledger] = None, run_id: Optional[str] = None,
                       tasks: Optional[int] = None,
                       tables: Optional[set[str]] = None) -> TransformResult:
    """Transform every pending lake file into one batch, the facts of the source ``tables``
    (default: every fact) built by Spark tasks (the module docstring); returns the result
    the Lambda path returns.

    Raises:
        as :func:`totes.transform.run.transform`; SparkJobFailed when Spark itself failed; a
        task's own error (LakeError, StorageUnavailable) as itself.
    """
    run_id = run_id or new_run_id()
    processed = Lake(processed_uri)
    result = transform(Lake(lake_uri), processed, ledger=ledger, run_id=run_id,
                       facts=fact_writer(spark, lake_uri, processed_uri, run_id, tasks, tables))
    processed.remove_folder(f"{PARTS_PREFIX}/{run_id}")  # task attempts that Spark retried
    return result
