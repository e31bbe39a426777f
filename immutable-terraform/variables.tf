variable "project" {
  description = "Name prefix of every resource."
  type        = string
  default     = "totes"
}

variable "environment" {
  description = "Deployment environment (prod, staging, dev): part of every name."
  type        = string
  default     = "prod"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-2"
}

variable "ingest_object_lock_days" {
  description = "Object Lock retention (GOVERNANCE mode, days) of every object in the ingest bucket, so that no batch can be deleted or lost to an overwrite. 0 turns Object Lock off (only for throwaway environments)."
  type        = number
  default     = 365
  validation {
    condition     = var.ingest_object_lock_days >= 0
    error_message = "ingest_object_lock_days must be 0 or more."
  }
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can be restored (0 deletes at once)."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Let terraform destroy empty the buckets first (throwaway environments only)."
  type        = bool
  default     = false
}

variable "ledger_deletion_protection" {
  description = "Protect the run ledger table from deletion (false only for throwaway environments, such as the emulator's)."
  type        = bool
  default     = true
}
