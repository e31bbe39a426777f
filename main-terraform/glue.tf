# ---- The Glue job: tables whose job_type is glue (docs/extract.md, "Job types") ------------
# One Spark job (Glue 5.0: Spark 3.5, Python 3.11) for every glue table; the state machine
# starts one run per table (glue:startJobRun.sync) with the table's payload (--payload) and its
# workers (worker_type, worker_no). The script is the entry of totes.ingest.glue_job; the code
# is the totes wheel, with the pinned runtime packages from requirements.txt (pyarrow pinned
# too, so the lake's Parquet is written by the same pyarrow as the Lambda path's; boto3 is
# Glue's own). Glue installs them with pip when a run starts: the job needs a route to PyPI.
locals {
  pins = {
    for line in split("\n", file("${local.repo}/requirements.txt")) :
    lower(regex("^([A-Za-z0-9_.-]+)==", line)[0]) => trimspace(line)
    if can(regex("^[A-Za-z0-9_.-]+==", line))
  }
  glue_packages = [for name in ["pyarrow", "pg8000", "pgpq", "pymysql", "python-dateutil",
  "pydantic", "pyyaml", "pycountry"] : local.pins[name]]
  version    = regex("(?m)^version = \"([^\"]+)\"", file("${local.repo}/pyproject.toml"))[0]
  wheel_name = "totes-${local.version}-py3-none-any.whl"
  glue_key   = "glue/${terraform_data.build["glue"].output}"
  glue_logs  = "/aws-glue/jobs/${local.prefix}-extract"
}

resource "aws_s3_object" "glue_wheel" {
  bucket      = local.imported.artifacts_bucket
  key         = "${local.glue_key}/${local.wheel_name}"
  source      = "${local.repo}/build/glue/${local.wheel_name}"
  source_hash = terraform_data.build["glue"].output
}

resource "aws_s3_object" "glue_script" {
  bucket      = local.imported.artifacts_bucket
  key         = "${local.glue_key}/totes_extract.py"
  source      = "${local.repo}/build/glue/totes_extract.py"
  source_hash = terraform_data.build["glue"].output
}

resource "aws_cloudwatch_log_group" "glue" {
  #checkov:skip=CKV_AWS_158:Job logs hold counts, keys and errors, no row data; the account's default CloudWatch encryption applies, as for the functions' logs.
  name              = local.glue_logs
  retention_in_days = var.log_retention_days
}

# Glue writes its own driver and executor logs under /aws-glue/jobs/ (output, error and the
# continuous log group named below): the role may write there and nowhere else.
data "aws_iam_policy_document" "assume_glue" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["glue.amazonaws.com"]
    }
  }
}

