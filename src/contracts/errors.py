"""Errors of the pipeline, typed by what the caller should do next.

A :class:`TransientError` may succeed if retried unchanged (a database that is restarting, a
throttled storage call); Step Functions retries these. A :class:`TerminalError` will fail again
until a person changes something (configuration, source data, permissions); it is alerted on.
The split follows the Meltano SDK (``RetriableAPIError`` vs ``FatalAPIError``, in
``singer_sdk.exceptions``) and dlt (``TransientException`` vs ``TerminalException``, in
``dlt.common.exceptions``).

Messages name the table, key or setting involved and never contain a password.
"""
from __future__ import annotations

from typing import Any, Optional


class TotesError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    retryable = False

    def to_dict(self) -> dict:
        """The error as JSON: ``{"type": "DataError", "message": "...", "retryable": false}``
        plus the fields of a structured error (see :class:`DataError`)."""
        return {"type": type(self).__name__, "message": str(self), "retryable": self.retryable}


class TransientError(TotesError):
    """A retry with the same input can succeed."""

    retryable = True


class TerminalError(TotesError):
    """A retry with the same input fails again; a person must act."""

    retryable = False


class ConfigError(TerminalError):
    """The pipeline configuration or a setting is invalid (names the key or table)."""


def unknown_names(kind: str, names, known, where: str) -> ConfigError:
    """The error for ``names`` that are not among ``known`` (``kind``: "table", "stage"),
    with the closest known name for each (difflib, as Git and Click suggest) and the list:
    ``table sales_ordr is not in config/pipeline.yaml: did you mean sales_order? (known:
    address, …)``."""
    import difflib

    known = list(known)
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{kind} {name} is not {where}"
                     + (f": did you mean {close[0]}?" if close else ""))
    return ConfigError(f"{'; '.join(parts)} (known: {', '.join(known)})")


class SourceSchemaError(TerminalError):
    """The source database lacks a configured table or column (names it)."""


class PermissionDenied(TerminalError):
    """A database role lacks a privilege the pipeline needs (names the table and the GRANT)."""


class DataError(TerminalError):
    """A source row breaks a rule of the star schema.

    Attributes (each also in :meth:`to_dict`):
        table: the table the row is in (``sales_order``; ``fact_sales_order`` for a rule that
            load checks).
        key_column, row_id: the row's key (``sales_order_id``, ``11190``); None for a rule
            that no single row breaks.
        column: the column that breaks the rule (``agreed_delivery_date``), or None.
        value: the offending value, when there is one (as JSON-able Python: str, int, ...).
        problem: what is wrong, as the end of the message.

    ``str()`` is ``"<table> row <key_column>=<row_id>: <column> <problem>"``, for example
    ``sales_order row sales_order_id=12: agreed_delivery_date '2024-1-5' is not a YYYY-MM-DD
    date``; without a row: ``"<table>: <column> <problem>"``.
    """

    def __init__(self, table: str, problem: str, *, key_column: Optional[str] = None,
                 row_id: Any = None, column: Optional[str] = None, value: Any = None):
        self.table, self.problem = table, problem
        self.key_column, self.row_id, self.column, self.value = key_column, row_id, column, value
        where = f"{table} row {key_column}={row_id}" if key_column is not None else table
        super().__init__(f"{where}: {column + ' ' if column else ''}{problem}")

    def __reduce__(self):  # errors cross threads and processes: keep the fields when pickled
        return (_rebuild_data_error, (self.table, self.problem, self.key_column, self.row_id,
                                      self.column, self.value))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "table": self.table, "key_column": self.key_column,
                "row_id": self.row_id, "column": self.column,
                "value": None if self.value is None else str(self.value),
                "problem": self.problem}


def _rebuild_data_error(table, problem, key_column, row_id, column, value) -> DataError:
    return DataError(table, problem, key_column=key_column, row_id=row_id, column=column,
                     value=value)


class DatabaseUnavailable(TransientError):
    """A database could not be reached (names which one, never the password)."""


class DatabaseRejected(TerminalError):
    """A database refused the connection for a reason a retry cannot fix (auth, missing db)."""


class LakeError(TerminalError):
    """Lake or processed storage broke a contract (a key that exists, an unreadable file)."""


class StorageUnavailable(TransientError):
    """Lake or processed storage could not be reached."""


class LeaseLost(TransientError):
    """The lease of some work was lost while the work ran (a renewal failed, or it expired
    and another run took it over): nothing was made visible; a retry can succeed."""


class LeaseHeld(TransientError):
    """Work that must run alone found its lease held by another run (``totes rebuild``
    while a transform or load runs): retry once that run has ended."""


class ReconciliationFailed(TerminalError):
    """A rebuilt star schema does not agree with the source: it was not swapped in (the
    rebuilt tables stay in their scratch schema for inspection)."""


class SparkJobFailed(TerminalError):
    """Spark could not run a part at all (not the part's own error, which is re-raised as
    it is): an executor that cannot import totes, a worker that died."""


class CdcNotReady(ConfigError):
    """The source is not ready for change data capture; the message lists what is missing,
    each with its fix (``totes cdc init`` creates the publication and the slot)."""


class CaptureStopped(SourceSchemaError):
    """A TRUNCATE or a schema change read from the change log stopped one or more ``cdc``
    tables (the message names each and says what to do); the other tables landed."""
