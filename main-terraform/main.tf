data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  prefix = "${var.project}-${var.environment}"
  repo   = abspath("${path.module}/..")
  # Names and ARNs published by immutable-terraform: not secrets, though the provider marks
  # every SSM value sensitive.
  imported = {
    for name in ["ingest_bucket", "processed_bucket", "artifacts_bucket", "data_key_arn",
      "source_secret_arn", "warehouse_secret_arn", "alert_topic_arn", "ledger_table",
    "ledger_table_arn"] :
    name => nonsensitive(data.aws_ssm_parameter.imported[name].value)
  }
  # The states (docs/aws.md): handler, what each reads and writes.
  functions = {
    plan      = { handler = "totes.ingest.handler.plan_handler" }
    ingest    = { handler = "totes.ingest.handler.ingest_handler" }
    status    = { handler = "totes.ingest.handler.status_handler" }
    pending   = { handler = "totes.load.handler.pending_handler" }
    transform = { handler = "totes.transform.handler.handler" }
    load      = { handler = "totes.load.handler.handler" }
    reconcile = { handler = "totes.reconcile.handler.handler" }
    alert     = { handler = "totes.notify.handler.handler" }
  }
  ledger     = "dynamodb://${local.imported.ledger_table}"
  config_key = "config/${var.source_name}/pipeline.yaml"
  config_uri = "s3://${local.imported.artifacts_bucket}/${local.config_key}"
  environment = {
    plan = {
      TOTES_SOURCE_SECRET = local.imported.source_secret_arn
      TOTES_CONFIG        = local.config_uri
      TOTES_LAKE          = "s3://${local.imported.ingest_bucket}"
    }
    ingest = {
      TOTES_SOURCE_SECRET = local.imported.source_secret_arn
      TOTES_LAKE          = "s3://${local.imported.ingest_bucket}"
      TOTES_LEDGER        = local.ledger
    }
    # status also measures the table's lag (LagSeconds): the source's newest watermark and
    # the lake's high watermark.
    status = {
      TOTES_LEDGER        = local.ledger
      TOTES_SOURCE_SECRET = local.imported.source_secret_arn
      TOTES_LAKE          = "s3://${local.imported.ingest_bucket}"
    }
    # pending and load read the pipeline file for the raw layer's tables (docs/raw-layer.md).
    pending = {
      TOTES_CONFIG           = local.config_uri
      TOTES_LAKE             = "s3://${local.imported.ingest_bucket}"
      TOTES_PROCESSED        = "s3://${local.imported.processed_bucket}"
      TOTES_WAREHOUSE_SECRET = local.imported.warehouse_secret_arn
      TOTES_WAREHOUSE_SCHEMA = var.warehouse_schema
    }
    alert = {}
    transform = {
      TOTES_LAKE      = "s3://${local.imported.ingest_bucket}"
      TOTES_PROCESSED = "s3://${local.imported.processed_bucket}"
      TOTES_LEDGER    = local.ledger
    }
    load = {
      TOTES_CONFIG           = local.config_uri
      TOTES_LAKE             = "s3://${local.imported.ingest_bucket}"
      TOTES_PROCESSED        = "s3://${local.imported.processed_bucket}"
      TOTES_WAREHOUSE_SECRET = local.imported.warehouse_secret_arn
      TOTES_WAREHOUSE_SCHEMA = var.warehouse_schema
      TOTES_LEDGER           = local.ledger
    }
    # Reconcile reads both databases (streamed, compared in memory), no storage.
    reconcile = {
      TOTES_SOURCE_SECRET    = local.imported.source_secret_arn
      TOTES_WAREHOUSE_SECRET = local.imported.warehouse_secret_arn
      TOTES_WAREHOUSE_SCHEMA = var.warehouse_schema
    }
  }
}

data "aws_ssm_parameter" "imported" {
  for_each = toset(["ingest_bucket", "processed_bucket", "artifacts_bucket", "data_key_arn",
    "source_secret_arn", "warehouse_secret_arn", "alert_topic_arn", "ledger_table",
  "ledger_table_arn"])
  name = "/${var.project}/${var.environment}/${each.key}"
}

