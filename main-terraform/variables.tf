variable "project" {
  description = "Name prefix of every resource; must match immutable-terraform."
  type        = string
  default     = "totes"
}

variable "environment" {
  description = "Deployment environment; must match immutable-terraform."
  type        = string
  default     = "prod"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-2"
}

variable "schedule_expression" {
  description = "When the state machine starts (EventBridge): every 15 minutes keeps a change within 30 minutes of the warehouse."
  type        = string
  default     = "rate(15 minutes)"
}

variable "schedule_enabled" {
  description = "Whether the schedule starts the state machine (false pauses the pipeline)."
  type        = bool
  default     = true
}

variable "ingest_max_concurrency" {
  description = "How many tables the Map state ingests at once."
  type        = number
  default     = 4
}

variable "lambda_memory_mb" {
  description = "Memory of each function, in MB."
  type        = map(number)
  default     = { plan = 256, ingest = 1024, status = 256, pending = 256, transform = 1024, load = 1024, reconcile = 1024, alert = 128 }
}

variable "lambda_ephemeral_storage_mb" {
  description = "Size of each function's /tmp, in MB (512 to 10240). Ingest stages one lake batch there before publishing it (max_batch_rows, 5,000,000 by default, bounds a batch) and transform stages its processed files; 2,048 MB holds a batch of the default size with room to spare (docs/extract.md, bounded batches). Load and the others read and write no files."
  type        = map(number)
  default     = { plan = 512, ingest = 2048, status = 512, pending = 512, transform = 2048, load = 512, reconcile = 512, alert = 512 }

  validation {
    condition     = alltrue([for size in values(var.lambda_ephemeral_storage_mb) : size >= 512 && size <= 10240])
    error_message = "Each function's ephemeral storage is between 512 and 10240 MB."
  }
}

variable "lambda_timeout_seconds" {
  description = "Timeout of each function, in seconds."
  type        = map(number)
  default     = { plan = 60, ingest = 600, status = 30, pending = 60, transform = 600, load = 600, reconcile = 600, alert = 30 }
}

variable "extra_environment" {
  description = "More environment variables for every function, e.g. { TOTES_CONFIG = \"config/pipeline.yaml\" }; they win over the defaults."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "Retention of the functions' and the state machine's logs."
  type        = number
  default     = 365
}

variable "subnet_ids" {
  description = "Subnets for the functions when the databases are only reachable in a VPC (empty: no VPC)."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "Security groups of the functions in the VPC (with subnet_ids)."
  type        = list(string)
  default     = []
}

variable "python" {
  description = "Python that runs scripts/build_lambda.py during apply."
  type        = string
  default     = "python3"
}

variable "freshness_hours" {
  description = "Alert once when no execution has succeeded for this many hours (an execution succeeds only once nothing is left pending), and again when one succeeds."
  type        = number
  default     = 2
  validation {
    condition     = var.freshness_hours >= 1 && var.freshness_hours <= 24
    error_message = "freshness_hours must be from 1 to 24."
  }
}

variable "source_name" {
  description = "The source the extract configuration is for: it is uploaded to s3://<artifacts bucket>/config/<source_name>/pipeline.yaml."
  type        = string
  default     = "totesys"
}

variable "glue_timeout_minutes" {
  description = "Time limit of one Glue job run (a glue table's extract), in minutes."
  type        = number
  default     = 120
}

variable "glue_stages_settings" {
  description = "More settings of the Glue job that transforms and loads on Spark, as the functions' environment variables are named, e.g. { TOTES_TRANSFORM_MAX_ROWS = \"5000000\" } (the rows of one round); passed to the job as --NAME arguments."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for name in keys(var.glue_stages_settings) : can(regex("^TOTES_[A-Z0-9_]+$", name))])
    error_message = "glue_stages_settings: every name is a TOTES_ setting, e.g. TOTES_TRANSFORM_MAX_ROWS."
  }
}

variable "warehouse_schema" {
  description = "The PostgreSQL schema of the warehouse's star schema (TOTES_WAREHOUSE_SCHEMA of load, pending and reconcile); the bookkeeping stays in schema totes."
  type        = string
  default     = "public"
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.warehouse_schema))
    error_message = "warehouse_schema must be a lower-case identifier: letters, digits and _, at most 63 characters."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the metrics the functions publish (TOTES_METRICS_NAMESPACE) and that the dashboard and alarms read."
  type        = string
  default     = "totes"
  validation {
    condition     = can(regex("^[A-Za-z0-9._/#:-]{1,255}$", var.metrics_namespace))
    error_message = "metrics_namespace must be 1 to 255 letters, digits or . _ / # : -."
  }
}

variable "alarm_period_seconds" {
  description = "Period of the dashboard's graphs and of the lag, quarantine, reconciliation and WAL alarms, in seconds: at least the schedule's interval, so that each period holds an execution."
  type        = number
  default     = 900
  validation {
    condition     = var.alarm_period_seconds >= 60 && var.alarm_period_seconds % 60 == 0
    error_message = "alarm_period_seconds must be a multiple of 60, at least 60."
  }
}

variable "warehouse_tables" {
  description = "The warehouse's tables (the star schema of src/contracts/star_schema.py; a test keeps them equal): the dashboard's and the reconciliation alarms' tables."
  type        = list(string)
  default = ["dim_date", "dim_staff", "dim_location", "dim_design", "dim_currency", "dim_counterparty",
  "dim_payment_type", "dim_transaction", "fact_sales_order", "fact_purchase_order", "fact_payment"]
}
