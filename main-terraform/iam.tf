# One role per function, allowed exactly what that stage touches (docs/architecture.md):
#   plan: the source secret, the configuration object, list/read the lake (a partitioned
#   table's watermark); ingest: the source secret, list/read/add lake objects; status: the
#   ledger, the source secret and list/read the lake (a table's lag); pending: list/read the
#   lake and the processed area, the warehouse secret; transform: read the lake, list/read/add processed objects; load: read processed, the
#   warehouse secret; reconcile: both secrets, no bucket (it reads the two databases only);
#   alert: nothing. Ingest, status, transform and load write their runs and leases in the
#   ledger table. Nobody may delete or overwrite-by-delete an object. The data key: decrypt
#   (the secrets, the objects) and generate data keys (objects written) for the stages that
#   touch the buckets; reconcile only decrypts its secrets; alert never uses it.
data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

locals {
  bucket_arn = {
    ingest    = "arn:${data.aws_partition.current.partition}:s3:::${local.imported.ingest_bucket}"
    processed = "arn:${data.aws_partition.current.partition}:s3:::${local.imported.processed_bucket}"
  }
  data_key = ["kms:Decrypt", "kms:GenerateDataKey"]
  # What src/utils/ledger.py calls: records (put, query, scan) and leases (conditional put,
  # get, conditional delete).
  ledger_actions = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem",
  "dynamodb:Query", "dynamodb:Scan"]
  access = {
    plan      = { secrets = [local.imported.source_secret_arn], read = ["ingest"], write = [], ledger = false, config = true, kms = local.data_key }
    ingest    = { secrets = [local.imported.source_secret_arn], read = ["ingest"], write = ["ingest"], ledger = true, config = false, kms = local.data_key }
    status    = { secrets = [local.imported.source_secret_arn], read = ["ingest"], write = [], ledger = true, config = false, kms = local.data_key }
    pending   = { secrets = [local.imported.warehouse_secret_arn], read = ["ingest", "processed"], write = [], ledger = false, config = true, kms = local.data_key }
    transform = { secrets = [], read = ["ingest", "processed"], write = ["processed"], ledger = true, config = false, kms = local.data_key }
    load      = { secrets = [local.imported.warehouse_secret_arn], read = ["ingest", "processed"], write = [], ledger = true, config = true, kms = local.data_key }
    reconcile = { secrets = [local.imported.source_secret_arn, local.imported.warehouse_secret_arn], read = [], write = [], ledger = false, config = false, kms = ["kms:Decrypt"] }
    alert     = { secrets = [], read = [], write = [], ledger = false, config = false, kms = [] }
  }
}

data "aws_iam_policy_document" "function" {
  for_each = local.functions
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
  }
  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
  dynamic "statement" {
    for_each = length(local.access[each.key].secrets) > 0 ? [1] : []
    content {
      sid       = "ReadDatabaseSecret"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.access[each.key].secrets
    }
  }
  dynamic "statement" {
    for_each = length(local.access[each.key].read) > 0 ? [1] : []
    content {
      sid       = "ListBuckets"
      actions   = ["s3:ListBucket"]
      resources = [for b in local.access[each.key].read : local.bucket_arn[b]]
    }
  }
  dynamic "statement" {
    for_each = length(local.access[each.key].read) > 0 ? [1] : []
    content {
      sid       = "ReadObjects"
      actions   = ["s3:GetObject"]
      resources = [for b in local.access[each.key].read : "${local.bucket_arn[b]}/*"]
    }
  }
  dynamic "statement" {
    for_each = length(local.access[each.key].write) > 0 ? [1] : []
    content {
      sid       = "AddObjects"
      actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
      resources = [for b in local.access[each.key].write : "${local.bucket_arn[b]}/*"]
    }
  }
  dynamic "statement" {
    for_each = local.access[each.key].ledger ? [1] : []
    content {
      sid       = "RecordRunsAndLeases"
      actions   = local.ledger_actions
      resources = [local.imported.ledger_table_arn]
    }
  }
  dynamic "statement" {
    for_each = local.access[each.key].config ? [1] : []
    content {
      sid       = "ReadConfiguration"
      actions   = ["s3:GetObject"]
      resources = ["arn:${data.aws_partition.current.partition}:s3:::${local.imported.artifacts_bucket}/${local.config_key}"]
    }
  }
  dynamic "statement" {
    for_each = length(local.access[each.key].kms) > 0 ? [1] : []
    content {
      sid       = "UseDataKey"
      actions   = local.access[each.key].kms
      resources = [local.imported.data_key_arn]
    }
  }
  dynamic "statement" {
    for_each = length(var.subnet_ids) > 0 ? [1] : []
    content {
      sid = "AttachToVpc"
      actions = ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
      "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name               = "${local.prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "${local.prefix}-${each.key}"
  role     = aws_iam_role.function[each.key].id
  policy   = data.aws_iam_policy_document.function[each.key].json
}
