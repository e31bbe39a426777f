"""The AWS Glue job that transforms and loads on Spark (Glue 5.0: Spark 3.5, Python 3.11), for
the fact source tables whose ``job_type`` is ``glue``.

The state machine starts one run when the Pending step finds lake files of such a table to
transform (:func:`totes.load.pending.spark_work`). The run does what the Transform and Load
states do, round after round until nothing is pending (a Glue run has no 15-minute limit, so
it does not hand the rounds back to the state machine): each round one transform batch
(:func:`totes.transform.spark_transform.transform_on_spark`) and one load
(:func:`totes.load.spark_load.load_on_spark`), the facts of those tables built and staged by
Spark tasks, under the same leases, recorded in the ledger as the Lambdas' are. Then it
writes both stages' results, combined over the rounds, to the processed area
(:mod:`totes.utils.job_results`), where the transform and load functions read them back for
the state machine.

Glue passes job arguments as ``--name value`` pairs; the job reads:

* ``--tables``: the fact source tables whose facts run on Spark, as a JSON list;
* ``--result_key``: where the result goes in the processed area;
* ``--run_id``: the run's id in the ledger (the execution's name);
* ``--TOTES_LAKE``, ``--TOTES_PROCESSED``; ``--TOTES_WAREHOUSE_SECRET`` (in AWS) or
  ``--TOTES_WAREHOUSE_URL``; ``--TOTES_LEDGER`` and ``--TOTES_CONFIG`` (the raw layer's
  tables), optional. Every ``--TOTES_*`` argument is also set in the driver's environment,
  so the settings (``TOTES_WAREHOUSE_SCHEMA``, ``TOTES_TRANSFORM_MAX_ROWS``, ...) read them as
  a Lambda reads its variables;
* ``--JOB_RUN_ID`` (Glue's own): present on Glue, where the cluster's Spark is used; absent
  locally (``python -m totes.jobs.glue_stages ...``), where a local Spark starts.

It prints the result as one JSON line and exits 0; an error is raised (the job run fails, and
the state machine's Catch alerts).
"""
from __future__ import annotations

import json
import sys
from typing import Optional

from totes.contracts.config import TablePlan, raw_tables as raw_tables_of
from totes.contracts.errors import ConfigError
from totes.contracts.stage_results import (LoadResult, TransformResult, combined_loads,
                                           combined_transforms)
from totes.ingest.glue_job import parse_arguments
from totes.load.spark_load import load_on_spark
from totes.transform.spark_transform import transform_on_spark
from totes.utils.config_file import load_config
from totes.utils.job_results import write_job_result
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, ledger_from_uri, new_run_id
from totes.utils import settings
from totes.utils.spark import DatabaseRef, spark_session


def run_stages_on_spark(spark, lake_uri: str, processed_uri: str, warehouse: DatabaseRef,
                        tables: set[str], ledger: Optional[Ledger] = None,
                        run_id: Optional[str] = None,
                        raw_tables: Optional[list[TablePlan]] = None,
                        tasks: Optional[int] = None) -> tuple[TransformResult, LoadResult]:
    """Transform and load, round after round, until neither has work left (the module
    docstring); the facts of the source ``tables`` on Spark tasks. Returns both stages'
    results, combined over the rounds (``more`` false), except the load's ``held`` (and
    ``held_rows``): as the state machine reads it after the Lambdas' last round, the rows the
    one round held, or when the job went round, every row still held (``waiting``; a row
    held in an early round for a dimension row that a later round brought is released, not
    news).

    Raises:
        as :func:`~totes.transform.spark_transform.transform_on_spark` and
        :func:`~totes.load.spark_load.load_on_spark`.
    """
    run_id = run_id or new_run_id()
    transforms: list[TransformResult] = []
    loads: list[LoadResult] = []
    while True:
        transforms.append(transform_on_spark(spark, lake_uri, processed_uri, ledger, run_id,
                                             tasks, tables))
        loads.append(load_on_spark(spark, processed_uri, warehouse, ledger, run_id, lake_uri,
                                   raw_tables, tasks, tables))
        if not ((transforms[-1].more and transforms[-1].manifest)
                or (loads[-1].more and (loads[-1].batches or loads[-1].raw))):
            break
    loaded = combined_loads(loads)
    if len(loads) > 1:
        loaded = loaded.model_copy(update={"held": loads[-1].waiting,
                                           "held_rows": loads[-1].waiting_rows})
    return combined_transforms(transforms), loaded


def main(argv: Optional[list[str]] = None, spark=None) -> int:
    """Run the job (see the module docstring); ``spark``: a session to use (and leave
    running) instead of the job's own.

    Raises:
        ConfigError: an argument missing or malformed.
        Any error of the stages (its type says whether a retry can help).
    """
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    for needed in ("tables", "result_key", "TOTES_LAKE", "TOTES_PROCESSED"):
        if not args.get(needed):
            raise ConfigError(f"the Glue job needs --{needed}")
    if not (args.get("TOTES_WAREHOUSE_SECRET") or args.get("TOTES_WAREHOUSE_URL")):
        raise ConfigError("the Glue job needs --TOTES_WAREHOUSE_SECRET or "
                          "--TOTES_WAREHOUSE_URL")
    try:
        tables = set(json.loads(args["tables"]))
    except ValueError:
        raise ConfigError(f"--tables {args['tables']!r}: expected a JSON list of table "
                          "names") from None
    settings.set_variables({k: v for k, v in args.items() if k.startswith("TOTES_")})
    warehouse = DatabaseRef(url=args.get("TOTES_WAREHOUSE_URL") or None,
                            secret_id=args.get("TOTES_WAREHOUSE_SECRET") or None,
                            role="warehouse")
    ledger = ledger_from_uri(args["TOTES_LEDGER"]) if args.get("TOTES_LEDGER") else None
    raw = raw_tables_of(load_config(args["TOTES_CONFIG"])) if args.get("TOTES_CONFIG") \
        else None
    own = spark is None
    session = spark or spark_session("totes-stages", local="JOB_RUN_ID" not in args)
    try:
        transformed, loaded = run_stages_on_spark(
            session, args["TOTES_LAKE"], args["TOTES_PROCESSED"], warehouse, tables, ledger,
            args.get("run_id") or None, raw or None)
    finally:
        if own and "JOB_RUN_ID" not in args:
            session.stop()
    document = {"transform": transformed.model_dump(mode="json"),
                "load": loaded.model_dump(mode="json")}
    write_job_result(Lake(args["TOTES_PROCESSED"]), args["result_key"], document)
    print(json.dumps(document), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
