"""Every setting totes reads from the environment, in one typed object: :class:`Settings`.

The same variables serve the Lambda functions and the local command line (whose flags win over
them); nothing else in totes reads ``os.environ``. Each field names its variable
(``TOTES_<FIELD>``, or the AWS SDK's own names for S3), its type, its default and what it
means; ``docs/configuration.md`` lists them from here (``python -m totes.utils.settings``
prints the table, and a test keeps the page equal to it). An empty variable counts as unset.

Built with pydantic-settings, as Meltano derives its variables from its configuration schema:
a value of the wrong type fails at once, as a :class:`~totes.contracts.errors.ConfigError`
naming the variable (never its value when it may hold a password).
"""
from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from typing import Iterator, Literal, Optional

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from totes.contracts.errors import ConfigError
from totes.contracts.identifiers import quote_ident

PREFIX = "TOTES_"


class Settings(BaseSettings):
    """What the environment says; see the module docstring. URLs are hidden from ``repr``
    (they may hold a password)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", env_ignore_empty=True,
                                      frozen=True)

    source_url: Optional[str] = Field(
        None, repr=False, description="Source database URL: `postgresql://user:pw@host:5432/db"
        "[?host=/socket/dir&sslmode=require]`, or `mysql://` / `mariadb://` "
        "(`?unix_socket=/path`). Flag `--source-url`; locally the embedded `totesys` when "
        "unset.")
    source_secret: Optional[str] = Field(
        None, description="Or: the Secrets Manager secret holding the source connection as "
        "JSON (`host`, `port`, `username`, `password`, `dbname`; `\"engine\": \"mysql\"` for "
        "MySQL).")
    warehouse_url: Optional[str] = Field(
        None, repr=False, description="Warehouse database URL (PostgreSQL only). Flag "
        "`--warehouse-url`; locally the embedded `warehouse` when unset.")
    warehouse_secret: Optional[str] = Field(
        None, description="Or: the Secrets Manager secret holding the warehouse connection.")
    warehouse_schema: str = Field(
        "public", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="The PostgreSQL schema "
        "of the star schema's tables and views (created if absent). Every statement names "
        "it: the role's `search_path` plays no part. The bookkeeping is in "
        "`TOTES_BOOKKEEPING_SCHEMA`.")
    bookkeeping_schema: str = Field(
        "totes", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="The PostgreSQL schema of "
        "the load's bookkeeping: the batches loaded, the fact rows held, the quarantined "
        "versions, the raw layer's progress, the warehouse's schema version. Two pipelines "
        "can share one warehouse database with a schema each for this and the star schema.")
    raw_schema: str = Field(
        "raw", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="The PostgreSQL schema of "
        "the raw layer: per table `raw: true` (by default, each table no star-schema rule "
        "reads), every row version from the lake and a view of its current rows "
        "(docs/raw-layer.md). Created by the first load that has such a table.")
    lake: Optional[str] = Field(
        None, description="The ingest lake: a directory or `s3://bucket/prefix`. Flag "
        "`--lake`; locally `$TOTES_HOME/lake` when unset.")
    processed: Optional[str] = Field(
        None, description="The processed area: a directory or `s3://bucket/prefix`. Flag "
        "`--processed`; locally `$TOTES_HOME/processed` when unset.")
    config: Optional[str] = Field(
        None, description="The pipeline file: a path or `s3://bucket/key.yaml`. Flag "
        "`--config`; `config/pipeline.yaml` of the project when unset.")
    home: Optional[str] = Field(
        None, description="The local state directory (embedded server, lake, processed "
        "area, ledger); `<project>/.totes` when unset.")
    ledger: Optional[str] = Field(
        None, description="The run ledger: `sqlite:///path/ledger.sqlite3` or "
        "`dynamodb://table`; locally `$TOTES_HOME/ledger.sqlite3` when unset, none (no "
        "records, no leases) in a Lambda without it.")
    lease_seconds: float = Field(
        60.0, gt=0, description="How long a lease lasts without renewal, in seconds (its "
        "holder renews it every third of that).")
    db_timeout_seconds: float = Field(
        60.0, gt=0, description="How long a database may keep totes waiting for a lock, in "
        "seconds (the session's `lock_timeout`); a connection gets twice this to be "
        "answered. A wait that runs out is transient (retried).")
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a connection to a database may take to be "
        "answered, in seconds (libpq's `connect_timeout`); a server that does not answer in "
        "time is transient (retried).")
    bulk_reader: Literal["adbc", "pg8000"] = Field(
        "adbc", description="How a bulk extract of a PostgreSQL table (a first, full, "
        "reingest or backfill read) reads its rows: `adbc`, the ADBC driver's binary `COPY` "
        "into Arrow (about twice pg8000's speed), or `pg8000`, a `COPY` in CSV through the "
        "connection every other statement uses. Incremental runs always use pg8000.")
    transform_max_rows: int = Field(
        10_000_000, ge=1, description="The most lake rows of one source table one transform "
        "takes (whole lake batches, at least one): a backlog, a first load of a large source "
        "above all, is transformed in bounded steps; the state machine, and `totes run`, "
        "loop until nothing is pending.")
    load_max_rows: int = Field(
        20_000_000, ge=1, description="The most rows of processed files one load takes "
        "(whole batches, at least one): with `TOTES_LOAD_MAX_BATCHES`, the bound of one "
        "load; on the 2,000,000-row benchmark a load writes about a million rows in 3 s, "
        "so the default bound is about a minute.")
    load_max_batches: int = Field(
        48, ge=1, description="The most batches one load takes: a backlog is loaded in "
        "bounded steps, each well inside a Lambda's time limit; the state machine, and "
        "`totes run`, loop until nothing is pending.")
    reconcile_max_rows: int = Field(
        20_000_000, ge=1, description="The most fact and raw-layer rows (versions) one step "
        "of the state machine's whole reconciliation compares, in whole ranges of source ids: "
        "the Reconcile state is invoked again from where the last step ended until every "
        "fact and raw table was compared, so a reconciliation of any size fits Lambda's time "
        "limit (about "
        "6 s a million rows on the benchmark's machine: the default is a step of about 2 "
        "minutes; `totes reconcile` compares in one go).")
    allow_shared_database: bool = Field(
        False, description="`1` lets the warehouse share the source's database (never a "
        "default: the star schema would be created among the source's tables).")
    metrics_namespace: str = Field(
        "totes", min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._/#:-]+$",
        description="The CloudWatch namespace of the metrics the Lambda functions publish "
        "(docs/observability.md); main-terraform's `metrics_namespace` sets it, and its "
        "dashboard and alarms read it.")
    columns: Optional[int] = Field(
        None, gt=20, validation_alias=AliasChoices("COLUMNS"), description="The width of "
        "tables when the output is not a terminal (a pipe, a file, a CI log), as shells set "
        "it; 200 when unset. On a terminal, its own width.")
    aws_endpoint_url_s3: Optional[str] = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="An S3-compatible endpoint for the lake and processed area (an emulator "
        "in tests), as the AWS SDKs read it.")
    aws_region: Optional[str] = Field(
        None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="The AWS region of S3, as the AWS SDKs read it.")


def variable(name: str) -> str:
    """The environment variable of field ``name`` (``TOTES_LAKE``; ``AWS_REGION`` for the
    AWS SDK's own)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{PREFIX}{name.upper()}"


#: Values that win over the environment's in this context (:func:`overridden`).
_overrides: ContextVar[dict] = ContextVar("totes_settings_overrides", default={})


@contextlib.contextmanager
def overridden(**values) -> Iterator[None]:
    """Within the block (this thread or task), :func:`current` gives ``values`` instead of
    the environment's for those fields: how ``totes rebuild`` builds a star schema and its
    bookkeeping in scratch schemas with the ordinary stages.

    Raises:
        ConfigError: a name is not a field.
    """
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"no such setting: {', '.join(unknown)}")
    token = _overrides.set({**_overrides.get(), **values})
    try:
        yield
    finally:
        _overrides.reset(token)


