output "state_machine_arn" {
  description = "Start an execution: aws stepfunctions start-execution --state-machine-arn <this>"
  value       = aws_sfn_state_machine.pipeline.arn
}

output "function_names" {
  description = "The stage functions."
  value       = { for k, f in aws_lambda_function.stage : k => f.function_name }
}

output "definition" {
  description = "The rendered state machine definition (checked by asl-validator)."
  value       = local.definition
}

output "glue_stages_job_name" {
  description = "The Glue job that transforms and loads on Spark the facts of the tables whose job_type is glue."
  value       = aws_glue_job.stages.name
}

output "glue_job_name" {
  description = "The Glue job of the tables whose job_type is glue."
  value       = aws_glue_job.extract.name
}
