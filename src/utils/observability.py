"""What the Lambda functions tell CloudWatch: JSON log lines tied to one execution, and the
metrics of :mod:`totes.contracts.metrics` in the embedded metric format (EMF), both written
with AWS Lambda Powertools (the JSON formatter of its ``Logger``, and the CloudWatch EMF
provider of its ``Metrics``).

Every handler is wrapped by :func:`observed`:

* the state machine passes ``{"invocation": {"execution_id": $$.Execution.Id, "retry":
  $$.State.RetryCount}}`` beside each payload (a Map item's payload, which is the item
  itself, comes as ``{"payload": <item>, "invocation": {...}}``): the wrapper takes both off
  and calls the handler with the payload it always had;
* every log line of ``totes.*`` loggers during the invocation is one JSON object with
  ``execution_id``, ``run_id``, ``stage`` and ``table`` (``table`` is the Map item's table,
  ``capture:<slot>`` for the change log's reader, or absent for whole-pipeline stages);
* when the handler returns, one EMF document per dimension set is printed to stdout (Lambda
  sends stdout to the function's log group, and CloudWatch turns each document into
  metric data): ``StageSeconds`` and ``StageErrors`` (0) of the stage, ``StageRetries`` when
  this invocation is a retry, plus what the stage measured (``measure(event, result)`` and
  :func:`add`). When it raises: ``StageSeconds`` and ``StageErrors`` (1), one error log line,
  and the exception goes on unchanged (Step Functions' Retry and Catch see its type).

The handler's return value is never changed. The namespace is ``TOTES_METRICS_NAMESPACE``
(default ``totes``); ``execution_id`` and ``run_id`` are properties of each document (for Logs
Insights), never dimensions.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator, Optional

from totes.contracts.metrics import MetricValue, metric
from totes.utils import settings as settings_module

#: The metrics the running invocation has measured so far (see :func:`add`).
_measured: ContextVar[Optional[list[MetricValue]]] = ContextVar("totes_measured", default=None)


@contextlib.contextmanager
def _measuring(measured: list[MetricValue]) -> Iterator[None]:
    token = _measured.set(measured)
    try:
        yield
    finally:
        _measured.reset(token)


class _Stdout:
    """Writes to whatever ``sys.stdout`` is when a line is written (Lambda's, or a test's
    capture), not the one of the moment the handler was made."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@contextlib.contextmanager