def _names() -> frozenset[str]:
    """Every variable a field reads, upper case (pydantic-settings matches them in any case)."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(f"{PREFIX}{name.upper()}")
    return frozenset(names)


_NAMES = _names()
#: The last environment read and the Settings it gave (built again only when one changes).
_last: tuple[Optional[tuple], Optional[Settings]] = (None, None)


def variables() -> dict[str, str]:
    """The ``TOTES_*`` variables of this process's environment: what a Spark task is given
    (:func:`totes.utils.spark.run_tasks`), so that an executor reads the driver's settings."""
    return {name: value for name, value in os.environ.items() if name.startswith("TOTES_")}


def set_variables(values: dict[str, str]) -> None:
    """Set ``values`` (``TOTES_*`` names) in this process's environment, as a Lambda's
    variables are set: what a Glue job does with its ``--TOTES_*`` arguments. The next
    :func:`current` reads them.

    Raises:
        ConfigError: a name that is not a ``TOTES_`` setting.
    """
    for name in values:
        if not name.startswith("TOTES_"):
            raise ConfigError(f"{name} is not a TOTES_ setting")
    os.environ.update(values)


def current() -> Settings:
    """The settings the environment gives now, with any :func:`overridden` values. The
    variables are read on every call, so a test or a command that changes one is seen at
    once; the Settings are built again only when one of them changed (building them is
    about 8 ms, and a run asks for them a few dozen times).

    Raises:
        ConfigError: a variable holds a value of the wrong type; the message names the
            variable and the rule, e.g. ``TOTES_DB_TIMEOUT_SECONDS: input should be greater
            than 0``.
    """
    global _last
    key = tuple(sorted((name, value) for name, value in os.environ.items()
                       if name.upper() in _NAMES))
    cached_key, found = _last
    if cached_key != key or found is None:
        try:
            found = Settings()
        except ValidationError as exc:
            raise ConfigError(f"invalid environment: "
                              f"{'; '.join(_problem(e) for e in exc.errors())}") from None
        _last = (key, found)
    overrides = _overrides.get()
    return found.model_copy(update=overrides) if overrides else found


