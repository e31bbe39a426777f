locals {
  # Retry only what a retry can fix (retry_transient.json): Lambda service errors and
  # throttling, and the project's own transient errors (totes.contracts.errors.TransientError
  # and every subclass, by name: DatabaseUnavailable, StorageUnavailable, LeaseLost; a test
  # checks the list against the classes), with backoff and full jitter.
  definition = templatefile("${path.module}/state_machine.asl.json", {
    plan_arn        = aws_lambda_function.stage["plan"].arn
    ingest_arn      = aws_lambda_function.stage["ingest"].arn
    status_arn      = aws_lambda_function.stage["status"].arn
    pending_arn     = aws_lambda_function.stage["pending"].arn
    transform_arn   = aws_lambda_function.stage["transform"].arn
    load_arn        = aws_lambda_function.stage["load"].arn
    reconcile_arn   = aws_lambda_function.stage["reconcile"].arn
    alert_arn       = aws_lambda_function.stage["alert"].arn
    alert_topic_arn = local.imported.alert_topic_arn
    glue_job_name   = aws_glue_job.extract.name
    glue_stages_job = aws_glue_job.stages.name
    environment     = var.environment
    region          = var.region
    max_concurrency = var.ingest_max_concurrency
    retry           = file("${path.module}/retry_transient.json")
  })
}

data "aws_iam_policy_document" "assume_states" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "state_machine" {
  statement {
    sid       = "InvokeStages"
    actions   = ["lambda:InvokeFunction"]
    resources = [for f in aws_lambda_function.stage : f.arn]
  }
  statement {
    # glue:startJobRun.sync: start the jobs' runs, poll them, stop them when the execution
    # stops; those two jobs only.
    sid       = "RunGlueJob"
    actions   = ["glue:StartJobRun", "glue:GetJobRun", "glue:GetJobRuns", "glue:BatchStopJobRun"]
    resources = [aws_glue_job.extract.arn, aws_glue_job.stages.arn]
  }
  statement {
    sid       = "Alert"
    actions   = ["sns:Publish"]
    resources = [local.imported.alert_topic_arn]
  }
  statement {
    sid       = "EncryptAlert"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.imported.data_key_arn]
  }
  statement {
    sid = "DeliverLogs"
    actions = ["logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
      "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"]
    resources = ["*"]
  }
  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"]
    resources = ["*"]
  }
}

resource "aws_iam_role" "state_machine" {
  name               = "${local.prefix}-state-machine"
  assume_role_policy = data.aws_iam_policy_document.assume_states.json
}

resource "aws_iam_role_policy" "state_machine" {
  name   = "${local.prefix}-state-machine"
  role   = aws_iam_role.state_machine.id
  policy = data.aws_iam_policy_document.state_machine.json
}

resource "aws_cloudwatch_log_group" "state_machine" {
  #checkov:skip=CKV_AWS_158:Execution logs hold keys and counts, no row data; the account's default encryption applies.
  name              = "/aws/states/${local.prefix}-pipeline"
  retention_in_days = var.log_retention_days
}

resource "aws_sfn_state_machine" "pipeline" {
  name       = "${local.prefix}-pipeline"
  role_arn   = aws_iam_role.state_machine.arn
  definition = local.definition
  # Payloads are keys, row counts and watermarks, never rows or secrets: log them all.
  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.state_machine.arn}:*"
    include_execution_data = true
    level                  = "ALL"
  }
  tracing_configuration {
    enabled = true
  }
}

# ---- Schedule -------------------------------------------------------------------------------
data "aws_iam_policy_document" "assume_events" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "schedule" {
  statement {
    actions   = ["states:StartExecution"]
    resources = [aws_sfn_state_machine.pipeline.arn]
  }
}

resource "aws_iam_role" "schedule" {
  name               = "${local.prefix}-schedule"
  assume_role_policy = data.aws_iam_policy_document.assume_events.json
}

resource "aws_iam_role_policy" "schedule" {
  name   = "${local.prefix}-schedule"
  role   = aws_iam_role.schedule.id
  policy = data.aws_iam_policy_document.schedule.json
}

resource "aws_cloudwatch_event_rule" "schedule" {
  name                = "${local.prefix}-schedule"
  description         = "Starts the totes pipeline"
  schedule_expression = var.schedule_expression
  state               = var.schedule_enabled ? "ENABLED" : "DISABLED"
}

resource "aws_cloudwatch_event_target" "schedule" {
  rule     = aws_cloudwatch_event_rule.schedule.name
  arn      = aws_sfn_state_machine.pipeline.arn
  role_arn = aws_iam_role.schedule.arn
  input    = "{}"
}
