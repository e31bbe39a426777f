# One private, versioned, KMS-encrypted, TLS-only bucket; optionally append-only with Object
# Lock (the ingest lake).
terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}

variable "name" {
  description = "Bucket name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key that encrypts every object."
  type        = string
}

variable "object_lock_days" {
  description = "Object Lock retention in GOVERNANCE mode, days; 0 turns it off."
  type        = number
  default     = 0
}

variable "deny_deletes" {
  description = "Deny deleting objects or their versions to every principal (append-only)."
  type        = bool
  default     = false
}

variable "force_destroy" {
  description = "Let terraform destroy empty the bucket first."
  type        = bool
  default     = false
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logging needs a log bucket per account; enable it at the organisation level (CloudTrail data events).
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice per deployment, not a default of this pipeline.
  #checkov:skip=CKV2_AWS_62:No consumer listens for object events; the state machine runs on a schedule.
  #checkov:skip=CKV2_AWS_61:Lake and processed data are kept as history; no lifecycle expiry by design.
  bucket              = var.name
  force_destroy       = var.force_destroy
  object_lock_enabled = var.object_lock_days > 0
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_object_lock_configuration" "this" {
  count  = var.object_lock_days > 0 ? 1 : 0
  bucket = aws_s3_bucket.this.id
  rule {
    default_retention {
      mode = "GOVERNANCE"
      days = var.object_lock_days
    }
  }
  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "this" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
  dynamic "statement" {
    for_each = var.deny_deletes ? [1] : []
    content {
      sid       = "DenyDeletingObjects"
      effect    = "Deny"
      actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
      resources = ["${aws_s3_bucket.this.arn}/*"]
      principals {
        type        = "*"
        identifiers = ["*"]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket     = aws_s3_bucket.this.id
  policy     = data.aws_iam_policy_document.this.json
  depends_on = [aws_s3_bucket_public_access_block.this]
}

output "id" {
  description = "Bucket name."
  value       = aws_s3_bucket.this.id
}

output "arn" {
  description = "Bucket ARN."
  value       = aws_s3_bucket.this.arn
}
