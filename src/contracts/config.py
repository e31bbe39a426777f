"""The pipeline configuration (YAML) and its resolution into one plan per table.

File shape (``config/pipeline.yaml``)::

    defaults:                          # applies to every table unless the table overrides it
      extract_type: incremental        # or full (the whole table as one snapshot each run),
                                       # or cdc (every change, from the database's log)
      watermark_column: last_updated   # timestamp or integer column that moves on change
      record_batch_bytes: 8388608      # CSV bytes per Arrow record batch / Parquet row group
      max_batch_rows: 5000000          # rows per lake batch of an incremental extract
      in_flight_safety_lag_seconds: 300
    tables:
      sales_order: {}                  # primary key from the source registry, else <table>_id
      payment: {primary_key: payment_id}
      currency: {extract_type: full}   # a full table has a watermark only if it names one
      sales_order: {extract_type: cdc} # read from the publication and slot below
    cdc:                               # change data capture (tables whose extract_type is cdc)
      slot: totes                      # one logical replication slot per pipeline
      publication: totes               # and one publication
      max_changes_per_run: 100000      # a read stops after the transaction that passes it

Unknown keys, wrong types and invalid identifiers fail before any work, naming the key.
The same rule as the Meltano SDK: validate up front, name the key and the rule it broke.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from totes.contracts.errors import ConfigError
from totes.contracts.identifiers import quote_ident
from totes.contracts.source_schema import ColumnsMode, DataTypeMode, SchemaContract
from totes.contracts.source_tables import SOURCE_TABLES, default_primary_key

DEFAULT_CONFIG_PATH = "config/pipeline.yaml"
#: The most rows one lake batch of an incremental extract holds by default: 5,000,000 rows
#: of the benchmark's ``sales_order`` stage as 52 MB of Parquet, and the extract reads about
#: 0.9 million rows a second on 2 cores: far within a Lambda's 15 minutes and the 2,048 MB of
#: ``/tmp`` main-terraform gives ingest.
DEFAULT_MAX_BATCH_ROWS = 5_000_000


#: How a table is read: the versions after its watermark (``incremental``), a whole snapshot
#: each run (``full``), or every committed change from the database's log (``cdc``).
ExtractType = Literal["incremental", "full", "cdc"]
#: The engine that extracts a table: a Lambda function (one per part when partitioned) or an
#: AWS Glue (Spark) job whose executors read the parts (:mod:`totes.ingest.spark_extract`).
JobType = Literal["lambda", "glue"]
#: How a polled table's hard deletes are found: not at all (``none``), or by comparing the
#: source's primary keys with the keys the lake holds (``keys``, :mod:`totes.ingest.deletes`).
DeleteDetection = Literal["none", "keys"]
#: Glue 5.0's worker types (memory and vCPUs per worker: G.1X 16 GB/4, G.2X 32 GB/8, ...).
WorkerType = Literal["G.1X", "G.2X", "G.4X", "G.8X"]


def _key(meaning: str, values: str, default: str, value=None):
    """A pipeline-file key: its value when left out (``value``), and what the configuration
    reference shows of it (:func:`markdown_table`)."""
    extra: dict[str, Any] = {"values": values, "shown_default": default}
    return Field(value, description=meaning, json_schema_extra=extra)


class SchemaContractOptions(BaseModel):
    """What a change of a polled table's source schema does (dlt's vocabulary; see
    :mod:`totes.contracts.source_schema`); a key left out comes from ``defaults``, then the
    built-in default."""

    model_config = ConfigDict(extra="forbid", strict=True)

    columns: Optional[ColumnsMode] = _key(
        "a new source column: evolve keeps it in the lake from the batch that brought it; "
        "freeze stops the table, naming the column; discard_value leaves it out of the lake",
        "`evolve`, `freeze`, `discard_value`", "`evolve`")
    data_type: Optional[DataTypeMode] = _key(
        "a narrowing or incompatible type change (a widening always evolves), and a value "
        "beyond the decimal(38, 9) of a numeric without precision: freeze stops the table, "
        "naming the column and both types; discard_value keeps the lake's type and "
        "quarantines each value that does not fit it (the row lands)",
        "`freeze`, `discard_value`", "`freeze`")


class TableOptions(BaseModel):
    """Settings of one table; any left out comes from ``defaults``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    extract_type: Optional[ExtractType] = _key(
        "incremental: the row versions after the watermark; full: the whole table every run, "
        "one snapshot batch; cdc: every committed change from PostgreSQL's log "
        "([cdc.md](cdc.md))", "`incremental`, `full`, `cdc`", "`incremental`")
    primary_key: Optional[str] = _key(
        "an integer column with a unique index of its own, not null: it breaks watermark ties "
        "and names rows in messages", "a column", "the registry's key, else `<table>_id`")
    watermark_column: Optional[str] = _key(
        "a timestamp (PostgreSQL `timestamp`/`timestamptz`, MySQL `DATETIME`/`TIMESTAMP`) or, "
        "on PostgreSQL, an integer; optional for `full`", "a column", "`last_updated`")
    record_batch_bytes: Optional[int] = Field(
        None, ge=1024, le=1 << 30,
        description="bytes per Arrow record batch = one Parquet row group; the unit of "
        "memory of an extract", json_schema_extra={"values": "1,024 to 1,073,741,824",
                                                   "shown_default": "8,388,608"})
    max_batch_rows: Optional[int] = Field(
        None, ge=1000, le=1_000_000_000, description="the most rows one lake batch of an "
        "incremental extract holds (rounded up to a whole record batch): a larger extract, "
        "a first one above all, lands as several batches in one read, each published with "
        "its watermark before the next is written, so the staging disk stays bounded and a "
        "run stopped midway resumes after the last batch ([extract.md](extract.md"
        "#bounded-batches))", json_schema_extra={"values": "1,000 to 1,000,000,000",
                                                 "shown_default": "5,000,000"})
    in_flight_safety_lag_seconds: Optional[float] = Field(
        None, ge=0, description="how far behind the database clock a run stops when its "
        "role cannot see other sessions' transactions",
        json_schema_extra={"values": "≥ 0", "shown_default": "300"})
    partition_column: Optional[str] = _key(
        "reads the table as `num_partitions` ranges of this column in parallel",
        "an integer or timestamp column", "none")
    num_partitions: Optional[int] = Field(
        None, ge=1, le=1024, description="the number of ranges (needs `partition_column`)",
        json_schema_extra={"values": "1 to 1,024", "shown_default": "1"})
    lower_bound: Optional[str] = _key(
        "where the equal steps start; rows below go to the first partition",
        "a value of the partition column, as text", "the column's minimum")
    upper_bound: Optional[str] = _key(
        "where the equal steps end; rows above go to the last partition",
        "a value of the partition column, as text", "the column's maximum")
    job_type: Optional[JobType] = _key(
        "the engine that extracts the table in AWS: a Lambda (one per part when "
        "partitioned) or the Glue (Spark) job; with `glue`, a fact's source table is also "
        "transformed and loaded on Spark, its fact rows built and copied by Spark tasks "
        "([aws.md](aws.md#transform-and-load-on-spark)); locally `--engine spark` of "
        "`totes ingest`, `transform` and `load` runs the Spark path", "`lambda`, `glue`",
        "`lambda`")
    worker_type: Optional[WorkerType] = _key(
        "the Glue job run's worker type (a `glue` table)", "`G.1X`, `G.2X`, `G.4X`, `G.8X`",
        "`G.1X`")
    worker_no: Optional[int] = Field(
        None, ge=2, le=299, description="the Glue job run's number of workers",
        json_schema_extra={"values": "2 to 299", "shown_default": "2"})
    delete_detection: Optional[DeleteDetection] = _key(
        "keys: an incremental table's run also compares the source's primary keys (one "
        "index scan) with the keys the lake holds, and writes a delete version of each row "
        "gone from the source ([cdc.md](cdc.md#deletes-without-the-log))",
        "`none`, `keys`", "`none`")
    delete_detection_every: Optional[int] = Field(
        None, ge=1, le=10_000, description="with `delete_detection: keys`, compare the keys "
        "on every this many runs of the table's ingest (1: every run)",
        json_schema_extra={"values": "1 to 10,000", "shown_default": "1"})
    schema_contract: Optional[SchemaContractOptions] = Field(
        None, description="what a change of the source's schema does to the table: new "
        "columns and type changes ([schema-evolution.md](schema-evolution.md)), polled or "
        "read from a change log (PostgreSQL's, or a MySQL binlog's `ALTER TABLE`)",
        json_schema_extra={
            "values": "a mapping of `columns` and `data_type` (below)",
            "shown_default": "`{columns: evolve, data_type: freeze}`"})
    freshness_target_seconds: Optional[float] = Field(
        None, gt=0, le=31_536_000, description="how far behind the source the table may be "
        "before its lag alarm fires in AWS (the `LagSeconds` metric: the source's newest "
        "watermark minus the lake's; [observability.md](observability.md))",
        json_schema_extra={"values": "seconds, > 0", "shown_default": "3,600"})
    raw: Optional[bool] = _key(
        "keep every row version of the table from the lake in the warehouse's raw layer "
        "(`raw.<table>`, and its current rows in the view `raw.<table>_current`; "
        "[raw-layer.md](raw-layer.md))", "`true`, `false`",
        "`true` for a table no star-schema rule reads, else `false`")


