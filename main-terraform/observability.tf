# Observability (docs/observability.md): the dashboard of the metrics the functions publish in
# CloudWatch's embedded metric format (defined once in src/contracts/metrics.py), and alarms on
# them to the alert topic, each saying what to do. A test (tests/test_observability.py) reads
# this file: every metric named here must be defined there, with the same dimensions.
locals {
  # The pipeline configuration (uploaded by aws_s3_object.config): its tables, and each
  # table's freshness target (freshness_target_seconds, else the defaults', else 3600 s).
  pipeline        = yamldecode(file("${local.repo}/config/pipeline.yaml"))
  source_tables   = keys(local.pipeline.tables)
  table_defaults  = try(local.pipeline.defaults, null) == null ? {} : local.pipeline.defaults
  default_target  = try(local.table_defaults.freshness_target_seconds, 3600)
  default_extract = try(local.table_defaults.extract_type, "incremental")
  # A full table that names no watermark column has no lag (src/utils/freshness.py).
  freshness_targets = {
    for table, own in local.pipeline.tables : table => try(own.freshness_target_seconds, local.default_target)
    if try(own.extract_type, local.default_extract) != "full" || try(own.watermark_column, null) != null
  }
  retained_wal_limit = try(local.pipeline.cdc.retained_wal_alert_bytes, 1073741824)
  fact_tables        = [for t in var.warehouse_tables : t if startswith(t, "fact_")]
  # Reconciliation compares every warehouse table but dim_date (generated, no source table).
  reconciled_tables = [for t in var.warehouse_tables : t if t != "dim_date"]
  stages            = keys(local.functions)

  # The dashboard's widgets: each shows one metric of src/contracts/metrics.py (dimension:
  # the tables or stages it is drawn for) or of AWS/States. Rows: 6 units high, 2 per row.
  widgets = [
    { title = "Lag per table (seconds behind the source)", metric = "LagSeconds", dimension = "table", over = "source_tables", stat = "Maximum" },
    { title = "Rows extracted per run", metric = "RowsExtracted", dimension = "table", over = "source_tables", stat = "Sum" },
    { title = "Rows inserted into the warehouse per run", metric = "RowsInserted", dimension = "table", over = "warehouse_tables", stat = "Sum" },
    { title = "Rows quarantined (broke a rule), per source table", metric = "RowsQuarantined", dimension = "table", over = "source_tables", stat = "Sum" },
    { title = "Fact rows held (dimension row missing)", metric = "RowsHeld", dimension = "table", over = "fact_tables", stat = "Sum" },
    { title = "Stage durations (seconds, longest invocation)", metric = "StageSeconds", dimension = "stage", over = "stages", stat = "Maximum" },
    { title = "Stage errors", metric = "StageErrors", dimension = "stage", over = "stages", stat = "Sum" },
    { title = "Stage retries", metric = "StageRetries", dimension = "stage", over = "stages", stat = "Sum" },
    { title = "Retained WAL of the replication slot (bytes)", metric = "RetainedWalBytes", dimension = "stage", over = "capture", stat = "Maximum" },
    { title = "Reconciliation differences", metric = "ReconcileDifferences", dimension = "table", over = "reconciled_tables", stat = "Maximum" },
    { title = "Lake bytes written per run", metric = "LakeBytesWritten", dimension = "table", over = "source_tables", stat = "Sum" },
    { title = "Versions skipped (already in the warehouse)", metric = "VersionsSkipped", dimension = "table", over = "warehouse_tables", stat = "Sum" },
  ]
  widget_values = {
    source_tables     = local.source_tables
    warehouse_tables  = var.warehouse_tables
    fact_tables       = local.fact_tables
    reconciled_tables = local.reconciled_tables
    stages            = local.stages
    capture           = ["capture"]
  }
  executions_widget = {
    type = "metric", x = 0, y = 6 * ceil(length(local.widgets) / 2), width = 24, height = 6
    properties = {
      title  = "Executions of the state machine"
      region = var.region
      view   = "timeSeries"
      period = var.alarm_period_seconds
      stat   = "Sum"
      metrics = [for name in ["ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"] :
      ["AWS/States", name, "StateMachineArn", aws_sfn_state_machine.pipeline.arn]]
    }
  }
  dashboard_body = jsonencode({
    widgets = concat([
      for i, w in local.widgets : {
        type = "metric", x = 12 * (i % 2), y = 6 * floor(i / 2), width = 12, height = 6
        properties = {
          title   = w.title
          region  = var.region
          view    = "timeSeries"
          period  = var.alarm_period_seconds
          stat    = w.stat
          metrics = [for value in local.widget_values[w.over] : [var.metrics_namespace, w.metric, w.dimension, value]]
        }
      }
    ], [local.executions_widget])
  })
}

