"""What a Step Functions Catch hands the next state: ``{"Error": "DataError", "Cause":
"<text>"}``. For a Lambda's exception the cause is the function's error JSON
(``{"errorType", "errorMessage", "stackTrace", ...}``); for a failed Glue job run, the job
run's JSON (``JobRunState``, ``ErrorMessage``); for a timeout or a service error, plain text.
:func:`error_of` reads any of them as (error type, message), for the status step's ledger
record and for the alert.
"""
from __future__ import annotations

import json
import re
from typing import Optional

#: An exception as Python prints it: ``totes.contracts.errors.SourceSchemaError: table ...``.
_RAISED = re.compile(r"(?:[A-Za-z_]\w*\.)*([A-Z]\w*): (.*)", re.DOTALL)


def _job_run_error(run: dict) -> tuple[str, str]:
    """(error type, message) of a failed Glue job run (its GetJobRun JSON). Its
    ``ErrorMessage`` ends with the exception the script raised, after Glue's own
    ``Name: value; `` notes (``Error Category: UNCLASSIFIED_ERROR; ``, whose names hold
    spaces); without one, ``GlueJobFailed`` (``GlueJobTimeout``, ...) and the text."""
    state = str(run.get("JobRunState") or "FAILED")
    text = str(run.get("ErrorMessage") or "").strip()
    segments = text.split("; ")
    for i, segment in enumerate(segments):
        match = _RAISED.fullmatch(segment)
        if match:
            return match.group(1), "; ".join([match.group(2), *segments[i + 1:]]).strip()
    return (f"GlueJob{state.capitalize()}",
            text or f"the Glue job run {run.get('Id', '?')} ended {state}")


def error_of(error: Optional[dict]) -> tuple[str, str]:
    """(error type, message) of what a Catch caught (``{"Error", "Cause"}``), without any
    traceback: the Lambda's ``errorType`` and ``errorMessage`` when the cause is its error
    JSON; for a failed Glue job run (the cause is the job run's JSON), the exception the
    job's script raised, from the run's ``ErrorMessage``; else the error name and the
    cause's first line."""
    if not error:
        return "", ""
    kind, cause = error.get("Error") or "Error", error.get("Cause") or ""
    try:
        document = json.loads(cause)
    except (TypeError, ValueError):
        document = None
    if isinstance(document, dict) and "JobRunState" in document:
        kind, message = _job_run_error(document)
    elif isinstance(document, dict):
        kind = document.get("errorType") or kind
        message = document.get("errorMessage") or ""
    else:
        message = cause.splitlines()[0] if cause else ""
    if kind == "States.Timeout" and not message:
        message = "the state ran longer than its time limit (a Lambda killed by its timeout)"
    return kind, message