class CdcOptions(BaseModel):
    """Change data capture (PostgreSQL logical replication) of the tables whose
    ``extract_type`` is ``cdc``: one publication and one slot for the whole pipeline, read by
    one reader per run (:mod:`totes.ingest.capture`).

    ``max_changes_per_run`` is PostgreSQL's ``upto_nchanges``: a read never splits a
    transaction, so that a run stays inside a Lambda's time; the next run goes on from
    there."""

    model_config = ConfigDict(extra="forbid", strict=True)

    slot: str = _key("the logical replication slot (one per pipeline)", "a name", "`totes`",
                     "totes")
    publication: str = _key("the publication of the `cdc` tables", "a name", "`totes`",
                            "totes")
    max_changes_per_run: int = Field(
        100_000, ge=1, le=100_000_000,
        description="a read of the log stops after the transaction in which it passes this "
        "many of the log's messages (a change is one; each transaction adds a begin and a "
        "commit)", json_schema_extra={"values": "1 to 100,000,000",
                                      "shown_default": "100,000"})
    retained_wal_alert_bytes: int = Field(
        1 << 30, ge=1 << 20,
        description="the slot's retained WAL beyond which the state machine alerts (an "
        "abandoned slot fills the source's disk)",
        json_schema_extra={"values": "≥ 1,048,576", "shown_default": "1,073,741,824"})


