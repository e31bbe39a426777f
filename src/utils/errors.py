"""Errors of the pipeline, typed by what the caller should do next.

A :class:`TransientError` may succeed if retried unchanged (a database that is restarting, a
throttled storage call); Step Functions retries these. A :class:`TerminalError` will fail again
until a person changes something (configuration, source data, permissions); it is alerted on.
The split follows the Meltano SDK (``RetriableSyncError`` vs ``FatalSyncError``) and dlt
(``TransientException`` vs ``TerminalException``).

Messages name the table, key or setting involved and never contain a password.
"""


class TotesError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    retryable = False


class TransientError(TotesError):
    """A retry with the same input can succeed."""

    retryable = True


class TerminalError(TotesError):
    """A retry with the same input fails again; a person must act."""

    retryable = False


class ConfigError(TerminalError):
    """The pipeline configuration or a setting is invalid (names the key or table)."""


class SourceSchemaError(TerminalError):
    """The source database lacks a configured table or column (names it)."""


class DataError(TerminalError):
    """A source row breaks a rule of the star schema (names table, row id and column)."""


class DatabaseUnavailable(TransientError):
    """A database could not be reached (names which one, never the password)."""


class DatabaseRejected(TerminalError):
    """A database refused the connection for a reason a retry cannot fix (auth, missing db)."""


class LakeError(TerminalError):
    """Lake or processed storage broke a contract (a key that exists, an unreadable file)."""


class StorageUnavailable(TransientError):
    """Lake or processed storage could not be reached."""
