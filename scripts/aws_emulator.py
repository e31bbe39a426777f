"""An AWS emulator on loopback for ``make deploy-local``: moto's server, with Lambda functions
and Glue job runs executed by this machine's Python instead of Docker (which these machines
lack) and of a Glue cluster.

Test tooling only; the product never imports it. Each invocation runs the function's handler
in a warm subprocess, as Lambda reuses an execution environment (one per concurrent
invocation of a function with unchanged settings; a process that fails or runs past the
function's timeout is discarded), from the packaged code (``build/code``, the working
directory as in Lambda's /var/task), with the function's own environment variables plus the
emulator's endpoint and test credentials. A handler's exception is returned as Lambda returns it
(``{"errorType": "DatabaseUnavailable", "errorMessage": ...}``), so the state machine's Retry
and Catch see the project's error names.

A Glue job run (StartJobRun, as the state machine's glue:startJobRun.sync calls it) runs the
job's own script from the artifacts bucket, with the wheels its ``--additional-python-modules``
names (downloaded from the emulator's S3) first on PYTHONPATH, and the job's default arguments
merged with the run's (as Glue does; no ``--JOB_RUN_ID``, so the script starts a local Spark).
The run is RUNNING until the script exits, then SUCCEEDED (exit code 0) or FAILED with the
exception's last traceback line as its ErrorMessage, as Glue reports it.

    python scripts/aws_emulator.py --port 5599 --code build/code
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
# Runs this machine's Python on the project's own code.
import subprocess  # nosec B404
import sys
import tempfile
import threading
import time

WORKER = r"""
import importlib, json, os, sys, traceback
control, reply = os.fdopen(int(sys.argv[1]), "r"), os.fdopen(int(sys.argv[2]), "w")
for line in control:
    request = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND)
    saved = os.dup(1), os.dup(2)
    os.dup2(log, 1); os.dup2(log, 2)
    try:
        module, _, name = request["handler"].rpartition(".")
        handler = getattr(importlib.import_module(module), name)
        document = {"result": handler(json.loads(request["event"] or "{}"), None)}
    except Exception as exc:
        traceback.print_exc()
        document = {"error": {"errorType": type(exc).__name__, "errorMessage": str(exc),
                              "stackTrace": traceback.format_exc().splitlines()}}
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
    with open(request["result"], "w") as out:
        json.dump(document, out, default=str)
    reply.write("done\n"); reply.flush()
