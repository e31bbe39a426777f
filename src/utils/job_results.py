"""The result a Spark job (a Glue job run) leaves for the state machine: Glue reports only
whether a run succeeded, so the job that transforms and loads writes its stages' results as
one JSON object to the processed area, and the transform and load functions read their part
back (:mod:`totes.jobs.glue_stages`).

Key: ``_spark/results/<run_id>.json`` (the state machine's execution name): one job run per
execution, a retried run writing it again. Shape::

    {"transform": <TransformResult JSON>, "load": <LoadResult JSON>}
"""
from __future__ import annotations

import json

from totes.contracts.errors import LakeError
from totes.utils.lake import Lake

#: Where job results go in the processed area.
RESULTS_PREFIX = "_spark/results"


def job_result_key(run_id: str) -> str:
    """``_spark/results/<run_id>.json``."""
    return f"{RESULTS_PREFIX}/{run_id}.json"


def write_job_result(processed: Lake, key: str, document: dict) -> None:
    """Write ``document`` as JSON at ``key`` of the processed area, replacing the one an
    earlier attempt of the same run wrote.

    Raises:
        StorageUnavailable: the store could not be written (retry).
    """
    if processed.exists(key):
        processed.delete(key)
    processed.put_bytes(key, json.dumps(document).encode())


def read_job_result(processed: Lake, key: str, part: str) -> dict:
    """The ``part`` (``transform`` or ``load``) of the job result at ``key``.

    Raises:
        LakeError: no result there, or not a job result (the job did not finish, or wrote
            elsewhere): the message names the key.
        StorageUnavailable: the store could not be read (retry).
    """
    try:
        document = json.loads(processed.read_bytes(key))
        return dict(document[part])
    except (ValueError, KeyError, TypeError) as exc:
        raise LakeError(f"{processed.describe(key)} is not a Spark job's result with a "
                        f"{part!r} part: {exc}") from None
