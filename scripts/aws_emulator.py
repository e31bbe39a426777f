"""An AWS emulator on loopback for ``make deploy-local``: moto's server, with Lambda functions
run by this machine's Python instead of Docker (which these machines lack).

Test tooling only; the product never imports it. Each invocation runs the function's handler
in a subprocess, from the packaged code (``build/code``, the working directory as in Lambda's
/var/task), with the function's own environment variables plus the emulator's endpoint and
test credentials. A handler's exception is returned as Lambda returns it
(``{"errorType": "DatabaseUnavailable", "errorMessage": ...}``), so the state machine's Retry
and Catch see the project's error names.

    python scripts/aws_emulator.py --port 5599 --code build/code
"""
from __future__ import annotations

import argparse
import json
import os
# Runs this machine's Python on the project's own code.
import subprocess  # nosec B404
import sys
import tempfile
import time

RUNNER = r"""
import importlib, json, sys, traceback
module, _, name = sys.argv[1].rpartition(".")
event = json.loads(sys.stdin.read() or "{}")
try:
    result = getattr(importlib.import_module(module), name)(event, None)
    document = {"result": result}
except Exception as exc:
    traceback.print_exc()
    document = {"error": {"errorType": type(exc).__name__, "errorMessage": str(exc),
                          "stackTrace": traceback.format_exc().splitlines()}}
with open(sys.argv[2], "w") as out:
    json.dump(document, out, default=str)
"""


def local_invoker(code_dir: str, endpoint: str):
    """A replacement for moto's ``LambdaFunction._invoke_lambda``: (payload, errored, logs)."""
    def invoke(function, event=None):
        env = {key: value for key, value in os.environ.items() if not key.startswith("TOTES_")}
        env.update({key: str(value) for key, value in (function.environment_vars or {}).items()})
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=function.region,
                   AWS_DEFAULT_REGION=function.region, PYTHONPATH=code_dir,
                   AWS_LAMBDA_FUNCTION_NAME=function.function_name)
        payload = event if isinstance(event, str) else json.dumps(event or {})
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            started = time.monotonic()
            # Fixed interpreter and runner.
            run = subprocess.run(  # nosec B603
                [sys.executable, "-c", RUNNER, function.handler, result.name], input=payload,
                cwd=code_dir, env=env, capture_output=True, text=True,
                timeout=int(function.timeout))
            logs = run.stdout + run.stderr
            try:
                with open(result.name) as produced:
                    document = json.load(produced)
            except ValueError:
                document = {"error": {"errorType": "Runtime.ExitError",
                                      "errorMessage": f"exit code {run.returncode}"}}
        seconds = time.monotonic() - started
        outcome = document["error"]["errorType"] if "error" in document else "ok"
        print(f"[lambda] {function.function_name}: {outcome} in {seconds:.1f} s", flush=True)
        if "error" in document:
            print(f"[lambda]   {document['error']['errorMessage'][:300]}", flush=True)
            return json.dumps(document["error"]), True, logs
        return json.dumps(document["result"], default=str), False, logs
    return invoke


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

    endpoint = f"http://127.0.0.1:{args.port}"
    lambda_models.LambdaFunction._invoke_lambda = local_invoker(os.path.abspath(args.code),
                                                                endpoint)
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