"""


class _Environment:
    """One warm execution environment: a Python process that imported the handler's module
    once and runs invocations one at a time, as Lambda reuses an environment between
    invocations of an unchanged function (a new configuration gets new environments)."""

    def __init__(self, code_dir: str, env: dict):
        control_read, self._control = os.pipe()
        self._reply, reply_write = os.pipe()
        # Fixed interpreter and worker script.
        self.process = subprocess.Popen(  # nosec B603
            [sys.executable, "-c", WORKER, str(control_read), str(reply_write)],
            cwd=code_dir, env=env, pass_fds=(control_read, reply_write),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(control_read)
        os.close(reply_write)

    def invoke(self, handler: str, payload: str, timeout: float) -> tuple[dict, str]:
        """Run one invocation: (the result document, the output it wrote). Raises
        TimeoutError or EOFError (the environment is then discarded)."""
        with tempfile.NamedTemporaryFile(suffix=".json") as result, \
                tempfile.NamedTemporaryFile(suffix=".log") as log:
            request = {"handler": handler, "event": payload, "result": result.name,
                       "log": log.name}
            os.write(self._control, (json.dumps(request) + "\n").encode())
            ready, _, _ = select.select([self._reply], [], [], timeout)
            if not ready:
                raise TimeoutError(f"{handler} ran past its timeout of {timeout:g} s")
            if not os.read(self._reply, 5):
                raise EOFError(f"{handler}'s environment exited")
            with open(log.name, errors="replace") as written, open(result.name) as produced:
                return json.load(produced), written.read()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._control)
        os.close(self._reply)


def local_invoker(code_dir: str, endpoint: str):
    """A replacement for moto's ``LambdaFunction._invoke_lambda``: (payload, errored, logs).
    Invocations run in warm environments (:class:`_Environment`), one per concurrent
    invocation of a function with the same environment variables."""
    idle: dict[str, list[_Environment]] = {}
    lock = threading.Lock()

    def invoke(function, event=None):
        env = {key: value for key, value in os.environ.items() if not key.startswith("TOTES_")}
        env.update({key: str(value) for key, value in (function.environment_vars or {}).items()})
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=function.region,
                   AWS_DEFAULT_REGION=function.region, PYTHONPATH=code_dir,
                   AWS_LAMBDA_FUNCTION_NAME=function.function_name)
        payload = event if isinstance(event, str) else json.dumps(event or {})
        key = json.dumps([function.function_name, function.handler, env], sort_keys=True)
        with lock:
            pool = idle.setdefault(key, [])
            environment = pool.pop() if pool else None
        started = time.monotonic()
        if environment is None:
            environment = _Environment(code_dir, env)
        try:
            document, logs = environment.invoke(function.handler, payload,
                                                float(function.timeout))
        except (TimeoutError, EOFError, ValueError) as exc:
            environment.close()
            document, logs = {"error": {"errorType": "Runtime.ExitError",
                                        "errorMessage": str(exc)}}, ""
        else:
            with lock:
                idle[key].append(environment)
        seconds = time.monotonic() - started
        publish_logs(function.function_name, logs, endpoint, function.region)
        outcome = document["error"]["errorType"] if "error" in document else "ok"
        print(f"[lambda] {function.function_name}: {outcome} in {seconds:.1f} s", flush=True)
        if "error" in document:
            print(f"[lambda]   {document['error']['errorMessage'][:300]}", flush=True)
            return json.dumps(document["error"]), True, logs
        return json.dumps(document["result"], default=str), False, logs
    return invoke


def publish_logs(function_name: str, logs: str, endpoint: str, region: str) -> None:
    """What Lambda's runtime does with a function's output: each line an event of the log
    group ``/aws/lambda/<function>`` (one stream per invocation), and each embedded metric
    format document among them (a JSON line with ``_aws``) the metric data CloudWatch
    extracts from it: per metric, its value(s) under each dimension set, in the document's
    namespace, unit and timestamp (milliseconds)."""
    import boto3

    lines = [line for line in logs.splitlines() if line.strip()]
    if not lines:
        return
    now = int(time.time() * 1000)
    clients = dict(endpoint_url=endpoint, region_name=region, aws_access_key_id="testing",
                   aws_secret_access_key="testing")
    logs_client = boto3.client("logs", **clients)
    group, stream = f"/aws/lambda/{function_name}", f"{now}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        logs_client.create_log_group(logGroupName=group)
    except logs_client.exceptions.ResourceAlreadyExistsException:
        pass  # Terraform created it, as in AWS
    logs_client.create_log_stream(logGroupName=group, logStreamName=stream)
    logs_client.put_log_events(logGroupName=group, logStreamName=stream,
                               logEvents=[{"timestamp": now, "message": line}
                                          for line in lines])
    cloudwatch = boto3.client("cloudwatch", **clients)
    for line in lines:
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if not isinstance(document, dict) or "_aws" not in document:
            continue
        moment = document["_aws"]["Timestamp"] / 1000
        for directive in document["_aws"]["CloudWatchMetrics"]:
            data = []
            for metric in directive["Metrics"]:
                values = document[metric["Name"]]
                for value in values if isinstance(values, list) else [values]:
                    for names in directive["Dimensions"] or [[]]:
                        data.append({"MetricName": metric["Name"],
                                     "Unit": metric.get("Unit", "None"), "Value": float(value),
                                     "Timestamp": moment,
                                     "Dimensions": [{"Name": n, "Value": str(document[n])}
                                                    for n in names]})
            for start in range(0, len(data), 20):
                cloudwatch.put_metric_data(Namespace=directive["Namespace"],
                                           MetricData=data[start:start + 20])


#: Arguments Glue consumes itself, not passed to a job script (the rest are).
_GLUE_OWN = ("--additional-python-modules", "--python-modules-installer-option")


def run_job_locally(job, run, endpoint: str, work: str) -> None:
    """Run one Glue job run of ``job`` (moto's FakeJob) as the module docstring says, and set
    ``run``'s state, ErrorMessage and ExecutionTime (moto's FakeJobRun)."""
    import boto3

    started = time.monotonic()
    folder = tempfile.mkdtemp(prefix=f"{run.job_run_id[:12]}-", dir=work)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=job.backend.region_name,
                      aws_access_key_id="testing", aws_secret_access_key="testing")

    def download(uri: str) -> str:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        target = os.path.join(folder, key.rsplit("/", 1)[-1])
        s3.download_file(bucket, key, target)
        return target

    arguments = dict(run.arguments or {})
    try:
        script = download(job.command["ScriptLocation"])
        wheels = [download(m.strip()) for m in arguments.get(
            "--additional-python-modules", "").split(",") if m.strip().startswith("s3://")]
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("TOTES_", "PYSPARK_"))}
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=job.backend.region_name,
                   AWS_DEFAULT_REGION=job.backend.region_name,
                   PYTHONPATH=os.pathsep.join(wheels))
        argv = [item for name, value in arguments.items() if name not in _GLUE_OWN
                for item in (name, str(value))]
        # Fixed interpreter, the job's own script and arguments.
        done = subprocess.run([sys.executable, script, *argv],  # nosec B603
                              cwd=folder, env=env, capture_output=True, text=True,
                              timeout=60 * int(run.timeout or job.timeout or 60))
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        run.totes_error = "" if done.returncode == 0 else (lines[-1] if lines else
                                                           f"exit code {done.returncode}")
        run.totes_state = "SUCCEEDED" if done.returncode == 0 else "FAILED"
        if done.returncode != 0:
            print(done.stdout[-3000:] + done.stderr[-3000:], flush=True)
    except Exception as exc:  # the run fails as Glue's would; the emulator goes on
        run.totes_error, run.totes_state = f"{type(exc).__name__}: {exc}", "FAILED"
    shutil.rmtree(folder, ignore_errors=True)
    run.totes_seconds = round(time.monotonic() - started)
    print(f"[glue] {job.name} {run.job_run_id[:10]}: {run.totes_state} in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    if run.totes_error:
        print(f"[glue]   {run.totes_error[:300]}", flush=True)


def run_glue_jobs_locally(endpoint: str, work: str) -> None:
    """StartJobRun runs the job (:func:`run_job_locally`) in a thread; GetJobRun reports its
    state (RUNNING until it ends), its ErrorMessage and its ExecutionTime."""
    from moto.glue.models import FakeJob, FakeJobRun
    from moto.moto_api._internal.managed_state_model import ManagedState

    start = FakeJob.start_job_run

    def start_job_run(self, **kwargs):
        run_id = start(self, **kwargs)
        run = next(r for r in self.job_runs if r.job_run_id == run_id)
        run.totes_state, run.totes_error, run.totes_seconds = "RUNNING", "", 0
        threading.Thread(target=run_job_locally, args=(self, run, endpoint, work),
                         daemon=True).start()
        return run_id

    def status(self):
        return getattr(self, "totes_state", None) or ManagedState.status.fget(self)

    as_dict = FakeJobRun.as_dict

    def described(self):
        document = as_dict(self)
        if getattr(self, "totes_state", None):
            document.update(ExecutionTime=self.totes_seconds, GlueVersion="5.0")
            if self.totes_error:
                document["ErrorMessage"] = self.totes_error
        return document

    FakeJob.start_job_run = start_job_run
    FakeJobRun.status = property(status, ManagedState.status.fset)
    FakeJobRun.as_dict = described


def wait_for_glue_job_runs() -> None:
    """moto's Step Functions interpreter (5.2) ends every ``glue:startJobRun.sync`` task in
    States.Runtime (``'NoneType' object has no attribute 'interrupt_all'``: it releases a
    callback endpoint that a Sync-only integration never has). The Glue task's wait is
    replaced by the same loop without it: GetJobRun until the run ends, its JobRun the
    task's result; a run that FAILED raises the States.TaskFailed moto's resolver builds."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service \
        import state_task_service_glue as glue_task

    def eval_integration_pattern(self, env, resource_runtime_part, normalised_parameters,
                                 state_credentials):
        resolve = self._build_sync_resolver(env=env,
                                            resource_runtime_part=resource_runtime_part,
                                            normalised_parameters=normalised_parameters,
                                            state_credentials=state_credentials)
        result = None
        while env.is_running() and not result:
            result = resolve()
            if not result:
                time.sleep(0.5)
        env.stack.append(result)

    glue_task.StateTaskServiceGlue._eval_integration_pattern = eval_integration_pattern


