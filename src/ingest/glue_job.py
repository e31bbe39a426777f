"""The AWS Glue job's script (Glue 5.0: Spark 3.5, Python 3.11): extract one table on the
job's Spark (:func:`totes.ingest.spark_extract.extract_on_spark`).

Glue passes job arguments as ``--name value`` pairs; the job reads:

* ``--payload``: the table's Map item, a :class:`~totes.contracts.config.TablePlan` as JSON;
* ``--TOTES_LAKE``: the lake (``s3://bucket/prefix``, or a directory locally);
* ``--TOTES_SOURCE_SECRET`` (in AWS) or ``--TOTES_SOURCE_URL``: the source;
* ``--TOTES_LEDGER``: the ledger (``dynamodb://table``), optional;
* ``--JOB_RUN_ID`` (Glue's own): present on Glue, where the cluster's Spark is used; absent
  locally (``python -m totes.ingest.glue_job ...``), where a local Spark starts.

It prints the ingest result as one JSON line (the Map item's output, in the job run's log) and
exits 0; an error is raised (the job run fails, and the state machine's Catch records it).
"""
from __future__ import annotations

import json
import sys
from typing import Optional

from totes.contracts.config import TablePlan
from totes.contracts.errors import ConfigError
from totes.ingest.spark_extract import SourceRef, extract_on_spark, spark_session
from totes.utils.ledger import ledger_from_uri


def parse_arguments(argv: list[str]) -> dict[str, str]:
    """``["--payload", "{...}", "--TOTES_LAKE", "s3://..."]`` → ``{"payload": "{...}",
    "TOTES_LAKE": "s3://..."}`` (Glue's ``--name value`` pairs; ``--name=value`` too).

    Raises:
        ConfigError: an argument that is not ``--name`` followed by a value.
    """
    found: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        if not item.startswith("--"):
            raise ConfigError(f"Glue job argument {item!r}: expected --name value")
        name, equals, value = item[2:].partition("=")
        if not equals:
            following = next(items, None)
            if following is None:
                raise ConfigError(f"Glue job argument --{name} has no value")
            value = following
        found[name] = value
    return found


def main(argv: Optional[list[str]] = None) -> int:
    """Run the job (see the module docstring).

    Raises:
        ConfigError: ``--payload`` or ``--TOTES_LAKE`` missing, or neither source argument.
        Any error of the extract (its type says whether a retry can help).
    """
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    for needed in ("payload", "TOTES_LAKE"):
        if needed not in args:
            raise ConfigError(f"the Glue job needs --{needed}")
    if not (args.get("TOTES_SOURCE_SECRET") or args.get("TOTES_SOURCE_URL")):
        raise ConfigError("the Glue job needs --TOTES_SOURCE_SECRET or --TOTES_SOURCE_URL")
    plan = TablePlan.model_validate(json.loads(args["payload"]))
    source = SourceRef(url=args.get("TOTES_SOURCE_URL") or None,
                       secret_id=args.get("TOTES_SOURCE_SECRET") or None)
    ledger = ledger_from_uri(args["TOTES_LEDGER"]) if args.get("TOTES_LEDGER") else None
    spark = spark_session(f"totes-extract-{plan.table}", local="JOB_RUN_ID" not in args)
    try:
        result = extract_on_spark(spark, plan, source, args["TOTES_LAKE"], ledger)
    finally:
        if "JOB_RUN_ID" not in args:
            spark.stop()
    print(json.dumps(result.model_dump(mode="json")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
