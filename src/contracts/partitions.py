"""Partitions of a table: ``num_partitions`` ranges of its ``partition_column`` (an integer or a
timestamp), read in parallel.

The bounds are ``lower_bound``/``upper_bound`` from the configuration, or the column's minimum
and maximum read in the extract's snapshot. The range between them is cut into equal steps;
the first partition also takes everything below the lower bound and NULLs, the last
everything from its start up, so that the partitions cover every row exactly once whatever
the bounds (as Spark's JDBC reader does with ``partitionColumn``/``lowerBound``/
``upperBound``/``numPartitions``). A partition can be empty; there can be more partitions
than rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Optional

import pyarrow as pa

from totes.contracts.config import TablePlan
from totes.contracts.errors import ConfigError, SourceSchemaError


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` (0-based) of ``count``: the rows whose partition column is at or
    after ``lower`` and before ``upper`` (text, in the column's type; None: unbounded, and
    the first partition also takes NULLs). Each source reader turns it into its SQL
    (:func:`totes.utils.postgres_reader.partition_predicate`)."""

    index: int
    count: int
    lower: Optional[str]
    upper: Optional[str]

    @property
    def name(self) -> str:
        """``part-00002-of-00004``."""
        return f"part-{self.index + 1:05d}-of-{self.count:05d}"


def column_cast(schema: pa.Schema, plan: TablePlan) -> str:
    """The SQL type the partition column's bounds are cast to.

    Raises:
        SourceSchemaError: the column is missing, or neither an integer nor a timestamp.
    """
    if plan.partition_column not in schema.names:
        raise SourceSchemaError(f"table {plan.table!r} has no partition column "
                                f"{plan.partition_column!r}")
    kind = schema.field(plan.partition_column).type
    if pa.types.is_integer(kind):
        return "bigint"
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    raise SourceSchemaError(f"{plan.table}.{plan.partition_column} is {kind}; a partition "
                            "column must be an integer or a timestamp")


def _parse(text: str, cast: str, flag: str, table: str):
    try:
        return int(text) if cast == "bigint" else datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"table {table}: {flag} {text!r} is not a {cast} value") from None


def partitions_of(plan: TablePlan, schema: pa.Schema,
                  find_bounds: Callable[[], tuple[Optional[str], Optional[str]]]
                  ) -> list[Partition]:
    """The partitions of ``plan.table``; ``find_bounds()`` returns the partition column's
    minimum and maximum as text (None, None for an empty table), read by the source's reader
    in the extract's snapshot when the configuration gives no bounds.

    Raises:
        SourceSchemaError: the partition column is missing or of the wrong type.
        ConfigError: a bound is not a value of the column's type, or the lower is not below
            the upper.
    """
    count = plan.num_partitions or 1
    if count == 1:
        return [Partition(0, 1, None, None)]
    cast = column_cast(schema, plan)
    low, high = plan.lower_bound, plan.upper_bound
    if low is None or high is None:
        found_low, found_high = find_bounds()
        low, high = low or found_low, high or found_high
    if low is None or high is None:  # an empty table: one read of it all
        return [Partition(0, 1, None, None)]
    lower = _parse(low, cast, "lower_bound", plan.table)
    upper = _parse(high, cast, "upper_bound", plan.table)
    if not lower <= upper:
        raise ConfigError(f"table {plan.table}: lower_bound {low!r} is after upper_bound "
                          f"{high!r}")
    if cast == "bigint":
        step = max((upper - lower + count) // count, 1)
        cuts = [str(lower + i * step) for i in range(1, count)]
    else:
        step = (upper - lower) / count or timedelta(microseconds=1)
        cuts = [(lower + i * step).isoformat(sep=" ") for i in range(1, count)]
    edges = [None, *cuts, None]
    return [Partition(i, count, edges[i], edges[i + 1]) for i in range(count)]