def evaluate_unconditional_statements(bucket, action: str, resource: str):
    """moto's bucket-policy check, without the statements that carry a Condition: moto cannot
    evaluate conditions and would apply such a statement always (our TLS-only Deny would then
    deny everything on this plain-HTTP loopback emulator). Unconditional statements, such as
    the lake's deny on deletes, are still enforced; the stored policy is unchanged."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    if bucket.policy is None:
        return PermissionResult.NEUTRAL
    document = json.loads(bucket.policy)
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    document["Statement"] = [s for s in statements if "Condition" not in s]
    return IAMPolicy(json.dumps(document)).is_action_permitted(action, resource)


def add_missing_step_functions_calls() -> None:
    """Answer the two calls the AWS provider (>= 5.67) makes that moto does not implement:
    ValidateStateMachineDefinition (answered OK: ``make tf-validate`` checks the rendered
    definition with asl-validator) and ListStateMachineVersions (none are published)."""
    from moto.core.responses import ActionResult
    from moto.stepfunctions.responses import StepFunctionResponse

    StepFunctionResponse.validate_state_machine_definition = \
        lambda self: ActionResult({"result": "OK", "diagnostics": [], "truncated": False})
    StepFunctionResponse.list_state_machine_versions = \
        lambda self: ActionResult({"stateMachineVersions": []})


def dispose_delete_markers() -> None:
    """moto 5.2 cannot empty a versioned bucket that holds a delete marker (terraform
    destroy's force_destroy: ``'FakeDeleteMarker' object has no attribute 'dispose'``): a
    delete marker holds no data, so disposing of it does nothing. The processed bucket holds
    delete markers once the Spark job removed its scratch objects."""
    from moto.s3.models import FakeDeleteMarker

    if not hasattr(FakeDeleteMarker, "dispose"):
        FakeDeleteMarker.dispose = lambda self, garbage=False: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5599)
    parser.add_argument("--code", required=True, help="unzipped Lambda code package")
    args = parser.parse_args()
    os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    # moto's state machine interpreter calls Lambda and SNS on localhost:$MOTO_PORT.
    os.environ["MOTO_PORT"] = str(args.port)

    from moto.awslambda import models as lambda_models
    from moto.s3.models import FakeBucket
    from moto.server import ThreadedMotoServer

    FakeBucket.get_permission = evaluate_unconditional_statements
    add_missing_step_functions_calls()
    dispose_delete_markers()

    endpoint = f"http://127.0.0.1:{args.port}"
    lambda_models.LambdaFunction._invoke_lambda = local_invoker(os.path.abspath(args.code),
                                                                endpoint)
    run_glue_jobs_locally(endpoint, tempfile.mkdtemp(prefix="totes-glue-runs-"))
    wait_for_glue_job_runs()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port)
    server.start()
    print(f"AWS emulator on {endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
