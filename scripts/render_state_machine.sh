#!/usr/bin/env bash
# Render main-terraform/state_machine.asl.json with Terraform's own templatefile() and sample
# ARNs, into build/state_machine.json (for asl-validator). Needs no provider and no backend.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
arn="arn:aws:lambda:eu-west-2:123456789012:function:totes-prod"
cat > "$work/render.tf" <<HCL
output "definition" {
  value = templatefile("$top/main-terraform/state_machine.asl.json", {
    plan_arn        = "$arn-plan"
    ingest_arn      = "$arn-ingest"
    status_arn      = "$arn-status"
    pending_arn     = "$arn-pending"
    transform_arn   = "$arn-transform"
    load_arn        = "$arn-load"
    reconcile_arn   = "$arn-reconcile"
    alert_arn       = "$arn-alert"
    alert_topic_arn = "arn:aws:sns:eu-west-2:123456789012:totes-prod-alerts"
    glue_job_name   = "totes-prod-extract"
    glue_stages_job = "totes-prod-stages"
    environment     = "prod"
    region          = "eu-west-2"
    max_concurrency = 4
    retry           = file("$top/main-terraform/retry_transient.json")
  })
}
HCL
mkdir -p "$top/build"
"$top/scripts/tf" -chdir="$work" init -input=false > /dev/null
"$top/scripts/tf" -chdir="$work" apply -input=false -auto-approve > /dev/null
"$top/scripts/tf" -chdir="$work" output -raw definition > "$top/build/state_machine.json"
python3 -m json.tool "$top/build/state_machine.json" > /dev/null
echo "rendered build/state_machine.json"
