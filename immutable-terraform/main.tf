data "aws_caller_identity" "current" {}

locals {
  prefix = "${var.project}-${var.environment}"
  buckets = {
    ingest    = "${local.prefix}-ingest-${data.aws_caller_identity.current.account_id}"
    processed = "${local.prefix}-processed-${data.aws_caller_identity.current.account_id}"
    artifacts = "${local.prefix}-artifacts-${data.aws_caller_identity.current.account_id}"
  }
}

# ---- Encryption key for the buckets and the alert topic ---------------------------------
data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource is this key only; the account-root statement is AWS's default key policy.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource is this key only.
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource is this key only; administration stays with the account.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "AlarmsAndEventsPublishToTheAlertTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com", "events.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "data" {
  description         = "${local.prefix}: lake, processed and artifact buckets, alert topic"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${local.prefix}-data"
  target_key_id = aws_kms_key.data.key_id
}

# ---- Buckets ----------------------------------------------------------------------------
# The lake is append-only: Object Lock keeps every version of every batch, and no principal
# may delete one. The pipeline's roles can only add objects (main-terraform/iam.tf).
module "ingest_bucket" {
  source           = "./modules/bucket"
  name             = local.buckets.ingest
  kms_key_arn      = aws_kms_key.data.arn
  object_lock_days = var.ingest_object_lock_days
  deny_deletes     = !var.force_destroy
  force_destroy    = var.force_destroy
}

module "processed_bucket" {
  source        = "./modules/bucket"
  name          = local.buckets.processed
  kms_key_arn   = aws_kms_key.data.arn
  force_destroy = var.force_destroy
}

module "artifacts_bucket" {
  source        = "./modules/bucket"
  name          = local.buckets.artifacts
  kms_key_arn   = aws_kms_key.data.arn
  force_destroy = var.force_destroy
}

# ---- Secrets: containers only; values are put by `make put-secrets` ----------------------
resource "aws_secretsmanager_secret" "this" {
  #checkov:skip=CKV2_AWS_57:Database credentials are owned by the ToteSys and warehouse teams, who rotate them; the pipeline reads the current value on every run.
  for_each = {
    source    = "Source (ToteSys) database connection JSON: host, port, username, password, dbname"
    warehouse = "Warehouse database connection JSON: host, port, username, password, dbname"
    alerts    = "E-mail address that receives failure alerts"
  }
  name                    = "${local.prefix}/${each.key}"
  description             = each.value
  kms_key_id              = aws_kms_key.data.arn
  recovery_window_in_days = var.secret_recovery_window_days
}

# ---- Alert topic (here, not in main-terraform: an e-mail subscription confirmed by a person
# must outlive deployments). `make put-secrets` subscribes the address from the alerts secret.
resource "aws_sns_topic" "alerts" {
  name              = "${local.prefix}-alerts"
  kms_master_key_id = aws_kms_key.data.arn
}

data "aws_iam_policy_document" "alerts" {
  statement {
    sid       = "AlarmsAndEventsPublish"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alerts.arn]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com", "events.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "alerts" {
  arn    = aws_sns_topic.alerts.arn
  policy = data.aws_iam_policy_document.alerts.json
}

# ---- The run ledger ----------------------------------------------------------------------
# One record per table per stage run, and the leases that keep runs off the same table
# (src/utils/ledger.py: pk = run#<stage>#<table> | lease#<name>, sk = <started>#<run> | lease).
# It outlives deployments: the history of runs is kept across them.
resource "aws_dynamodb_table" "ledger" {
  name         = "${local.prefix}-ledger"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.data.arn
  }
  deletion_protection_enabled = var.ledger_deletion_protection
}

# ---- Published for main-terraform ---------------------------------------------------------
locals {
  parameters = {
    "ingest_bucket"        = module.ingest_bucket.id
    "processed_bucket"     = module.processed_bucket.id
    "artifacts_bucket"     = module.artifacts_bucket.id
    "data_key_arn"         = aws_kms_key.data.arn
    "source_secret_arn"    = aws_secretsmanager_secret.this["source"].arn
    "warehouse_secret_arn" = aws_secretsmanager_secret.this["warehouse"].arn
    "alerts_secret_arn"    = aws_secretsmanager_secret.this["alerts"].arn
    "alert_topic_arn"      = aws_sns_topic.alerts.arn
    "ledger_table"         = aws_dynamodb_table.ledger.name
    "ledger_table_arn"     = aws_dynamodb_table.ledger.arn
  }
}

resource "aws_ssm_parameter" "published" {
  #checkov:skip=CKV2_AWS_34:These are resource names and ARNs, not secrets: String is right.
  for_each = local.parameters
  name     = "/${var.project}/${var.environment}/${each.key}"
  type     = "String"
  value    = each.value
}
