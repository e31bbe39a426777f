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

variable "warehouse_schema" {
  description = "The PostgreSQL schema of the warehouse's star schema (TOTES_WAREHOUSE_SCHEMA of load, pending and reconcile); the bookkeeping stays in schema totes."
  type        = string
  default     = "public"
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.warehouse_schema))
    error_message = "warehouse_schema must be a lower-case identifier: letters, digits and _, at most 63 characters."
  }
}