class PipelineConfig(BaseModel):
    """The whole file: ``defaults`` plus ``tables`` (name → overrides), and ``cdc`` (the
    publication and slot of the ``cdc`` tables)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    defaults: TableOptions = TableOptions()
    tables: dict[str, Optional[TableOptions]] = Field(min_length=1)
    cdc: CdcOptions = CdcOptions()


class DistributedBatch(BaseModel):
    """A partitioned batch whose parts are read by separate workers (the state machine's
    Map over the parts): what plan fixes for all of them, so that together they hold each
    row version once. ``cutoff`` (as the watermark column's type prints it) and ``moment``
    (UTC ISO) are the in-flight cutoff read by plan; ``low_watermark`` the table's watermark
    when plan read the lake; ``parts`` the partitions (``{"index", "count", "lower",
    "upper"}``)."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    cutoff: str
    moment: str
    low_watermark: Optional[dict] = None
    parts: list[dict]


#: What one ingest of a table does: its ``extract_type`` (incremental, full, cdc), or a
#: reingest (from the beginning, whatever the lake holds; for a ``cdc`` table, a new initial
#: copy) or a backfill (a ``[from, to)`` range).
Mode = Literal["incremental", "full", "cdc", "reingest", "backfill"]


class TablePlan(BaseModel):
    """The payload of one table for ingest (the Map state's item), as JSON::

        {"table": "sales_order", "primary_key": "sales_order_id",
         "extract_type": "incremental", "mode": "incremental",
         "watermark_column": "last_updated", "record_batch_bytes": 8388608,
         "max_batch_rows": 5000000, "in_flight_safety_lag_seconds": 300.0,
         "backfill_from": null, "backfill_to": null, "run_id": null}

    ``max_batch_rows`` bounds each lake batch of an incremental (not partitioned) extract:
    one read of the source lands as several batches, each published with its high
    watermark before the next is written (:mod:`totes.ingest.extract`).

    ``mode`` is what this run does: the table's ``extract_type``, or ``reingest``, or
    ``backfill`` of the row versions whose watermark is in ``[backfill_from, backfill_to)``
    (text as the source prints the column's values: ``2024-11-01 00:00:00`` or ``1200``).
    A ``cdc`` table's mode is ``cdc`` (read the log; the first time, an initial copy) or
    ``reingest`` (a new initial copy); it has no backfill, partitions or Glue job.
    ``watermark_column`` is None only for a ``full`` table that names none (a ``cdc`` table's
    only serves ``totes status``'s lag).
    ``run_id`` names the run in the ledger (the state machine's execution, or the local run).
    ``partition_column``/``num_partitions``/``lower_bound``/``upper_bound``: read the table as
    that many ranges of an integer or timestamp column in parallel (bounds: the column's
    minimum and maximum when not given; see :mod:`totes.contracts.partitions`).
    ``distributed`` (state machine only): the shared settings of a partitioned batch read by
    one worker per part.
    ``job_type``: ``lambda`` (the default) or ``glue``, the engine the state machine's Choice
    sends the table to; ``worker_type``/``worker_no``: the Glue job run's workers (Glue 5.0:
    ``G.1X`` … ``G.8X``, 2 to 299 workers).
    ``delete_detection``: ``keys`` to compare, on every ``delete_detection_every``-th run of
    an incremental table, the source's primary keys with the lake's key index and write a
    delete version of each key gone (:mod:`totes.ingest.deletes`).
    ``schema_contract``: what a change of the source's schema does
    (:class:`~totes.contracts.source_schema.SchemaContract`: ``columns``, ``data_type``).
    ``check_error`` (state machine only): plan found the table unusable in the source
    (``{"Error": "SourceSchemaError", "Cause": "<error JSON>"}``); its Map item records the
    failure instead of extracting, and the other tables go on.
    """

    model_config = ConfigDict(extra="forbid")

    table: str
    primary_key: str
    extract_type: ExtractType = "incremental"
    mode: Mode = "incremental"
    watermark_column: Optional[str] = "last_updated"
    record_batch_bytes: int = 8 << 20
    max_batch_rows: int = Field(DEFAULT_MAX_BATCH_ROWS, ge=1000, le=1_000_000_000)
    in_flight_safety_lag_seconds: float = 300.0
    backfill_from: Optional[str] = None
    backfill_to: Optional[str] = None
    partition_column: Optional[str] = None
    num_partitions: int = 1
    lower_bound: Optional[str] = None
    upper_bound: Optional[str] = None
    job_type: JobType = "lambda"
    worker_type: WorkerType = "G.1X"
    worker_no: int = Field(2, ge=2, le=299)
    run_id: Optional[str] = None
    check_error: Optional[dict] = None
    distributed: Optional[DistributedBatch] = None
    delete_detection: DeleteDetection = "none"
    delete_detection_every: int = Field(1, ge=1, le=10_000)
    schema_contract: SchemaContract = SchemaContract()
    #: Seconds of lag before the table's alarm fires in AWS (read by main-terraform).
    freshness_target_seconds: float = Field(3600.0, gt=0)
    #: Whether load keeps the table's row versions in the raw layer (:mod:`totes.load.raw`).
    raw: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "TablePlan":
        where = f"table {self.table}"
        if self.extract_type == "full" and self.mode == "incremental":
            self.mode = "full"
        if self.extract_type == "cdc" and self.mode == "incremental":
            self.mode = "cdc"
        if self.extract_type == "cdc":
            self._check_cdc(where)
        elif self.mode in ("incremental", "reingest", "backfill") and not self.watermark_column:
            raise ValueError(f"{where}: {self.mode} needs a watermark_column")
        elif self.mode == "cdc":
            raise ValueError(f"{where}: mode cdc needs extract_type: cdc")
        if self.num_partitions > 1 and not self.partition_column:
            raise ValueError(f"{where}: num_partitions needs a partition_column")
        if self.delete_detection == "keys" and self.extract_type != "incremental":
            raise ValueError(
                f"{where}: delete_detection: keys is for an incremental table (a cdc table "
                "reads its deletes from the log; a full table's snapshot is the table)")
        if self.delete_detection == "keys" and self.job_type != "lambda":
            raise ValueError(f"{where}: delete_detection: keys runs with the table's Lambda "
                             "ingest, not a Glue job (remove job_type or delete_detection)")
        if self.mode == "backfill":
            if self.backfill_from is None or self.backfill_to is None:
                raise ValueError(f"{where}: a backfill needs both --from and --to")
        elif self.backfill_from is not None or self.backfill_to is not None:
            raise ValueError(f"{where}: --from/--to make a backfill; they cannot go with "
                             f"{self.mode}")
        return self

    def _check_cdc(self, where: str) -> None:
        if self.mode not in ("cdc", "reingest"):
            raise ValueError(f"{where}: a cdc table is read from the database's log: "
                             f"{self.mode} does not apply (--reingest takes a new initial copy)")
        if self.num_partitions > 1:
            raise ValueError(f"{where}: a cdc table is read from the log, not in partitions "
                             "(remove num_partitions)")
        if self.job_type != "lambda":
            raise ValueError(f"{where}: a cdc table is read by the pipeline's one log reader, "
                             "not by a Glue job (remove job_type)")

    def watermark(self) -> str:
        """The watermark column, which every mode but ``full`` has (the validator says so).

        Raises:
            ConfigError: the plan has none.
        """
        if not self.watermark_column:
            raise ConfigError(f"table {self.table}: {self.mode} needs a watermark_column")
        return self.watermark_column

    def partitioning(self) -> str:
        """The partition column of a partitioned table.

        Raises:
            ConfigError: the plan has none.
        """
        if not self.partition_column:
            raise ConfigError(f"table {self.table}: partitions need a partition_column")
        return self.partition_column

    def shared(self) -> "DistributedBatch":
        """What the parts of a distributed batch share (the state machine's payload).

        Raises:
            ConfigError: the payload holds no ``distributed`` (it is not a part's).
        """
        if self.distributed is None:
            raise ConfigError(f"table {self.table}: the payload of a part or a commit needs "
                              "'distributed' (what plan fixed for the parts)")
        return self.distributed

    def backfill_range(self) -> Optional[dict[str, str]]:
        """A backfill's ``{"from": ..., "to": ...}`` (None for other modes)."""
        if self.mode != "backfill" or self.backfill_from is None or self.backfill_to is None:
            return None
        return {"from": self.backfill_from, "to": self.backfill_to}

    def with_mode(self, mode: str, backfill_from: Optional[str] = None,
                  backfill_to: Optional[str] = None) -> "TablePlan":
        """This plan for a run in ``mode`` (reingest, backfill; any :data:`Mode`, checked).

        Raises:
            ConfigError: the combination is impossible (``--reingest`` with ``--from``, a
                backfill without both bounds, a mode without the watermark it needs).
        """
        try:
            return TablePlan.model_validate(self.model_dump() | {
                "mode": mode, "backfill_from": backfill_from, "backfill_to": backfill_to})
        except ValidationError as exc:
            raise ConfigError("; ".join(e["msg"].removeprefix("Value error, ")
                                        for e in exc.errors())) from None


class CapturePlan(BaseModel):
    """The payload of the pipeline's one reader of the change log (the state machine's
    Capture step; a thread of the local run), for every ``cdc`` table of this run::

        {"slot": "totes", "publication": "totes", "max_changes_per_run": 100000,
         "tables": [<TablePlan>, ...], "run_id": "run-…"}

    One reader, because a slot serves one reader at a time (:mod:`totes.ingest.capture`).
    ``delete_detection``: ``keys`` to compare, on every ``delete_detection_every``-th run of
    an incremental table, the source's primary keys with the lake's key index and write a
    delete version of each key gone (:mod:`totes.ingest.deletes`).
    ``check_error`` (state machine only): plan found the source not ready (``{"Error":
    "CdcNotReady", "Cause": "<error JSON>"}``): the step records the failure, and the
    polled tables go on."""

    model_config = ConfigDict(extra="forbid")

    slot: str
    publication: str
    max_changes_per_run: int = 100_000
    retained_wal_alert_bytes: int = 1 << 30
    tables: list[TablePlan]
    run_id: Optional[str] = None
    check_error: Optional[dict] = None


def capture_plan(config: PipelineConfig, plans: list[TablePlan]) -> Optional[CapturePlan]:
    """The reader's payload for the ``cdc`` tables among ``plans`` (None when there is none)."""
    chosen = [p for p in plans if p.extract_type == "cdc"]
    if not chosen:
        return None
    return CapturePlan(slot=config.cdc.slot, publication=config.cdc.publication,
                       max_changes_per_run=config.cdc.max_changes_per_run,
                       retained_wal_alert_bytes=config.cdc.retained_wal_alert_bytes,
                       tables=chosen, run_id=chosen[0].run_id)


def parse_config_text(text: str, source: str = "configuration") -> PipelineConfig:
    """Parse and validate the YAML ``text`` of a pipeline file (``source`` names it in
    messages); :func:`totes.utils.config_file.load_config` reads the file.

    Raises:
        ConfigError: the text is not YAML, or breaks the schema; the message names the file
            and the key, e.g. ``tables.payment.watermark_colum: extra inputs are not
            permitted``.
    """
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # nosec B506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {source} is not valid YAML: {exc}") from None
    return parse_config(document, source=source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last silently: a table listed twice would lose its first settings)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # the safe loader itself rejects what cannot be a key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def parse_config(document: object, source: str = "configuration") -> PipelineConfig:
    """Validate an already parsed document; see :func:`parse_config_text`."""
    try:
        config = PipelineConfig.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg'].lower()}"
            for err in exc.errors())
        raise ConfigError(f"{source} is invalid: {problems}") from None
    for table in config.tables:
        _check_identifier(source, f"tables.{table}", table)
    _check_identifier(source, "cdc.slot", config.cdc.slot)
    _check_identifier(source, "cdc.publication", config.cdc.publication)
    for key, options in [("defaults", config.defaults)] + [
            (f"tables.{table}", own) for table, own in config.tables.items() if own]:
        for column in ("primary_key", "watermark_column", "partition_column"):
            value = getattr(options, column)
            if value is not None:
                _check_identifier(source, f"{key}.{column}", value)
    return config


