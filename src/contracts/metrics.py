"""Every metric totes publishes, defined once: name, unit, dimensions, the stage that emits it
and what it means.

The Lambda functions write them in CloudWatch's embedded metric format
(:mod:`totes.utils.observability`), under the namespace ``TOTES_METRICS_NAMESPACE``
(default :data:`DEFAULT_NAMESPACE`); main-terraform's dashboard and alarms name them;
``totes status --json`` and ``totes history --json`` carry the same names and units;
``docs/observability.md`` lists them from :func:`markdown_table`. A test checks that the
dashboard and alarms name only metrics defined here, with the same dimensions.

Dimensions are bounded: only ``stage`` (plan, ingest, status, capture, pending, transform,
load, reconcile, alert) and ``table`` (a source table for the extract-side metrics, a
warehouse table for the load-side ones), never a run or execution id (those go in the
document's properties, searchable in Logs Insights, not in the metric's identity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

#: The namespace when ``TOTES_METRICS_NAMESPACE`` is not set.
DEFAULT_NAMESPACE = "totes"

#: CloudWatch units used by totes' metrics.
Unit = Literal["Count", "Bytes", "Seconds"]
#: The only dimension names a metric may have.
Dimension = Literal["stage", "table"]
DIMENSIONS: tuple[str, ...] = ("stage", "table")


@dataclass(frozen=True)
class MetricDefinition:
    """One metric: ``name`` (CloudWatch's metric name), ``unit``, ``dimensions`` (a subset
    of :data:`DIMENSIONS`, in this order), ``stage`` (the function that emits it) and
    ``description`` (what it counts, for the docs)."""

    name: str
    unit: Unit
    dimensions: tuple[Dimension, ...]
    stage: str
    description: str


METRICS: tuple[MetricDefinition, ...] = (
    MetricDefinition("RowsExtracted", "Count", ("table",), "ingest",
                     "row versions one ingest of a source table wrote to the lake (the change "
                     "log's reader: per `cdc` table)"),
    MetricDefinition("LakeBytesWritten", "Bytes", ("table",), "ingest",
                     "Parquet bytes one ingest of a source table wrote to the lake"),
    MetricDefinition("LagSeconds", "Seconds", ("table",), "status",
                     "how far the lake is behind the source: the source's newest watermark "
                     "minus the lake's high watermark, as `totes status` computes it (tables "
                     "with a timestamp watermark; measured after every Map item, succeeded or "
                     "failed)"),
    MetricDefinition("RetainedWalBytes", "Bytes", ("stage",), "capture",
                     "WAL the source keeps for the replication slot after a read of the "
                     "change log (stage `capture`)"),
    MetricDefinition("RowsTransformed", "Count", ("table",), "transform",
                     "rows one transform batch wrote for a warehouse table"),
    MetricDefinition("RowsQuarantined", "Count", ("table",), "transform",
                     "source rows one transform set aside because they broke a rule, per "
                     "source table"),
    MetricDefinition("RowsHeld", "Count", ("table",), "load",
                     "fact rows one load held back because a dimension row has not arrived, "
                     "per fact table"),
    MetricDefinition("RowsInserted", "Count", ("table",), "load",
                     "rows one load inserted into a warehouse table (dimension updates "
                     "included)"),
    MetricDefinition("VersionsSkipped", "Count", ("table",), "load",
                     "staged rows one load did not insert because the warehouse already held "
                     "that version (a batch loaded again after a crash)"),
    MetricDefinition("ReconcileDifferences", "Count", ("table",), "reconcile",
                     "rows in which reconciliation found the warehouse differs from the "
                     "source, per warehouse table"),
    MetricDefinition("StageSeconds", "Seconds", ("stage",), "every function",
                     "how long one invocation of a stage's function took"),
    MetricDefinition("StageErrors", "Count", ("stage",), "every function",
                     "invocations of a stage's function that raised (the state machine "
                     "retries the transient ones)"),
    MetricDefinition("StageRetries", "Count", ("stage",), "every function",
                     "invocations that were a retry of the same state "
                     "(`$$.State.RetryCount` > 0)"),
)

#: Name → definition.
BY_NAME: dict[str, MetricDefinition] = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class MetricValue:
    """One value of a defined metric: ``dimensions`` maps each of the definition's
    dimension names to its value; ``value`` is in the definition's unit."""

    name: str
    value: float
    dimensions: tuple[tuple[str, str], ...]

    @property
    def definition(self) -> MetricDefinition:
        return BY_NAME[self.name]