def bookkeeping() -> str:
    """The schema of the load's bookkeeping (``TOTES_BOOKKEEPING_SCHEMA``, ``totes``),
    quoted for SQL text: ``"totes"``."""
    return quote_ident(current().bookkeeping_schema)


def _problem(error) -> str:
    """``TOTES_LEASE_SECONDS='soon': input should be a valid number`` (the value only when
    the field may be shown: never a URL's)."""
    name = str(error["loc"][0]) if error["loc"] else ""
    if name not in Settings.model_fields:
        return error["msg"].lower()
    shown = f"={error['input']!r}" if Settings.model_fields[name].repr else ""
    return f"{variable(name)}{shown}: {error['msg'].lower()}"


def markdown_table() -> str:
    """The variables as the Markdown table ``docs/configuration.md`` shows: variable,
    type, default, meaning."""
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        names = info.validation_alias.choices if isinstance(info.validation_alias,
                                                            AliasChoices) else [variable(name)]
        annotation = info.annotation
        if annotation == Optional[int]:
            annotation = int
        kind = {float: "seconds", int: "integer", bool: "boolean"}.get(
            annotation, "text")  # type: ignore[arg-type]  # annotation is a type here
        default = "unset" if info.default is None else f"`{info.default}`"
        lines.append(f"| {' or '.join(f'`{n}`' for n in names)} | {kind} | {default} | "
                     f"{info.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
