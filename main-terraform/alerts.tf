# The state machine sends the alerts (one readable alert per failed execution, from its Alert
# state; one per execution that set rows aside). What it cannot see goes to the same topic:
# an execution that TIMED_OUT or was ABORTED (no state ran to alert), and no successful
# execution for var.freshness_hours (the freshness alarm: once when it goes stale, once when
# it recovers). A Lambda killed by its time limit reaches the state's Catch, so its alert
# comes from the state machine, not from a log alarm that would double it.
resource "aws_cloudwatch_event_rule" "execution_stopped" {
  name        = "${local.prefix}-execution-stopped"
  description = "An execution of the totes pipeline timed out or was aborted: no state could alert"
  event_pattern = jsonencode({
    source        = ["aws.states"]
    "detail-type" = ["Step Functions Execution Status Change"]
    detail = {
      status          = ["TIMED_OUT", "ABORTED"]
      stateMachineArn = [aws_sfn_state_machine.pipeline.arn]
    }
  })
}

resource "aws_cloudwatch_event_target" "execution_stopped" {
  rule = aws_cloudwatch_event_rule.execution_stopped.name
  arn  = local.imported.alert_topic_arn
}

resource "aws_cloudwatch_metric_alarm" "freshness" {
  alarm_name          = "${local.prefix}-freshness"
  alarm_description   = "No execution of the totes pipeline has succeeded for ${var.freshness_hours} h: the warehouse is not being brought up to date. Look at the last executions and at totes status."
  namespace           = "AWS/States"
  metric_name         = "ExecutionsSucceeded"
  dimensions          = { StateMachineArn = aws_sfn_state_machine.pipeline.arn }
  statistic           = "Sum"
  period              = 3600
  evaluation_periods  = var.freshness_hours
  datapoints_to_alarm = var.freshness_hours
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = [local.imported.alert_topic_arn]
  ok_actions          = [local.imported.alert_topic_arn]
}