def metric(name: str, value: Union[int, float], **dimensions: str) -> MetricValue:
    """A value of the metric ``name`` with exactly its dimensions.

    Raises:
        KeyError: ``name`` is not defined in :data:`METRICS`.
        ValueError: the dimensions are not the definition's, or the value is negative.
    """
    definition = BY_NAME[name]
    if tuple(sorted(dimensions)) != tuple(sorted(definition.dimensions)):
        raise ValueError(f"metric {name} has dimensions {list(definition.dimensions)}, "
                         f"not {sorted(dimensions)}")
    if value < 0:
        raise ValueError(f"metric {name} cannot be negative: {value}")
    return MetricValue(name, float(value),
                       tuple((d, str(dimensions[d])) for d in definition.dimensions))


def as_json(values) -> list[dict]:
    """Metric values as ``totes status --json`` and ``totes history --json`` carry them:
    ``[{"name": "RowsExtracted", "unit": "Count", "value": 12.0, "dimensions": {"table":
    "payment"}}, ...]`` (the names, units and dimensions of the EMF documents)."""
    return [{"name": v.name, "unit": v.definition.unit, "value": v.value,
             "dimensions": dict(v.dimensions)} for v in values]


def of_ingest(table: str, rows: int, written_bytes: Optional[int]) -> list[MetricValue]:
    """What one ingest of ``table`` measured: RowsExtracted and LakeBytesWritten."""
    return [metric("RowsExtracted", max(rows, 0), table=table),
            metric("LakeBytesWritten", written_bytes or 0, table=table)]


def of_transform(rows: dict[str, int], quarantined: dict[str, int]) -> list[MetricValue]:
    """What one transform measured: RowsTransformed per warehouse table (``rows``),
    RowsQuarantined per source table."""
    return [metric("RowsTransformed", n, table=t) for t, n in rows.items()] + \
        [metric("RowsQuarantined", n, table=t) for t, n in quarantined.items()]


def of_load(tables: dict[str, dict], held: dict[str, int]) -> list[MetricValue]:
    """What one load measured, from ``{table: {"rows", "inserted", "updated"}}`` (rows
    staged, inserted, updated) and the rows it held per fact table: RowsInserted (inserted
    and updated), VersionsSkipped (staged, neither written nor held: the warehouse had them),
    RowsHeld."""
    values = []
    for table, counts in tables.items():
        written = counts.get("inserted", 0) + counts.get("updated", 0)
        values += [metric("RowsInserted", written, table=table),
                   metric("VersionsSkipped", max(counts.get("rows", 0) - written -
                                                 held.get(table, 0), 0), table=table)]
    return values + [metric("RowsHeld", n, table=t) for t, n in held.items()]


def of_reconcile(differences: dict[str, int]) -> list[MetricValue]:
    """ReconcileDifferences per warehouse table (0 included)."""
    return [metric("ReconcileDifferences", n, table=t) for t, n in differences.items()]


def of_record(record: dict) -> list[MetricValue]:
    """The metrics a ledger record (``totes history --json``'s, as JSON) stands for: a
    succeeded ingest's, transform's or load's counts (as its function published them) and
    the stage's seconds. Other records: only StageSeconds, when timed."""
    stage, details = record.get("stage"), record.get("details") or {}
    values = []
    if record.get("status") == "succeeded":
        if stage == "ingest" and record.get("rows", -1) >= 0:
            values += of_ingest(record["table"], record["rows"], record.get("bytes"))
        elif stage == "transform":
            values += of_transform(details.get("tables") or {}, details.get("quarantined") or {})
        elif stage == "load":
            values += of_load(details.get("tables") or {}, details.get("held") or {})
    if stage and record.get("seconds") is not None:
        values.append(metric("StageSeconds", record["seconds"], stage=stage))
    return values


def markdown_table() -> str:
    """The metrics as the Markdown table ``docs/observability.md`` shows (name, unit,
    dimensions, emitted by, meaning); a test keeps the page equal to it."""
    lines = ["| metric | unit | dimensions | emitted by | meaning |", "|---|---|---|---|---|"]
    for m in METRICS:
        dims = ", ".join(f"`{d}`" for d in m.dimensions)
        lines.append(f"| `{m.name}` | {m.unit} | {dims} | {m.stage} | {m.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
