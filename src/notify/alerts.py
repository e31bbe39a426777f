"""The one alert a failed execution sends: readable, naming what failed and what to do.

Step Functions hands a Catch the error as ``{"Error": "DataError", "Cause": "<text>"}``; for a
Lambda's exception the cause is the function's error JSON (``{"errorType", "errorMessage",
"stackTrace", ...}``), for a timeout or a service error it is plain text. :func:`render`
turns that, plus the state that failed and the tables that failed inside the Map, into a
subject and a body with the environment, the failed state, the table(s), the error type and
its message (never a traceback), the execution's console link, and what to do next.

Event of the alert step (the state machine builds it)::

    {"environment": "prod", "region": "eu-west-2", "execution": "arn:aws:states:...",
     "state": "Transform", "error": {"Error": "DataError", "Cause": "..."} | null,
     "failed_tables": [{"table": "payment", "error_type": "...", "error_message": "..."}],
     "skipped_tables": [{"table": "staff", "reason": "leased by run-…"}],
     "reconcile": <ReconcileResult JSON> | null}

With ``state`` ``"Reconcile"``, no error and a ``reconcile`` result that is not equal, the
alert is the differences (:func:`render_differences`): ``totes prod: Reconcile found
differences in fact_payment``, each difference listed (table, key, column, source and
warehouse values), and what to do.

Returns ``{"subject": "...", "message": "..."}`` for SNS (the subject at most 100
characters, as SNS requires).
"""
from __future__ import annotations

from typing import Optional
from urllib.parse import quote

from pydantic import BaseModel

from totes.contracts.stage_results import Difference, ReconcileResult
from totes.contracts.step_errors import error_of

#: SNS rejects longer subjects.
MAX_SUBJECT = 100
MAX_MESSAGE = 2000
#: Differences a reconcile alert lists (``totes reconcile`` lists them all).
MAX_DIFFERENCES = 10
#: Characters of a source or warehouse value in a reconcile alert.
MAX_VALUE = 80

_NEXT_STEPS = {
    "DataError": "A source row breaks a rule: fix it in the source (the message names the row); "
                 "the next execution resumes.",
    "SourceSchemaError": "The source lacks a table or column the configuration names: fix the "
                         "source or the configuration (TOTES_CONFIG); the next execution "
                         "resumes.",
    "ConfigError": "The configuration or a setting is invalid: fix it (the message names the "
                   "key) and upload it again; the next execution resumes.",
    "PermissionDenied": "The database role lacks a privilege: run the GRANT the message gives; "
                        "the next execution resumes.",
    "DatabaseRejected": "The database refused the login (password or database name): fix the "
                        "secret; the next execution resumes.",
    "LakeError": "Storage broke its contract (a missing or unreadable object): check the "
                 "object the message names before the next execution.",
}
_TRANSIENT = ("DatabaseUnavailable", "StorageUnavailable", "TransientError", "States.Timeout",
              "Lambda.ServiceException", "Lambda.TooManyRequestsException")


def console_link(region: str, execution: str) -> str:
    """The Step Functions console page of ``execution`` (an execution ARN)."""
    return (f"https://{region}.console.aws.amazon.com/states/home?region={region}"
            f"#/v2/executions/details/{quote(execution, safe=':')}")


def _next_step(kind: str) -> str:
    if kind in _NEXT_STEPS:
        return _NEXT_STEPS[kind]
    if kind in _TRANSIENT:
        return ("A database, storage or AWS service did not answer, even after the retries: "
                "check it is up; the next execution resumes by itself.")
    return "Look at the state's log for the error; the next execution resumes once it is fixed."


class Alert(BaseModel):
    """What the alert step returns, for SNS: ``{"subject": "...", "message": "..."}``."""

    subject: str
    message: str