# ---- Build: the layer and the code package, rebuilt when their inputs change -------------
locals {
  # The configuration is not part of the code: it is read from S3 (aws_s3_object.config).
  code_hash = sha256(join("", [
    for f in sort(fileset("${local.repo}/src", "**/*.{py,sql}")) : filesha256("${local.repo}/src/${f}")
  ]))
  # The Glue job's wheel and entry script: the same code, and the build script.
  glue_hash = sha256(join("", [local.code_hash, filesha256("${local.repo}/scripts/build_lambda.py"),
  filesha256("${local.repo}/pyproject.toml")]))
  layer_hash = sha256(join("", [
    filesha256("${local.repo}/requirements.txt"),
    filesha256("${local.repo}/scripts/build_lambda.py"),
  ]))
}

# One build per artifact: `python scripts/build_lambda.py layer|package|glue`, rerun when its
# inputs change; the output (the inputs' hash) names the uploaded object.
resource "terraform_data" "build" {
  for_each         = { layer = local.layer_hash, package = local.code_hash, glue = local.glue_hash }
  triggers_replace = each.value
  input            = each.value
  provisioner "local-exec" {
    command     = "${var.python} scripts/build_lambda.py ${each.key}"
    working_dir = local.repo
  }
}

resource "aws_s3_object" "layer" {
  bucket      = local.imported.artifacts_bucket
  key         = "lambda/layer-${terraform_data.build["layer"].output}.zip"
  source      = "${local.repo}/build/layer.zip"
  source_hash = terraform_data.build["layer"].output
}

resource "aws_s3_object" "package" {
  bucket      = local.imported.artifacts_bucket
  key         = "lambda/code-${terraform_data.build["package"].output}.zip"
  source      = "${local.repo}/build/code.zip"
  source_hash = terraform_data.build["package"].output
}

# The extract configuration, read by plan at every execution: change a table's settings by
# uploading the file again (make upload-config, or this apply), with no code deployment.
resource "aws_s3_object" "config" {
  bucket       = local.imported.artifacts_bucket
  key          = local.config_key
  source       = "${local.repo}/config/pipeline.yaml"
  source_hash  = filemd5("${local.repo}/config/pipeline.yaml")
  content_type = "application/yaml"
}

resource "aws_lambda_layer_version" "dependencies" {
  layer_name               = "${local.prefix}-dependencies"
  description              = "pyarrow, pg8000, pgpq, PyMySQL, pydantic, PyYAML, pycountry, aws-lambda-powertools (trimmed; see scripts/build_lambda.py)"
  s3_bucket                = aws_s3_object.layer.bucket
  s3_key                   = aws_s3_object.layer.key
  compatible_runtimes      = ["python3.12"]
  compatible_architectures = ["x86_64"]
  source_code_hash         = terraform_data.build["layer"].output
}

# ---- Functions ----------------------------------------------------------------------------
resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_158:Logs hold no row data, only counts, keys and errors; the account's default CloudWatch encryption applies.
  for_each          = local.functions
  name              = "/aws/lambda/${local.prefix}-${each.key}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "stage" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by Step Functions, which retries and alerts; a DLQ would never receive anything.
  #checkov:skip=CKV_AWS_173:The variables hold bucket names and secret ARNs, no secret values.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile per organisation; the package is built and uploaded by this layer.
  #checkov:skip=CKV_AWS_117:The VPC is optional: set subnet_ids when the databases are only reachable inside one.
  for_each         = local.functions
  function_name    = "${local.prefix}-${each.key}"
  role             = aws_iam_role.function[each.key].arn
  handler          = each.value.handler
  runtime          = "python3.12"
  architectures    = ["x86_64"]
  s3_bucket        = aws_s3_object.package.bucket
  s3_key           = aws_s3_object.package.key
  source_code_hash = terraform_data.build["package"].output
  layers           = [aws_lambda_layer_version.dependencies.arn]
  memory_size      = var.lambda_memory_mb[each.key]
  timeout          = var.lambda_timeout_seconds[each.key]
  ephemeral_storage {
    size = var.lambda_ephemeral_storage_mb[each.key]
  }
  reserved_concurrent_executions = each.key == "ingest" ? var.ingest_max_concurrency + 1 : 2
  environment {
    variables = merge(local.environment[each.key],
    { TOTES_METRICS_NAMESPACE = var.metrics_namespace }, var.extra_environment)
  }
  logging_config {
    log_format            = "JSON"
    application_log_level = "INFO"
    system_log_level      = "WARN"
    log_group             = aws_cloudwatch_log_group.function[each.key].name
  }
  tracing_config {
    mode = "Active"
  }
  dynamic "vpc_config" {
    for_each = length(var.subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }
}
