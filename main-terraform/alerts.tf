# ERROR or CRITICAL log lines of any function → an alarm → the alert topic; and any execution
# that FAILED, TIMED_OUT or was ABORTED → the same topic.
resource "aws_cloudwatch_log_metric_filter" "errors" {
  for_each       = local.functions
  name           = "${local.prefix}-${each.key}-errors"
  log_group_name = aws_cloudwatch_log_group.function[each.key].name
  pattern        = "{ ($.level = \"ERROR\") || ($.level = \"CRITICAL\") }"
  metric_transformation {
    name          = "${each.key}-errors"
    namespace     = "${var.project}/${var.environment}"
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  for_each            = local.functions
  alarm_name          = "${local.prefix}-${each.key}-errors"
  alarm_description   = "The ${each.key} function logged an ERROR or CRITICAL line."
  namespace           = "${var.project}/${var.environment}"
  metric_name         = "${each.key}-errors"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [local.imported.alert_topic_arn]
}

resource "aws_cloudwatch_event_rule" "execution_failed" {
  name        = "${local.prefix}-execution-failed"
  description = "An execution of the totes pipeline did not succeed"
  event_pattern = jsonencode({
    source        = ["aws.states"]
    "detail-type" = ["Step Functions Execution Status Change"]
    detail = {
      status          = ["FAILED", "TIMED_OUT", "ABORTED"]
      stateMachineArn = [aws_sfn_state_machine.pipeline.arn]
    }
  })
}

resource "aws_cloudwatch_event_target" "execution_failed" {
  rule = aws_cloudwatch_event_rule.execution_failed.name
  arn  = local.imported.alert_topic_arn
}