# The job does what the ingest function does, from the same entry of local.access (iam.tf):
# the source secret, list/read/add lake objects (never delete), its runs and leases in the
# ledger, the data key; plus read its own script and wheel.
data "aws_iam_policy_document" "glue" {
  statement {
    sid       = "ReadDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.access.ingest.secrets
  }
  statement {
    sid       = "ListLake"
    actions   = ["s3:ListBucket"]
    resources = [for b in local.access.ingest.read : local.bucket_arn[b]]
  }
  statement {
    sid       = "ReadLakeObjects"
    actions   = ["s3:GetObject"]
    resources = [for b in local.access.ingest.read : "${local.bucket_arn[b]}/*"]
  }
  statement {
    sid       = "AddLakeObjects"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [for b in local.access.ingest.write : "${local.bucket_arn[b]}/*"]
  }
  statement {
    sid       = "ReadOwnCode"
    actions   = ["s3:GetObject"]
    resources = ["arn:${data.aws_partition.current.partition}:s3:::${local.imported.artifacts_bucket}/glue/*"]
  }
  statement {
    sid       = "RecordRunsAndLeases"
    actions   = local.ledger_actions
    resources = [local.imported.ledger_table_arn]
  }
  statement {
    sid       = "UseDataKey"
    actions   = local.access.ingest.kms
    resources = [local.imported.data_key_arn]
  }
  statement {
    sid     = "WriteOwnLogs"
    actions = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [
      "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/aws-glue/jobs/*",
      "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/aws-glue/jobs/*:*",
    ]
  }
  statement {
    # Glue's job metrics (--enable-metrics) go to the Glue namespace only.
    sid       = "PutJobMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["Glue"]
    }
  }
  dynamic "statement" {
    for_each = length(var.subnet_ids) > 0 ? [1] : []
    content {
      # A Glue network connection: the job's network interfaces in the subnet.
      sid = "AttachToVpc"
      actions = ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
        "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
        "ec2:DescribeVpcEndpoints", "ec2:DescribeRouteTables", "ec2:DescribeVpcAttribute",
      "ec2:CreateTags", "ec2:DeleteTags"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role" "glue" {
  name               = "${local.prefix}-extract-job"
  assume_role_policy = data.aws_iam_policy_document.assume_glue.json
}

resource "aws_iam_role_policy" "glue" {
  name   = "${local.prefix}-extract-job"
  role   = aws_iam_role.glue.id
  policy = data.aws_iam_policy_document.glue.json
}

# When the databases are only reachable in a VPC (subnet_ids), the job runs in the first
# subnet, with the functions' security groups.
data "aws_subnet" "glue" {
  count = length(var.subnet_ids) > 0 ? 1 : 0
  id    = var.subnet_ids[0]
}

resource "aws_glue_connection" "network" {
  count           = length(var.subnet_ids) > 0 ? 1 : 0
  name            = "${local.prefix}-extract-network"
  connection_type = "NETWORK"
  physical_connection_requirements {
    availability_zone      = data.aws_subnet.glue[0].availability_zone
    subnet_id              = data.aws_subnet.glue[0].id
    security_group_id_list = var.security_group_ids
  }
}

resource "aws_glue_job" "extract" {
  #checkov:skip=CKV_AWS_195:A security configuration would only re-encrypt what the buckets' default SSE-KMS (the project's key) already encrypts, and would move the logs out of the log group kept here with its retention.
  name              = "${local.prefix}-extract"
  description       = "Extracts one table whose job_type is glue, on Spark (totes.ingest.glue_job); started by the state machine"
  role_arn          = aws_iam_role.glue.arn
  glue_version      = "5.0"
  worker_type       = "G.1X" # each run sets the table's worker_type and worker_no
  number_of_workers = 2
  max_retries       = 0 # a failed run is recorded and alerted; the next execution resumes
  timeout           = var.glue_timeout_minutes
  connections       = aws_glue_connection.network[*].name
  command {
    name            = "glueetl"
    python_version  = "3"
    script_location = "s3://${aws_s3_object.glue_script.bucket}/${aws_s3_object.glue_script.key}"
  }
  execution_property {
    # One run per glue table of an execution, plus an overlapping manual execution.
    max_concurrent_runs = var.ingest_max_concurrency + 1
  }
  default_arguments = {
    "--additional-python-modules"        = join(",", concat(["s3://${aws_s3_object.glue_wheel.bucket}/${aws_s3_object.glue_wheel.key}"], local.glue_packages))
    "--python-modules-installer-option"  = "--no-cache-dir"
    "--enable-continuous-cloudwatch-log" = "true"
    "--continuous-log-logGroup"          = aws_cloudwatch_log_group.glue.name
    "--enable-metrics"                   = "true"
    "--job-language"                     = "python"
    "--TOTES_LAKE"                       = "s3://${local.imported.ingest_bucket}"
    "--TOTES_SOURCE_SECRET"              = local.imported.source_secret_arn
    "--TOTES_LEDGER"                     = local.ledger
  }
}

# ---- The Glue job that transforms and loads on Spark (docs/aws.md, "Transform and load on
# Spark") ----------------------------------------------------------------------------------
# One run per execution, when Pending finds lake files of a fact source table whose job_type
# is glue to transform (its result names the tables and the workers): the facts of those
# tables are built and staged by Spark tasks, round after round until nothing is pending; the
# result is left in the processed area under _spark/results/, where the transform and load
# functions read it back for the state machine. Same wheel and packages as the extract job.
locals {
  glue_stages_logs = "/aws-glue/jobs/${local.prefix}-stages"
}

resource "aws_s3_object" "glue_stages_script" {
  bucket      = local.imported.artifacts_bucket
  key         = "${local.glue_key}/totes_stages.py"
  source      = "${local.repo}/build/glue/totes_stages.py"
  source_hash = terraform_data.build["glue"].output
}

resource "aws_cloudwatch_log_group" "glue_stages" {
  #checkov:skip=CKV_AWS_158:Job logs hold counts, keys and errors, no row data; the account's default CloudWatch encryption applies, as for the functions' logs.
  name              = local.glue_stages_logs
  retention_in_days = var.log_retention_days
}

# What the transform and load functions may do together (local.access, iam.tf): read the lake
# and the processed area, add processed objects, the warehouse secret and the configuration,
# runs and leases in the ledger, the data key; plus delete its own scratch objects under
# _spark/ of the processed area (the tasks' part files, once appended; a retried run's
# result), and read its own script and wheel.
data "aws_iam_policy_document" "glue_stages" {
  statement {
    sid       = "ReadWarehouseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [local.imported.warehouse_secret_arn]
  }
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn.ingest, local.bucket_arn.processed]
  }
  statement {
    sid     = "ReadObjects"
    actions = ["s3:GetObject"]
    resources = ["${local.bucket_arn.ingest}/*", "${local.bucket_arn.processed}/*",
      "arn:${data.aws_partition.current.partition}:s3:::${local.imported.artifacts_bucket}/${local.config_key}",
    "arn:${data.aws_partition.current.partition}:s3:::${local.imported.artifacts_bucket}/glue/*"]
  }
  statement {
    sid       = "AddProcessedObjects"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${local.bucket_arn.processed}/*"]
  }
  statement {
    sid       = "DeleteOwnScratch"
    actions   = ["s3:DeleteObject"]
    resources = ["${local.bucket_arn.processed}/_spark/*"]
  }
  statement {
    sid       = "RecordRunsAndLeases"
    actions   = local.ledger_actions
    resources = [local.imported.ledger_table_arn]
  }
  statement {
    sid       = "UseDataKey"
    actions   = local.data_key
    resources = [local.imported.data_key_arn]
  }
  statement {
    # Its own continuous log group, and Glue's own groups for a run's output and errors.
    sid     = "WriteOwnLogs"
    actions = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
    resources = flatten([for group in [local.glue_stages_logs, "/aws-glue/jobs/output", "/aws-glue/jobs/error", "/aws-glue/jobs/logs-v2"] : [
      "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:${group}",
      "arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:${group}:*",
    ]])
  }
  statement {
    sid       = "PutJobMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["Glue"]
    }
  }
  dynamic "statement" {
    for_each = length(var.subnet_ids) > 0 ? [1] : []
    content {
      sid = "AttachToVpc"
      actions = ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
        "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
        "ec2:DescribeVpcEndpoints", "ec2:DescribeRouteTables", "ec2:DescribeVpcAttribute",
      "ec2:CreateTags", "ec2:DeleteTags"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role" "glue_stages" {
  name               = "${local.prefix}-stages-job"
  assume_role_policy = data.aws_iam_policy_document.assume_glue.json
}

resource "aws_iam_role_policy" "glue_stages" {
  name   = "${local.prefix}-stages-job"
  role   = aws_iam_role.glue_stages.id
  policy = data.aws_iam_policy_document.glue_stages.json
}

resource "aws_glue_job" "stages" {
  #checkov:skip=CKV_AWS_195:A security configuration would only re-encrypt what the buckets' default SSE-KMS (the project's key) already encrypts, and would move the logs out of the log group kept here with its retention.
  name              = "${local.prefix}-stages"
  description       = "Transforms and loads on Spark the facts of the tables whose job_type is glue (totes.jobs.glue_stages); started by the state machine"
  role_arn          = aws_iam_role.glue_stages.arn
  glue_version      = "5.0"
  worker_type       = "G.1X" # each run sets the largest worker_type and worker_no of its tables
  number_of_workers = 2
  max_retries       = 0 # a failed run is alerted; the next execution resumes where it stopped
  timeout           = var.glue_timeout_minutes
  connections       = aws_glue_connection.network[*].name
  command {
    name            = "glueetl"
    python_version  = "3"
    script_location = "s3://${aws_s3_object.glue_stages_script.bucket}/${aws_s3_object.glue_stages_script.key}"
  }
  execution_property {
    # One run per execution, plus an overlapping manual execution (the leases serialise them).
    max_concurrent_runs = 2
  }
  default_arguments = merge({
    "--additional-python-modules"        = join(",", concat(["s3://${aws_s3_object.glue_wheel.bucket}/${aws_s3_object.glue_wheel.key}"], local.glue_packages))
    "--python-modules-installer-option"  = "--no-cache-dir"
    "--enable-continuous-cloudwatch-log" = "true"
    "--continuous-log-logGroup"          = aws_cloudwatch_log_group.glue_stages.name
    "--enable-metrics"                   = "true"
    "--job-language"                     = "python"
    "--TOTES_LAKE"                       = "s3://${local.imported.ingest_bucket}"
    "--TOTES_PROCESSED"                  = "s3://${local.imported.processed_bucket}"
    "--TOTES_WAREHOUSE_SECRET"           = local.imported.warehouse_secret_arn
    "--TOTES_WAREHOUSE_SCHEMA"           = var.warehouse_schema
    "--TOTES_CONFIG"                     = local.config_uri
    "--TOTES_LEDGER"                     = local.ledger
    }, { for name, value in var.extra_environment : "--${name}" => value if startswith(name, "TOTES_") },
  { for name, value in var.glue_stages_settings : "--${name}" => value })
}