resource "aws_cloudwatch_dashboard" "pipeline" {
  dashboard_name = "${local.prefix}-pipeline"
  dashboard_body = local.dashboard_body
}

# A table's lag beyond its freshness target: measured after every Map item (succeeded or
# failed). No value in a period (no execution ran, or the source could not be read: the
# status step logs why) keeps the alarm's state; the freshness alarm covers a stopped pipeline.
resource "aws_cloudwatch_metric_alarm" "lag" {
  for_each            = local.freshness_targets
  alarm_name          = "${local.prefix}-lag-${each.key}"
  alarm_description   = "totes: ${each.key} in the lake is more than ${each.value} s behind the source (LagSeconds; freshness_target_seconds in config/pipeline.yaml). Run `totes status` for its last success and last failure; in Logs Insights list its last failures (docs/observability.md); a failing ingest names its error in the alert it sent; an ingest that succeeds but stays behind is held back by an open source transaction (status shows held_back_by)."
  namespace           = var.metrics_namespace
  metric_name         = "LagSeconds"
  dimensions          = { table = each.key }
  statistic           = "Maximum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = each.value
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [local.imported.alert_topic_arn]
  ok_actions          = [local.imported.alert_topic_arn]
}

resource "aws_cloudwatch_metric_alarm" "quarantined" {
  for_each            = toset(local.source_tables)
  alarm_name          = "${local.prefix}-quarantined-${each.key}"
  alarm_description   = "totes: transform quarantined rows of ${each.key} (they broke a rule of the star schema; the rest of the batch landed). List them with `totes quarantine`, fix them in the source (the next run takes them), or release them as docs/quarantine.md says."
  namespace           = var.metrics_namespace
  metric_name         = "RowsQuarantined"
  dimensions          = { table = each.key }
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.imported.alert_topic_arn]
}

resource "aws_cloudwatch_metric_alarm" "differences" {
  for_each            = toset(local.reconciled_tables)
  alarm_name          = "${local.prefix}-differences-${each.key}"
  alarm_description   = "totes: reconciliation found ${each.key} in the warehouse differing from the source. Run `totes reconcile` to list its rows and columns; a value changed by hand in the warehouse or a rule changed in the code are the usual causes (docs/runbook.md)."
  namespace           = var.metrics_namespace
  metric_name         = "ReconcileDifferences"
  dimensions          = { table = each.key }
  statistic           = "Maximum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.imported.alert_topic_arn]
  ok_actions          = [local.imported.alert_topic_arn]
}

resource "aws_cloudwatch_metric_alarm" "retained_wal" {
  alarm_name          = "${local.prefix}-retained-wal"
  alarm_description   = "totes: the replication slot retains more than ${local.retained_wal_limit} bytes of WAL (cdc.retained_wal_alert_bytes): the source's disk fills while it grows. Check that executions run and the Capture item succeeds (`totes status` shows the slot); a slot nobody reads any more must be dropped (docs/cdc.md)."
  namespace           = var.metrics_namespace
  metric_name         = "RetainedWalBytes"
  dimensions          = { stage = "capture" }
  statistic           = "Maximum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = local.retained_wal_limit
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.imported.alert_topic_arn]
  ok_actions          = [local.imported.alert_topic_arn]
}