def _check_identifier(source: str, key: str, value: str) -> None:
    try:
        quote_ident(value)
    except ConfigError as exc:
        raise ConfigError(f"{source} is invalid: {key}: {exc}") from None


def resolve_tables(config: PipelineConfig) -> list[TablePlan]:
    """One :class:`TablePlan` per table, in file order: a table's own setting wins, otherwise
    ``defaults``, otherwise the built-in default (the primary key of
    :mod:`totes.contracts.source_tables`, else ``<table>_id``). Identifiers were checked when the
    configuration was parsed."""
    plans = []
    for table, own in config.tables.items():
        own = own or TableOptions()
        merged = config.defaults.model_dump(exclude_none=True)
        merged.update(own.model_dump(exclude_none=True))
        merged.setdefault("primary_key", default_primary_key(table))
        # On by default for a table no star-schema rule reads: adding it is enough to query it.
        merged.setdefault("raw", table not in SOURCE_TABLES)
        contract = {**(config.defaults.schema_contract.model_dump(exclude_none=True)
                       if config.defaults.schema_contract else {}),
                    **(own.schema_contract.model_dump(exclude_none=True)
                       if own.schema_contract else {})}
        merged["schema_contract"] = contract
        if merged.get("extract_type") == "full":
            # A full extract needs no watermark: the defaults' does not apply to it.
            merged["watermark_column"] = own.watermark_column
            merged["mode"] = "full"
        elif merged.get("extract_type") == "cdc":
            merged["mode"] = "cdc"
        try:
            plans.append(TablePlan(table=table, **merged))
        except ValidationError as exc:
            raise ConfigError("; ".join(e["msg"].removeprefix("Value error, ")
                                        for e in exc.errors())) from None
    return plans


