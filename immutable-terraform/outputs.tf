output "buckets" {
  description = "Bucket names: ingest (the lake), processed, artifacts."
  value = {
    ingest    = module.ingest_bucket.id
    processed = module.processed_bucket.id
    artifacts = module.artifacts_bucket.id
  }
}

output "secret_arns" {
  description = "Secrets whose values `make put-secrets` puts: source, warehouse, alerts."
  value       = { for k, s in aws_secretsmanager_secret.this : k => s.arn }
}

output "alert_topic_arn" {
  description = "SNS topic of failure alerts."
  value       = aws_sns_topic.alerts.arn
}

output "parameter_prefix" {
  description = "SSM path under which main-terraform finds these names and ARNs."
  value       = "/${var.project}/${var.environment}/"
}
