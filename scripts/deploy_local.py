"""``make deploy-local``: both Terraform layers applied to an AWS emulator on loopback, then a
real state machine execution end to end, then a failing one, then everything destroyed.

1. An embedded PostgreSQL (under build/deploy-local/) holds the source, seeded with the real
   snapshot, and an empty warehouse.
2. moto's server runs on loopback (scripts/aws_emulator.py: Lambda handlers run here, from
   the packaged code, since moto needs Docker to run them), with Step Functions execution on.
3. terraform applies immutable-terraform, scripts/put_secrets.py puts the connections, and
   terraform applies main-terraform (which builds the layer and the code package itself).
   Emulator settings (endpoint, local state, few retries) go in *_override.tf files written
   here and removed afterwards; the layers themselves are unchanged.
4. Execution 1 must SUCCEED and fill the warehouse with the snapshot's rows. Then a currency
   with no ISO 4217 code is put in the source: execution 2 must SUCCEED with that row in
   quarantine, and its "rows held back" alert must arrive (an SQS queue subscribed to the
   alert topic receives it). Then a column transform reads is renamed in the source:
   execution 3 must end FAILED, and its alert must name the column.
5. terraform destroy, both layers; the emulator and PostgreSQL stop.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
# Runs terraform and the emulator with fixed arguments.
import subprocess  # nosec B404
import sys
import time
import urllib.request
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "deploy-local"
LAYERS = ("immutable-terraform", "main-terraform")
REGION = "eu-west-2"
ENVIRONMENT = "local"
SERVICES = ("s3", "sts", "iam", "kms", "ssm", "secretsmanager", "sns", "sqs", "lambda",
            "logs", "cloudwatch", "events", "stepfunctions")
FACT_ROWS = {"fact_sales_order": 11_187, "fact_purchase_order": 4_649, "fact_payment": 15_836}


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def override(endpoint: str, state: Path) -> str:
    endpoints = "\n".join(f'    {name} = "{endpoint}"' for name in SERVICES)
    return f"""# Written by scripts/deploy_local.py for the AWS emulator; removed when it ends.
terraform {{
  backend "local" {{
    path = "{state}"
  }}
}}

provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true
  max_retries                 = 1
  endpoints {{
{endpoints}
  }}
}}
"""


class Terraform:
    def __init__(self, layer: str, endpoint: str, variables: dict):
        self.layer, self.folder = layer, REPO / layer
        self.variables = [f"-var={k}={v}" for k, v in variables.items()]
        self.env = dict(os.environ, TF_DATA_DIR=str(WORK / f"{layer}.terraform"),
                        TF_IN_AUTOMATION="1", AWS_ACCESS_KEY_ID="testing",
                        AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=REGION)
        self.override = self.folder / "deploy_local_override.tf"
        self.override.write_text(override(endpoint, WORK / f"{layer}.tfstate"))

    def run(self, *args: str) -> None:
        # The project's terraform wrapper with this script's own arguments.
        command = [str(REPO / "scripts" / "tf"), f"-chdir={self.folder}", *args]
        subprocess.run(command, check=True, env=self.env)  # nosec B603

    def apply(self) -> None:
        self.run("init", "-input=false", "-reconfigure")
        self.run("apply", "-input=false", "-auto-approve", *self.variables)

    def destroy(self) -> None:
        self.run("destroy", "-input=false", "-auto-approve", *self.variables)

    def remove_override(self) -> None:
        self.override.unlink(missing_ok=True)


def wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            # Loopback emulator.
            urllib.request.urlopen(url, timeout=2).read()  # nosec B310
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the AWS emulator did not answer on {url}")
            time.sleep(0.3)


def execute(stepfunctions, machine_arn: str, name: str, seconds: int = 900) -> dict:
    execution = stepfunctions.start_execution(stateMachineArn=machine_arn, name=name,
                                              input="{}")["executionArn"]
    deadline = time.monotonic() + seconds
    while True:
        described = stepfunctions.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            raise SystemExit(f"execution {name} still RUNNING after {seconds} s")
        time.sleep(1)


def main() -> int:
    from totes.local.embedded import EmbeddedPostgres, recreate_databases
    from totes.local.seed import seed
    from totes.utils.db import Database

    sys.path.insert(0, str(REPO / "scripts"))
    from put_secrets import put_secrets

    WORK.mkdir(parents=True, exist_ok=True)
    for stale in WORK.glob("*.tfstate*"):
        stale.unlink()
    database_server = EmbeddedPostgres(WORK / "state")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    terraforms: list[Terraform] = []
    emulator = None
    applied: list[Terraform] = []
    try:
        say("PostgreSQL: a source seeded with the real snapshot, an empty warehouse")
        urls = recreate_databases(database_server, ["totesys", "warehouse"])
        source = Database.from_url("source", urls["totesys"])
        warehouse = Database.from_url("warehouse", urls["warehouse"])
        seed(source)

        say(f"AWS emulator on {endpoint}")
        # The project's own scripts, run by this interpreter.
        subprocess.run([sys.executable, str(REPO / "scripts" / "build_lambda.py"), "package"],
                       check=True)  # nosec B603
        emulator = subprocess.Popen(  # nosec B603
            [sys.executable, str(REPO / "scripts" / "aws_emulator.py"), "--port", str(port),
             "--code", str(REPO / "build" / "code")])
        wait_for(f"{endpoint}/moto-api/")
        request = urllib.request.Request(
            f"{endpoint}/moto-api/config", method="POST",
            data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode())
        # Loopback emulator.
        urllib.request.urlopen(request, timeout=5).read()  # nosec B310
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=REGION,
                          AWS_DEFAULT_REGION=REGION)
        aws = boto3.session.Session(region_name=REGION)

        immutable = Terraform("immutable-terraform", endpoint, {
            "environment": ENVIRONMENT, "region": REGION, "ingest_object_lock_days": 0,
            "force_destroy": "true", "secret_recovery_window_days": 0,
            "ledger_deletion_protection": "false"})
        main_layer = Terraform("main-terraform", endpoint, {
            "environment": ENVIRONMENT, "region": REGION, "python": sys.executable})
        terraforms = [immutable, main_layer]

        say("terraform apply immutable-terraform")
        applied.append(immutable)
        immutable.apply()
        say("put-secrets: the connections and the alert address")
        found = put_secrets(aws, "totes", ENVIRONMENT, urls["totesys"], urls["warehouse"],
                            "alerts@example.com")
        sqs = aws.client("sqs")
        queue = sqs.create_queue(QueueName="totes-alert-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        aws.client("sns").subscribe(TopicArn=found["alert_topic_arn"], Protocol="sqs",
                                    Endpoint=queue_arn)

        say("terraform apply main-terraform (builds the layer and the code package)")
        applied.append(main_layer)
        main_layer.apply()
        stepfunctions = aws.client("stepfunctions")
        machine = stepfunctions.list_state_machines()["stateMachines"][0]["stateMachineArn"]

        say("execution 1: the real snapshot into the warehouse")
        first = execute(stepfunctions, machine, "deploy-local-1")
        if first["status"] != "SUCCEEDED":
            raise SystemExit(f"execution 1 ended {first['status']}: {first.get('error')} "
                             f"{first.get('cause')}")
        with warehouse.session("deploy-local", "counting warehouse rows") as session:
            # Table names from the constant FACT_ROWS, no values.
            counts = {t: session.conn.run(f"SELECT count(*) FROM {t}")[0][0]  # nosec B608
                      for t in FACT_ROWS}
        print(f"warehouse after execution 1: {counts}")
        if counts != FACT_ROWS:
            raise SystemExit(f"expected {FACT_ROWS}")

        def alerts() -> list[str]:
            messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5,
                                           MaxNumberOfMessages=10).get("Messages", [])
            for message in messages:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            found = [json.loads(m["Body"]).get("Message", m["Body"]) for m in messages]
            print("alerts received: " + (" | ".join(found) if found else "(none)"))
            return found

        say("execution 2: a currency with no ISO 4217 code is quarantined, the run lands")
        with source.session("deploy-local", "injecting a bad currency") as session:
            session.conn.run("INSERT INTO currency (currency_code, last_updated) "
                             "VALUES ('XYZ', '2024-11-16')")
        second = execute(stepfunctions, machine, "deploy-local-2")
        print(f"execution 2 ended {second['status']}")
        held = alerts()
        if second["status"] != "SUCCEEDED" or not any(
                "set rows aside" in a and '"currency":1' in a for a in held):
            raise SystemExit("execution 2 should have SUCCEEDED with one alert for the "
                             "quarantined currency row")

        say("execution 3: a column transform reads is renamed: the run fails and alerts")
        with source.session("deploy-local", "renaming a column") as session:
            session.conn.run("ALTER TABLE design RENAME COLUMN design_name TO name")
        third = execute(stepfunctions, machine, "deploy-local-3")
        print(f"execution 3 ended {third['status']}")
        failed = alerts()
        if third["status"] != "FAILED" or not any("design_name" in a for a in failed):
            raise SystemExit("execution 3 should have FAILED with an alert naming design_name")
        say("deploy-local: both layers applied; execution 1 SUCCEEDED, execution 2 SUCCEEDED "
            "with a quarantined row and one alert, execution 3 FAILED and alerted")
        return 0
    finally:
        for layer in reversed(applied):
            say(f"terraform destroy {layer.layer}")
            try:
                layer.destroy()
            except subprocess.CalledProcessError as exc:
                print(f"destroy of {layer.layer} failed: {exc}", file=sys.stderr)
        for layer in terraforms:
            layer.remove_override()
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=30)
        database_server.stop()
        shutil.rmtree(WORK / "state", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
