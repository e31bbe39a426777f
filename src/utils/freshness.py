"""How far the lake is behind the source, per table: the one computation ``totes status`` shows
and the ``LagSeconds`` metric publishes (:mod:`totes.contracts.metrics`).

A table's lag is the source's newest watermark (``max(<watermark column>)``) minus the lake's
high watermark (the newest batch's footer): seconds for a timestamp watermark, a count for an
integer one.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from totes.contracts.config import TablePlan
from totes.contracts.identifiers import quote_ident
from totes.contracts.watermark import Watermark
from totes.utils.databases import SourceDatabase
from totes.utils.footers import read_high_watermark
from totes.utils.lake import Lake


@dataclass(frozen=True)
class Lag:
    """A table's lag: ``value`` (None when the source has no row, or the lake none yet),
    ``unit`` (``"seconds"``, ``"rows"`` for an integer watermark, ``"everything"`` when the
    lake holds nothing of a table the source has rows of, None when the source is empty),
    ``source_newest`` (the source's newest watermark, as text) and ``high_watermark`` (the
    lake's)."""

    value: Optional[float]
    unit: Optional[str]
    source_newest: Optional[str]
    high_watermark: Optional[Watermark]

    @property
    def seconds(self) -> Optional[float]:
        """The lag in seconds, when it is one (a timestamp watermark); else None."""
        return self.value if self.unit == "seconds" else None


def source_newest(source: SourceDatabase, plan: TablePlan) -> Optional[object]:
    """``max(<watermark column>)`` of the table in the source (None: no rows).

    Raises:
        DatabaseUnavailable / TerminalError: the source could not be asked.
    """
    column = plan.watermark_column
    assert column is not None, plan.table  # callers pass tables with a watermark
    with source.session("totes-status", f"reading the newest {plan.table} rows") as session:
        (newest,), = session.conn.run(
            f"SELECT max({quote_ident(column)}) "  # nosec B608 (identifiers)
            f"FROM {quote_ident(plan.table)}")
    return newest


def lag_between(newest, high: Optional[Watermark]) -> tuple[Optional[float], Optional[str]]:
    """``(value, unit)`` from the source's newest watermark and the lake's high watermark
    (see :class:`Lag`); a lake ahead of the source (clocks) counts 0 seconds."""
    if newest is None:
        return None, None
    if high is None:
        return None, "everything"
    if high.integer is not None:
        return float(newest - high.integer), "rows"
    extracted = datetime.fromisoformat(high.value)
    if isinstance(newest, datetime) and newest.tzinfo is not None:
        newest = newest.astimezone(timezone.utc).replace(tzinfo=None)
    if extracted.tzinfo is not None:
        extracted = extracted.astimezone(timezone.utc).replace(tzinfo=None)
    return max((newest - extracted).total_seconds(), 0.0), "seconds"


def table_lag(source: SourceDatabase, lake: Lake, plan: TablePlan,
              high: Optional[Watermark] = None) -> Lag:
    """The table's :class:`Lag` now (``high``: the lake's high watermark when the caller has
    read it already). A table without a watermark column has no lag (``Lag(None, None, ...)``).

    Raises:
        DatabaseUnavailable / TerminalError: the source could not be asked.
        LakeError / StorageUnavailable: the lake could not be read.
    """
    if high is None:
        high = read_high_watermark(lake, plan.table)
    if not plan.watermark_column:
        return Lag(None, None, None, high)
    newest = source_newest(source, plan)
    value, unit = lag_between(newest, high)
    return Lag(value, unit, None if newest is None else str(newest), high)