def raw_tables(config: PipelineConfig) -> list[TablePlan]:
    """The plans of the tables whose row versions load keeps in the raw layer (``raw``: its
    own or ``defaults``' setting, else on for a table no star-schema rule reads), in file
    order.

    Raises:
        ConfigError: as :func:`resolve_tables`; or a table's raw view ``<table>_current``
            would have the name of another configured table.
    """
    chosen = [plan for plan in resolve_tables(config) if plan.raw]
    names = set(config.tables)
    for plan in chosen:
        if f"{plan.table}_current" in names:
            raise ConfigError(f"table {plan.table}: its raw layer's view {plan.table}_current "
                              f"would take the name of the configured table "
                              f"{plan.table}_current (set raw: false on one of them)")
    return chosen


def markdown_table(model: type[BaseModel] = TableOptions) -> str:
    """The keys of one section of the pipeline file as the Markdown table
    ``docs/configuration.md`` shows (key, values, default, meaning), from the model's own
    fields: a test keeps that page equal to it, and the docs site fills it at build time."""
    lines = ["| key | values | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict), name  # every key is declared with _key or its extra
        lines.append(f"| `{name}` | {extra['values']} | {extra['shown_default']} | "
                     f"{info.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
    print()
    print(markdown_table(CdcOptions))
    print()
    print(markdown_table(SchemaContractOptions))