def json_logs(**keys: Any) -> Iterator[logging.Logger]:
    """While the block runs, every record of the ``totes`` loggers is one JSON line on stdout
    (Powertools' ``LambdaPowertoolsFormatter``: ``level``, ``location``, ``message``,
    ``timestamp`` in UTC, ``service`` ``totes``, and ``keys``), and is not passed on to the
    root logger (Lambda's own handler would write it twice). Afterwards the ``totes`` logger
    is as it was: the command line and the tests keep their own logging."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    target = logging.getLogger("totes")
    handler = logging.StreamHandler(_Stdout())
    formatter = LambdaPowertoolsFormatter(utc=True, service="totes")
    formatter.append_keys(**keys)
    handler.setFormatter(formatter)
    level, propagate = target.level, target.propagate
    target.addHandler(handler)
    target.setLevel(logging.INFO if level == logging.NOTSET else level)
    target.propagate = False
    try:
        yield target
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
        target.propagate = propagate


def add(*values: MetricValue) -> None:
    """Add metric values to the running invocation's documents (outside an invocation of an
    :func:`observed` handler, e.g. the command line, nothing is kept)."""
    measured = _measured.get()
    if measured is not None:
        measured.extend(values)


def documents(values: Iterable[MetricValue], namespace: str,
              properties: dict[str, Any]) -> list[dict]:
    """The EMF documents of ``values``: one per dimension set, each metric with its
    definition's unit, ``properties`` (``execution_id``, ``run_id``) as the document's other
    members. Two values of one metric and dimension set are one metric with a list of
    values, as EMF allows.

    Raises:
        SchemaValidationError (Powertools): more than 100 metrics in one dimension set.
    """
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import \
        AmazonCloudWatchEMFProvider

    groups: dict[tuple, list[MetricValue]] = {}
    for value in values:
        groups.setdefault(value.dimensions, []).append(value)
    found = []
    for dimensions, group in groups.items():
        # service="": no ``service`` dimension (every dimension is one of the definitions').
        emf = AmazonCloudWatchEMFProvider(namespace=namespace, service="")
        for name, dimension in dimensions:
            emf.add_dimension(name=name, value=dimension)
        for value in group:
            emf.add_metric(name=value.name, unit=value.definition.unit, value=value.value)
        for key, shown in properties.items():
            if shown is not None:
                emf.add_metadata(key=key, value=shown)
        found.append(dict(emf.serialize_metric_set()))
    return found


def _invocation(event: Any) -> tuple[Any, dict]:
    """The handler's own payload and the state machine's ``invocation`` member."""
    if not isinstance(event, dict) or "invocation" not in event:
        return event, {}
    invocation = event.get("invocation") or {}
    if "payload" in event:
        return event["payload"], invocation
    return {k: v for k, v in event.items() if k != "invocation"}, invocation


def table_of(event: Any) -> Optional[str]:
    """The table an invocation works on, from its payload (a Map item, a part, a commit, a
    status step's item or result, the change log's reader's plan); None for the
    whole-pipeline stages."""
    if not isinstance(event, dict):
        return None
    for member in ("plan", "commit", "item", "result"):
        inner = event.get(member)
        if isinstance(inner, dict) and (inner.get("table") or inner.get("slot")):
            return table_of(inner)
    if isinstance(event.get("capture"), dict):
        return f"capture:{event['capture'].get('slot')}"
    if event.get("slot") and not event.get("table"):
        return f"capture:{event['slot']}"
    table = event.get("table")
    return table if isinstance(table, str) else None


def _run_id(event: Any) -> Optional[str]:
    if not isinstance(event, dict):
        return None
    for member in ("plan", "commit", "item", "result"):
        inner = event.get(member)
        if isinstance(inner, dict) and inner.get("run_id"):
            return str(inner["run_id"])
    return str(event["run_id"]) if event.get("run_id") else None


def observed(stage: str, measure: Optional[Callable[[Any, Any], Iterable[MetricValue]]] = None):
    """Wrap a Lambda handler of ``stage`` as the module docstring says. ``measure(payload,
    result)`` returns the metric values of a successful invocation (from its result).

    Raises: whatever the handler raises, unchanged; ``ConfigError`` when
    ``TOTES_METRICS_NAMESPACE`` is invalid (before the handler runs).
    """
    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(event, context):
            namespace = settings_module.current().metrics_namespace
            payload, invocation = _invocation(event)
            execution_id = invocation.get("execution_id")
            retry = int(invocation.get("retry") or 0)
            keys = {"execution_id": execution_id, "run_id": _run_id(payload), "stage": stage,
                    "table": table_of(payload)}
            measured: list[MetricValue] = []
            started = time.monotonic()
            properties = {"execution_id": execution_id, "run_id": keys["run_id"],
                          "table_name": keys["table"]}

            def publish(errors: int) -> None:
                values = [metric("StageSeconds", round(time.monotonic() - started, 3),
                                 stage=stage), metric("StageErrors", errors, stage=stage)]
                if retry:
                    values.append(metric("StageRetries", 1, stage=stage))
                for document in documents(values + measured, namespace, properties):
                    print(json.dumps(document, separators=(",", ":"), default=str),
                          flush=True)

            with json_logs(**keys) as log, _measuring(measured):
                log.info(f"{stage} started", extra={"retry": retry})
                try:
                    result = handler(payload, context)
                except Exception as exc:
                    log.exception(f"{stage} failed: {type(exc).__name__}: {exc}",
                                  extra={"error_type": type(exc).__name__})
                    publish(1)
                    raise
                if measure is not None:
                    measured.extend(measure(payload, result))
                publish(0)
                seconds = round(time.monotonic() - started, 3)
                log.info(f"{stage} finished", extra={"seconds": seconds})
                return result
        return wrapper
    return decorate