def render(event: dict) -> Alert:
    """The alert's subject and message (see the module docstring).

    Raises:
        pydantic.ValidationError: ``reconcile`` is not a ReconcileResult's JSON.
    """
    environment = event.get("environment", "?")
    reconciled = event.get("reconcile")
    if event.get("state") == "Reconcile" and not event.get("error") and reconciled:
        result = ReconcileResult.model_validate(reconciled)
        if not result.equal:
            return render_differences(result, environment, event.get("region"),
                                      event.get("execution"))
    state = event.get("state") or "Ingest"
    failed = event.get("failed_tables") or []
    skipped = event.get("skipped_tables") or []
    kind, message = error_of(event.get("error"))
    if failed and not kind:
        kind, message = failed[0].get("error_type", ""), failed[0].get("error_message", "")
    tables = ", ".join(t["table"] for t in failed)
    where = f"{state} of {tables}" if tables else state
    subject = f"totes {environment}: {where} failed ({kind or 'error'})"
    if len(subject) > MAX_SUBJECT:
        subject = subject[:MAX_SUBJECT - 1] + "…"
    lines = [f"The totes pipeline ({environment}) failed in {state}."]
    if failed:
        lines.append("Tables that failed:")
        lines += [f"  - {t['table']}: {t.get('error_type', '')}: "
                  f"{(t.get('error_message') or '')[:400]}" for t in failed]
        lines.append("The other tables landed: this execution transformed and loaded them. "
                     "The failed tables' new rows wait in the source; the first execution "
                     "after the fix takes them (nothing is lost or loaded twice).")
    else:
        lines.append(f"Error: {kind}: {message[:MAX_MESSAGE // 2]}")
    if skipped:
        lines.append("Skipped, because another execution was extracting them: "
                     + ", ".join(t["table"] for t in skipped) + ".")
    lines.append(f"What to do: {_next_step(kind)}")
    lines.append("See where it stands: totes status --processed s3://<processed bucket> "
                 "--lake s3://<ingest bucket> (and totes history --table <table>).")
    if event.get("execution") and event.get("region"):
        lines.append(f"Execution: {console_link(event['region'], event['execution'])}")
    return Alert(subject=subject, message="\n".join(lines)[:MAX_MESSAGE * 2])


def _value(value: Optional[str]) -> str:
    if value is None:
        return "null"
    return value if len(value) <= MAX_VALUE else value[:MAX_VALUE - 1] + "…"


def describe_difference(difference: Difference) -> str:
    """One line: ``fact_payment payment_id=2 payment_amount: value differs (source
    552548.62, warehouse 1.00)``, or ``fact_sales_order sales_order_id=5: missing in the
    warehouse``."""
    key = " ".join(f"{name}={value}" for name, value in difference.key.items())
    where = f"{difference.table} {key}" + (f" {difference.column}" if difference.column else "")
    if difference.column is None:
        return f"{where}: {difference.problem}"
    return (f"{where}: {difference.problem} (source {_value(difference.source)}, warehouse "
            f"{_value(difference.warehouse)})")


def render_differences(result: ReconcileResult, environment: str,
                       region: Optional[str] = None, execution: Optional[str] = None) -> Alert:
    """The alert of a Reconcile step that found differences: the subject names the tables,
    the body lists the first :data:`MAX_DIFFERENCES` differences and the sums that differ,
    what is not a difference (pending, held, quarantined rows), and what to do."""
    tables = [t.table for t in result.tables if t.differences]
    tables += sorted({s.table for s in result.sums if not s.equal} - set(tables))
    subject = f"totes {environment}: Reconcile found differences in {', '.join(tables)}"
    if len(subject) > MAX_SUBJECT:
        subject = subject[:MAX_SUBJECT - 1] + "…"
    summary = result.summary().removeprefix("reconcile: ")
    lines = [f"The totes pipeline ({environment}) loaded its batch, but the warehouse "
             f"disagrees with the source: {summary}."]
    listed = [d for t in result.tables for d in t.listed]
    if listed:
        lines.append("Differences (table, key, column: the source's value, the warehouse's):")
        lines += [f"  - {describe_difference(d)}" for d in listed[:MAX_DIFFERENCES]]
        counted = sum(t.differences for t in result.tables)
        if counted > min(len(listed), MAX_DIFFERENCES):
            lines.append(f"  … and {counted - min(len(listed), MAX_DIFFERENCES)} more "
                         "(totes reconcile lists every one).")
    unequal = [s for s in result.sums if not s.equal]
    if unequal:
        lines.append("Sums that differ (per currency, over the rows compared):")
        lines += [f"  - {u.table}.{u.column} in {u.currency}: source {u.source}, warehouse "
                  f"{u.warehouse}" for u in unequal[:MAX_DIFFERENCES]]
    tallies = [(sum(t.pending for t in result.tables), "pending (changed in the source after "
                "the last load: the next execution brings them)"),
               (sum(t.held for t in result.tables), "held (a fact waiting for its dimension "
                "row)"),
               (sum(t.quarantined for t in result.tables), "quarantined (totes quarantine)")]
    apart = [f"{count:,} {what}" for count, what in tallies if count]
    if apart:
        lines.append(f"Not differences: {'; '.join(apart)}.")
    lines.append("What to do: run totes reconcile --source-url <source> --warehouse-url "
                 "<warehouse> (it lists every difference) and follow "
                 "docs/how-to/reconcile-differences.md: a value that differs was changed "
                 "in the warehouse by hand, or in the source without moving last_updated; "
                 "a row missing in the warehouse: reingest its table. "
                 "What this execution loaded stays loaded; every execution that loads a batch "
                 "reconciles again.")
    if execution and region:
        lines.append(f"Execution: {console_link(region, execution)}")
    return Alert(subject=subject, message="\n".join(lines)[:MAX_MESSAGE * 2])
