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
4. Executions, each checked with the alerts that arrive (an SQS queue subscribed to the
   alert topic receives them):
   (a) with sales_order read in 3 partitions by 3 Lambdas, and payment on the Glue job
   (job_type glue, 2 partitions: the emulator runs the job's script from the artifacts
   bucket on a local Spark), execution 1 must SUCCEED, fill the warehouse with the
   snapshot's rows and reconcile equal (in steps of 10,000 fact rows, so its Reconcile
   state goes round); payment's batch must hold exactly the rows the
   Lambda path's extract reads, and the ledger its one ingest, recorded by the job; its
   transform and load must run in the Spark job (TransformAndLoadOnSpark, the Glue job
   totes-local-stages on a local Spark), going round (6,000 lake rows a table a round),
   each round recorded in the ledger;
   a currency with no ISO 4217 code (payment on Lambda): execution 2 SUCCEEDS, with one
   "rows held back" alert (and reconciles equal: a quarantined row is no difference);
   (b) a column of design renamed, payment on the Glue job again with its partition column
   misnamed in the configuration (only the Glue job reads it), a new sales order:
   execution 3 FAILS with exactly one alert naming design and payment, the failed job run
   is recorded failed in the ledger, and the sales order reaches the lake; payment is read
   by a Lambda except in executions 1 and 3 (a local Spark takes 10-20 s to start, longer
   than a whole execution's other work);
   (c) 12,000 transactions changed and the transform function pointed at a missing bucket:
   execution 4 fails in Transform with one alert; the function restored (bounded to 6,000
   lake rows a table), execution 5 (no new source rows) completes the pending transform and
   load going round its Transform and Load states, and reconciles equal;
   (d) payment_type removed from the configuration in S3: execution 6 ingests the ten other
   tables, with no redeploy (it loads nothing, so it skips Reconcile);
   (e) two fact values changed in the warehouse by hand (in the first and a later step's
   range), a new sales order: execution 7 loads it, reconciles every range, then FAILS
   with one alert naming both differences (table, key, column);
   (f) purchase_order and transaction on cdc (their publication and slot created as `totes
   cdc init` does): execution 8's Capture item takes their initial copies; a purchase order
   updated in two transactions and another deleted (its transaction's purchase_order_id
   set NULL by the source): execution 9 SUCCEEDS, brings both versions and the delete
   (with is_deleted; the current view leaves it out), and reconciles equal;
   (g) observability: the functions' output, which the emulator writes to CloudWatch Logs
   (and each embedded metric format document's values to CloudWatch metrics, as Lambda
   does), holds JSON lines carrying execution 1's id and metric documents; a design row
   dated 3 hours ahead (newer than any extract may read) makes design lag: after execution
   10, its `LagSeconds` passes the threshold of its alarm `totes-local-lag-design` (moto
   does not evaluate alarms, so the metric data is checked against the alarm's threshold).
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
import yaml

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "deploy-local"
LAYERS = ("immutable-terraform", "main-terraform")
REGION = "eu-west-2"
ENVIRONMENT = "local"
SERVICES = ("s3", "sts", "iam", "kms", "ssm", "secretsmanager", "sns", "sqs", "lambda",
            "logs", "cloudwatch", "events", "stepfunctions", "glue")
FACT_ROWS = {"fact_sales_order": 11_187, "fact_purchase_order": 4_649, "fact_payment": 15_836}
#: The table deploy-local extracts on the Glue job (the others on Lambda).
GLUE_TABLE = {"job_type": "glue", "worker_type": "G.1X", "worker_no": 2,
              "partition_column": "payment_id", "num_partitions": 2}


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
        # What this run applied is the state: no refresh of every resource first.
        self.run("destroy", "-input=false", "-auto-approve", "-refresh=false", *self.variables)

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


def check_glue_batch(s3, lake_bucket: str, execution: dict, record, source) -> None:
    """Execution 1's payment batch, extracted by the Glue job: the item ended as a Lambda's
    does, the job's own ledger record counts its rows and names its parts, and the batch
    holds exactly the rows the Lambda path's extract reads from the same source."""
    import tempfile
    from collections import Counter

    from totes.ingest.extract import ingest_table
    from totes.contracts.config import resolve_tables
    from totes.utils.config_file import load_config
    from totes.utils.lake import Lake
    from totes.utils.footers import batch_files

    [item] = [i for i in json.loads(execution["output"])["ingested"] if i["table"] == "payment"]
    print(f"payment (Glue job): {item}; ledger: "
          f"{record and (record.status, record.rows, len(record.details.get('parts', [])))}")
    if record is None or record.status != "succeeded" or item["status"] != "succeeded" \
            or item["rows"] != record.rows or item["key"] != record.key \
            or len(record.details.get("parts", [])) != GLUE_TABLE["num_partitions"] \
            or record.details.get("recorded_by"):
        raise SystemExit("deploy-local: payment's Glue job run should end its item as a "
                         "Lambda's does, recorded once by the job, in 2 parts")

    def rows(lake: Lake, key: str) -> Counter:
        found = Counter()
        for file in batch_files(lake, key):
            found.update(tuple(row.values()) for row in lake.read_table(file).to_pylist())
        return found

    glue = rows(Lake(f"s3://{lake_bucket}"), record.key)
    with tempfile.TemporaryDirectory(prefix="totes-lambda-path-") as folder:
        local = Lake(folder)
        # payment as the repository's configuration has it: on Lambda, in one read.
        [plan] = [p for p in resolve_tables(load_config(REPO / "config" / "pipeline.yaml"))
                  if p.table == "payment"]
        lambda_path = ingest_table(plan, source, local)
        reference = rows(local, lambda_path.key)
    print(f"payment rows: Glue job {sum(glue.values())}, Lambda path "
          f"{sum(reference.values())}, identical: {glue == reference}")
    if glue != reference:
        raise SystemExit("deploy-local: the Glue job's payment batch differs from the "
                         "Lambda path's extract")


def main() -> int:
    from totes.local.embedded import EmbeddedPostgres, recreate_databases
    from totes.local.seed import seed
    from totes.utils.postgres import Database

    sys.path.insert(0, str(REPO / "scripts"))
    from put_secrets import put_secrets

    WORK.mkdir(parents=True, exist_ok=True)
    for stale in WORK.glob("*.tfstate*"):
        stale.unlink()
    database_server = EmbeddedPostgres(WORK / "state", durable=False)  # thrown away at the end
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
            "environment": ENVIRONMENT, "region": REGION, "python": sys.executable,
            # The Spark job's rounds bounded as the transform function's (below): execution
            # 1's job goes round.
            "glue_stages_settings": '{TOTES_TRANSFORM_MAX_ROWS="6000"}'})
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

        s3 = aws.client("s3")
        found = {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in aws.client("ssm")
                 .get_parameters_by_path(Path=f"/totes/{ENVIRONMENT}/")["Parameters"]}
        lake_bucket = found["ingest_bucket"]

        def alerts() -> list[str]:
            messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5,
                                           MaxNumberOfMessages=10).get("Messages", [])
            for message in messages:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            found = [json.loads(m["Body"]) for m in messages]
            for alert in found:
                print(f"alert received: {alert.get('Subject')}\n{alert.get('Message')}")
            if not found:
                print("alerts received: (none)")
            return [f"{a.get('Subject')}\n{a.get('Message')}" for a in found]

        def lake_files(table: str) -> int:
            """The table's batches (commit files, not the parts of partitioned ones)."""
            listed = s3.list_objects_v2(Bucket=lake_bucket, Prefix=f"{table}/")
            return len([o for o in listed.get("Contents", [])
                        if not o["Key"].startswith(f"{table}/_parts/")])

        def fact_count(table: str) -> int:
            with warehouse.session("deploy-local", "counting warehouse rows") as session:
                # Table names from the constant FACT_ROWS, no values.
                return session.conn.run(f"SELECT count(*) FROM {table}")[0][0]  # nosec B608

        def new_order() -> None:
            with source.session("deploy-local", "adding a sales order") as session:
                session.conn.run(
                    "INSERT INTO sales_order (created_at, last_updated, design_id, staff_id, "
                    "counterparty_id, units_sold, unit_price, currency_id, "
                    "agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) "
                    "SELECT now(), now(), 1, 1, 1, 5, 2.50, 1, '2024-12-01', '2024-12-02', 1")

        def entered_states(execution: dict) -> list[str]:
            """The names of the states ``execution`` entered, in order."""
            return [e["stateEnteredEventDetails"]["name"] for e in stepfunctions
                    .get_execution_history(executionArn=execution["executionArn"],
                                           maxResults=1000)["events"]
                    if "stateEnteredEventDetails" in e]

        def check(condition: bool, message: str) -> None:
            if not condition:
                raise SystemExit(f"deploy-local: {message}")

        def check_reconciled(execution: dict, name: str) -> None:
            """The execution loaded a batch, so Reconcile ran: source and warehouse agree."""
            reconciled = json.loads(execution.get("output") or "{}").get("reconcile")
            print(f"{name} reconcile: "
                  f"{reconciled and {k: reconciled[k] for k in ('equal', 'differences')}}")
            check(reconciled is not None and reconciled["equal"] is True,
                  f"{name} should have reconciled equal: {reconciled}")

        from totes.utils.ledger import ALL_TABLES, ledger_from_uri

        ledger = ledger_from_uri(f"dynamodb://{found['ledger_table']}")
        key = "config/totesys/pipeline.yaml"

        def configure(**tables) -> None:
            """Change tables' settings in the configuration in S3 (read by the next Plan)."""
            config = yaml.safe_load(s3.get_object(Bucket=found["artifacts_bucket"],
                                                  Key=key)["Body"].read())
            config["tables"].update(tables)
            s3.put_object(Bucket=found["artifacts_bucket"], Key=key,
                          Body=yaml.safe_dump(config).encode())

        lambda_payment = yaml.safe_load(s3.get_object(
            Bucket=found["artifacts_bucket"], Key=key)["Body"].read())["tables"]["payment"]

        def own_ingest(table: str, execution: str):
            return next((r for r in ledger.history("ingest", table, 50)
                         if r.run_id == execution), None)

        say("the configuration in S3: sales_order read in 3 partitions, one Lambda each; "
            "payment on the Glue job; transaction in lake batches of about 5,000 rows, and "
            "transform bounded to 6,000 lake rows a table, so that execution 1 goes round")
        configure(sales_order={"partition_column": "sales_order_id", "num_partitions": 3},
                  payment=GLUE_TABLE,
                  transaction={"max_batch_rows": 5000, "record_batch_bytes": 1 << 16})
        lambdas = aws.client("lambda")
        transform_name = f"totes-{ENVIRONMENT}-transform"
        unbounded = lambdas.get_function_configuration(
            FunctionName=transform_name)["Environment"]["Variables"]
        lambdas.update_function_configuration(FunctionName=transform_name, Environment={
            "Variables": {**unbounded, "TOTES_TRANSFORM_MAX_ROWS": "6000"}})
        # Reconcile in steps of 10,000 fact rows (the snapshot's facts hold about 31,700):
        # every reconciliation below goes round its Reconcile state.
        reconcile_name = f"totes-{ENVIRONMENT}-reconcile"
        whole = lambdas.get_function_configuration(
            FunctionName=reconcile_name)["Environment"]["Variables"]
        lambdas.update_function_configuration(FunctionName=reconcile_name, Environment={
            "Variables": {**whole, "TOTES_RECONCILE_MAX_ROWS": "10000"}})

        say("(a) execution 1: the real snapshot into the warehouse")
        first = execute(stepfunctions, machine, "deploy-local-1")
        check(first["status"] == "SUCCEEDED",
              f"execution 1 ended {first['status']}: {first.get('error')} {first.get('cause')}")
        entered = entered_states(first)
        batches = lake_files("transaction")
        rounds = {stage: [r for r in ledger.history(stage, ALL_TABLES, 50)
                          if r.run_id == "deploy-local-1"] for stage in ("transform", "load")}
        print(f"execution 1: transaction in {batches} lake batches; the Spark job "
              f"(TransformAndLoadOnSpark entered {entered.count('TransformAndLoadOnSpark')} "
              f"times, Transform {entered.count('Transform')}) transformed in "
              f"{len(rounds['transform'])} rounds, loaded in {len(rounds['load'])}; "
              f"Reconcile entered {entered.count('Reconcile')} times")
        check(entered.count("TransformAndLoadOnSpark") == 1 and "Transform" not in entered,
              "payment's lake files (job_type glue) should have sent transform and load to "
              "the Spark job")
        check(batches >= 3 and len(rounds["transform"]) >= 2 and len(rounds["load"]) >= 2
              and all(r.status == "succeeded" for r in rounds["transform"] + rounds["load"]),
              "execution 1's Spark job should have gone round transform and load while more "
              "waited, each round recorded")
        check(entered.count("Reconcile") >= 3,
              "execution 1 should have reconciled in steps of 10,000 fact rows")
        counts = {t: fact_count(t) for t in FACT_ROWS}
        print(f"warehouse after execution 1: {counts}")
        check(counts == FACT_ROWS, f"expected {FACT_ROWS}")
        parts = s3.list_objects_v2(Bucket=lake_bucket, Prefix="sales_order/_parts/")
        print(f"sales_order parts in the lake: {len(parts.get('Contents', []))}")
        check(len(parts.get("Contents", [])) == 3, "sales_order should be read in 3 parts")
        check(alerts() == [], "a successful execution sent an alert")
        check_reconciled(first, "execution 1")
        check_glue_batch(s3, lake_bucket, first, own_ingest("payment", "deploy-local-1"),
                         source)

        say("execution 2: a currency with no ISO 4217 code is quarantined, the run lands")
        configure(payment=lambda_payment)  # a Glue run for no new rows: a Spark start saved
        with source.session("deploy-local", "injecting a bad currency") as session:
            session.conn.run("INSERT INTO currency (currency_code, last_updated) "
                             "VALUES ('XYZ', '2024-11-16')")
        second = execute(stepfunctions, machine, "deploy-local-2")
        print(f"execution 2 ended {second['status']}")
        held = alerts()
        check(second["status"] == "SUCCEEDED" and len(held) == 1
              and '"currency":1' in held[0], "execution 2 should have SUCCEEDED with one "
              "alert for the quarantined currency row")
        check_reconciled(second, "execution 2")

        say("(b) execution 3: one table fails (a column transform reads is renamed), "
            "the others land")
        with source.session("deploy-local", "renaming a column") as session:
            session.conn.run("ALTER TABLE design RENAME COLUMN design_name TO name")
        configure(payment={**GLUE_TABLE, "partition_column": "payment_ref"})
        new_order()
        orders_before = lake_files("sales_order")
        third = execute(stepfunctions, machine, "deploy-local-3")
        print(f"execution 3 ended {third['status']}")
        failed = alerts()
        check(third["status"] == "FAILED", "execution 3 should have FAILED")
        check(len(failed) == 1 and "design" in failed[0].splitlines()[0]
              and "design_name" in failed[0] and "Traceback" not in failed[0],
              "execution 3 should send exactly one readable alert naming design")
        job_failed = own_ingest("payment", "deploy-local-3")
        print(f"payment in the ledger for execution 3: "
              f"{job_failed and (job_failed.status, job_failed.error_type)}")
        check(job_failed is not None and job_failed.status == "failed"
              and "payment" in failed[0].splitlines()[0]
              and f"payment: {job_failed.error_type}: " in failed[0]
              and "payment_ref" in failed[0],
              "the failed Glue job run should be recorded failed and named in the alert")
        configure(payment=lambda_payment)  # the Glue path is proven: Lambda from here on
        check(lake_files("sales_order") == orders_before + 1,
              "the other tables' new rows should have reached the lake")
        with source.session("deploy-local", "renaming the column back") as session:
            session.conn.run("ALTER TABLE design RENAME COLUMN name TO design_name")

        say("(c) execution 4 fails in Transform; execution 5, with no new source rows, "
            "completes the pending transform and load, going round its Transform state")
        settings = lambdas.get_function_configuration(FunctionName=transform_name)
        variables = settings["Environment"]["Variables"]
        new_order()
        with source.session("deploy-local", "updating 12,000 transactions") as session:
            session.conn.run("UPDATE transaction SET last_updated = now() "
                             "WHERE transaction_id <= 12000")
        lambdas.update_function_configuration(FunctionName=transform_name, Environment={
            "Variables": {**variables, "TOTES_PROCESSED": "s3://no-such-bucket-here"}})
        fourth = execute(stepfunctions, machine, "deploy-local-4")
        print(f"execution 4 ended {fourth['status']}")
        broken = alerts()
        check(fourth["status"] == "FAILED" and len(broken) == 1
              and "Transform" in broken[0].splitlines()[0],
              "execution 4 should fail in Transform with one alert")
        lambdas.update_function_configuration(FunctionName=transform_name,
                                              Environment={"Variables": variables})
        orders = fact_count("fact_sales_order")
        fifth = execute(stepfunctions, machine, "deploy-local-5")
        output = json.loads(fifth.get("output") or "{}")
        print(f"execution 5 ended {fifth['status']}: ingested "
              f"{sum(i['rows'] for i in output.get('ingested', []))} rows, pending "
              f"{output.get('pending')}")
        check(fifth["status"] == "SUCCEEDED", "execution 5 should have SUCCEEDED")
        lambdas.update_function_configuration(FunctionName=transform_name,
                                              Environment={"Variables": unbounded})
        entered = entered_states(fifth)
        print(f"execution 5: Transform entered {entered.count('Transform')} times, Load "
              f"{entered.count('Load')}")
        check(entered.count("Transform") >= 2
              and entered.count("MorePending") == entered.count("Transform"),
              "execution 5 should have gone round Transform and Load while more waited")
        check(sum(i["rows"] for i in output["ingested"]) == 0, "no new source rows expected")
        check(fact_count("fact_sales_order") == orders + 1,
              "execution 5 should have loaded the pending sales order")
        check(alerts() == [], "execution 5 should send no alert")
        check_reconciled(fifth, "execution 5")

        say("(d) the configuration changed in S3 (payment_type removed): the next execution "
            "uses it, with no redeploy")
        config = yaml.safe_load(s3.get_object(Bucket=found["artifacts_bucket"],
                                              Key=key)["Body"].read())
        del config["tables"]["payment_type"]
        s3.put_object(Bucket=found["artifacts_bucket"], Key=key,
                      Body=yaml.safe_dump(config).encode())
        sixth = execute(stepfunctions, machine, "deploy-local-6")
        tables = [i["table"] for i in json.loads(sixth["output"])["ingested"]]
        print(f"execution 6 ended {sixth['status']}, ingesting {len(tables)} tables")
        check(sixth["status"] == "SUCCEEDED" and "payment_type" not in tables
              and len(tables) == 10, "execution 6 should use the new configuration")
        check("reconcile" not in json.loads(sixth["output"]),
              "execution 6 loaded nothing: it should have skipped Reconcile")

        say("(e) execution 7: two fact values changed in the warehouse by hand, in the first "
            "and a later step's range; Reconcile, after the load of a new sales order, must "
            "fail the execution with one alert naming both")
        with warehouse.session("deploy-local", "tampering with the warehouse") as session:
            session.conn.run("UPDATE fact_payment SET payment_amount = 1.00 "
                             "WHERE payment_id = 2")
            session.conn.run("UPDATE fact_sales_order SET units_sold = units_sold + 1 "
                             "WHERE sales_order_id = 1")
        new_order()
        orders = fact_count("fact_sales_order")
        seventh = execute(stepfunctions, machine, "deploy-local-7")
        print(f"execution 7 ended {seventh['status']}")
        differences = alerts()
        check(seventh["status"] == "FAILED", "execution 7 should have FAILED in Reconcile")
        check(fact_count("fact_sales_order") == orders + 1,
              "execution 7 should have loaded the new sales order before reconciling")
        entered = [e["stateEnteredEventDetails"]["name"] for e in stepfunctions
                   .get_execution_history(executionArn=seventh["executionArn"],
                                          maxResults=1000)["events"]
                   if "stateEnteredEventDetails" in e]
        print(f"execution 7: Reconcile entered {entered.count('Reconcile')} times")
        check(entered.count("Reconcile") >= 3,
              "execution 7 should have reconciled every range after the first differed")
        check(len(differences) == 1 and differences[0].splitlines()[0]
              == f"totes {ENVIRONMENT}: Reconcile found differences in fact_sales_order, "
                 "fact_payment"
              and "fact_payment payment_id=2 payment_amount: value differs" in differences[0]
              and "fact_sales_order sales_order_id=1 units_sold: value differs"
              in differences[0]
              and "warehouse 1.00" in differences[0] and "totes reconcile" in differences[0],
              "execution 7 should send exactly one alert naming fact_payment, payment_id=2 "
              "and payment_amount, and fact_sales_order, sales_order_id=1 and units_sold")
        say("(f) purchase_order and transaction on cdc: executions 8 and 9 read them from the "
            "change log through the state machine's Capture item")
        from totes.contracts.config import CapturePlan, TablePlan
        from totes.ingest.capture import init_source

        with source.session("deploy-local", "reading payment 2") as session:
            (amount,), = session.conn.run("SELECT payment_amount FROM payment WHERE "
                                          "payment_id = 2")
        with warehouse.session("deploy-local", "undoing the tampering") as session:
            session.conn.run("UPDATE fact_payment SET payment_amount = :a WHERE payment_id = "
                             "2", a=amount)
            session.conn.run("UPDATE fact_sales_order SET units_sold = units_sold - 1 "
                             "WHERE sales_order_id = 1")
        cdc_tables = [TablePlan(table=t, primary_key=f"{t}_id", extract_type="cdc")
                      for t in ("purchase_order", "transaction")]
        print("cdc init:", init_source(CapturePlan(slot="totes", publication="totes",
                                                   tables=cdc_tables), source))
        configure(purchase_order={"extract_type": "cdc"}, transaction={"extract_type": "cdc"})
        eighth = execute(stepfunctions, machine, "deploy-local-8")
        items = {i["table"]: i for i in json.loads(eighth.get("output") or "{}")
                 .get("ingested", [])}
        print(f"execution 8 ended {eighth['status']}: capture item {items.get('capture:totes')}")
        check(eighth["status"] == "SUCCEEDED" and items.get("capture:totes", {}).get(
            "status") == "succeeded" and "purchase_order" not in items,
            "execution 8 should read purchase_order and transaction through its Capture item")
        copied = own_ingest("purchase_order", "deploy-local-8")
        check(copied is not None and copied.mode == "cdc_snapshot"
              and copied.rows == FACT_ROWS["fact_purchase_order"],
              f"purchase_order's initial copy should hold every row: {copied}")
        with source.session("deploy-local", "changing and deleting purchase orders") as session:
            for quantity in (77, 78):
                session.conn.run("UPDATE purchase_order SET item_quantity = :q WHERE "
                                 "purchase_order_id = 1", q=quantity)
            session.conn.run("DELETE FROM purchase_order WHERE purchase_order_id = 2")
        ninth = execute(stepfunctions, machine, "deploy-local-9")
        print(f"execution 9 ended {ninth['status']}")
        check(ninth["status"] == "SUCCEEDED" and alerts() == [],
              "execution 9 should have SUCCEEDED without an alert")
        with warehouse.session("deploy-local", "reading the versions") as session:
            versions = session.conn.run(
                "SELECT purchase_order_id, item_quantity, is_deleted FROM fact_purchase_order "
                "WHERE purchase_order_id IN (1, 2) AND source_lsn <> 0 ORDER BY source_lsn")
            current = session.conn.run("SELECT count(*) FROM fact_purchase_order_current "
                                       "WHERE purchase_order_id = 2")[0][0]
        print(f"purchase orders 1 and 2 from the change log: {versions}")
        check([v[0] for v in versions] == [1, 1, 2] and [v[1] for v in versions][:2] == [77, 78]
              and [v[2] for v in versions] == [False, False, True] and current == 0,
              "execution 9 should bring both versions of purchase order 1 and the delete of 2")
        check_reconciled(ninth, "execution 9")

        say("(g) observability: execution 1's log lines and metric documents in CloudWatch "
            "Logs; design made to lag beyond its target: its alarm's metric shows the breach")
        logs, cloudwatch = aws.client("logs"), aws.client("cloudwatch")
        lines = []
        for group in logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]:
            events = logs.filter_log_events(logGroupName=group["logGroupName"])["events"]
            lines += [e["message"] for e in events]

        def parsed(line: str) -> dict:
            try:
                found = json.loads(line)
            except ValueError:
                return {}
            return found if isinstance(found, dict) else {}
        documents = [parsed(line) for line in lines]
        first_id = first["executionArn"]
        logged = [d for d in documents if d.get("execution_id") == first_id and "_aws" not in d]
        metrics = [d for d in documents if "_aws" in d and d.get("RowsExtracted") is not None]
        print("a log line of execution 1:", json.dumps(logged[0]) if logged else None)
        print("a metric document:", json.dumps(metrics[0]) if metrics else None)
        check(bool(logged) and bool(metrics),
              "the functions' logs should hold JSON lines with execution 1's id and metric "
              "documents")

        def highest_lag(alarm: dict, since: float) -> "float | None":
            """The alarm's metric's highest value since ``since`` (epoch seconds)."""
            points = cloudwatch.get_metric_statistics(
                Namespace=alarm["Namespace"], MetricName=alarm["MetricName"],
                Dimensions=alarm["Dimensions"], StartTime=since, EndTime=time.time() + 60,
                Period=60, Statistics=["Maximum"])["Datapoints"]
            return max((p["Maximum"] for p in points), default=None)
        [alarm] = cloudwatch.describe_alarms(
            AlarmNames=[f"totes-{ENVIRONMENT}-lag-design"])["MetricAlarms"]
        before = highest_lag(alarm, time.time() - 3600)
        lagging_from = time.time()
        with source.session("deploy-local", "making design lag") as session:
            session.conn.run("UPDATE design SET last_updated = now() + interval '3 hours' "
                             "WHERE design_id = 1")  # newer than any extract may read yet
        tenth = execute(stepfunctions, machine, "deploy-local-10")
        print(f"execution 10 ended {tenth['status']}")
        highest = highest_lag(alarm, lagging_from - 60)  # the metric's minute
        print(f"alarm {alarm['AlarmName']}: {alarm['MetricName']} {alarm['Dimensions']} "
              f"threshold {alarm['Threshold']:g} s; highest value before: {before}; "
              f"since execution 10: {highest}")
        check(before is not None and before <= alarm["Threshold"],
              "design's lag should have been within its target before")
        check(highest is not None and highest > alarm["Threshold"],
              "design's lag metric should pass its alarm's threshold")
        say("deploy-local: both layers applied; (a) a normal execution filled the warehouse "
            "and reconciled equal, payment extracted by the Glue job with the Lambda path's "
            "rows; a quarantined row sent one alert; (b) a failing table and "
            "a failed Glue job run failed the execution with one alert while the others "
            "landed; (c) a failed "
            "transform was completed by the next execution with no new rows; (d) a "
            "configuration change in S3 was used without a redeploy, and an execution that "
            "loaded nothing skipped Reconcile; (e) two values changed in the warehouse by "
            "hand, in different steps' ranges, failed Reconcile with one alert naming both; "
            "(f) two tables on cdc were read "
            "through the Capture item: versions and a delete reached the warehouse; (g) the "
            "functions logged JSON lines with the execution's id and metric documents, and "
            "a table made to lag put its lag metric past its alarm's threshold")
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
