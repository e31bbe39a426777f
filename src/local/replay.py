"""Replay the real ToteSys history through the pipeline: seed the source as of a start time,
then repeatedly advance it one step and run the main job, as the schedule would have.

This is how a user watches the incremental behaviour on real data (``totes replay``); the
tests use it to check that run after run every row version is moved exactly once.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Callable, Iterator

from totes.contracts.errors import ConfigError
from totes.contracts.stage_results import RunResult
from totes.local.runner import Resources, run_pipeline
from totes.local.seed import seed

_STEP = re.compile(r"^(\d+)\s*(d|h|m|min|s)$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "min": "minutes", "s": "seconds"}


def parse_step(text: str) -> timedelta:
    """``"1d"``, ``"6h"``, ``"15m"`` (or ``"15min"``), ``"30s"`` → a positive timedelta.

    Raises:
        ConfigError: any other text, or a zero step.
    """
    match = _STEP.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"step {text!r}: use a positive number and d, h, m or s, like 1d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def run_times(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """``start``, ``start + step``, … up to and including ``end``."""
    moment = start
    while moment <= end:
        yield moment
        moment += step


def replay(resources: Resources, start: datetime, end: datetime, step: timedelta,
           on_run: Callable[[datetime, RunResult], None] = lambda moment, result: None
           ) -> list[tuple[datetime, RunResult]]:
    """Seed ``resources.source`` as of ``start``, run; then advance by ``step`` and run, until
    ``end``. Returns ``[(run_time, the run's result), ...]``.

    Raises:
        ConfigError: ``end`` is before ``start``, or the source already holds rows changed
            after ``start`` (replay needs a source that is empty or not past ``start``).
    """
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    runs = []
    for moment in run_times(start, end, step):
        seed(resources.source, moment, advance=True)
        result = run_pipeline(resources)
        on_run(moment, result)
        runs.append((moment, result))
    return runs
