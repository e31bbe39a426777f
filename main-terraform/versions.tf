terraform {
  required_version = ">= 1.10" # S3 backend locking (use_lockfile)
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
  # Remote state in S3, configured at init (see docs/aws.md):
  # terraform init -backend-config="bucket=<state bucket>" -backend-config="key=totes/main.tfstate"
  #   -backend-config="region=<region>" -backend-config="use_lockfile=true"
  backend "s3" {}
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { project = var.project, environment = var.environment, layer = "main" }
  }
}
