"""Put the values of the secrets immutable-terraform created, and subscribe the alert address
to the alert topic (``make put-secrets``). The values never pass through Terraform, so they
are in no state file, variable or repository.

Values come from the environment, or are asked for (hidden for URLs, which hold passwords):
``TOTES_SOURCE_URL`` and ``TOTES_WAREHOUSE_URL`` (``postgresql://user:pass@host:5432/db``;
``?sslmode=disable`` turns TLS off) and ``TOTES_ALERT_EMAIL``. Where the secrets are is read
from the SSM parameters immutable-terraform publishes (``/<project>/<environment>/...``).

    python scripts/put_secrets.py [--project totes] [--environment prod]
"""
from __future__ import annotations

import argparse
import getpass
import os

import boto3

from totes.utils.databases import database_from_url


def parameters(ssm, project: str, environment: str) -> dict[str, str]:
    """The names and ARNs immutable-terraform published, by short name."""
    path = f"/{project}/{environment}/"
    found = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path):
        for parameter in page["Parameters"]:
            found[parameter["Name"][len(path):]] = parameter["Value"]
    if not found:
        raise SystemExit(f"no parameters under {path}: apply immutable-terraform first")
    return found


def put_secrets(session, project: str, environment: str, source_url: str, warehouse_url: str,
                alert_email: str) -> dict[str, str]:
    """Store both connections and the alert address; subscribe the address to the alert topic
    (AWS e-mails it a confirmation link). Returns the parameters used."""
    found = parameters(session.client("ssm"), project, environment)
    secrets = session.client("secretsmanager")
    for role, url in (("source", source_url), ("warehouse", warehouse_url)):
        secrets.put_secret_value(SecretId=found[f"{role}_secret_arn"],
                                 SecretString=database_from_url(role, url).to_secret())
    secrets.put_secret_value(SecretId=found["alerts_secret_arn"], SecretString=alert_email)
    session.client("sns").subscribe(TopicArn=found["alert_topic_arn"], Protocol="email",
                                    Endpoint=alert_email)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="Put the totes secrets' values.")
    parser.add_argument("--project", default="totes")
    parser.add_argument("--environment", default="prod")
    args = parser.parse_args()
    source = os.environ.get("TOTES_SOURCE_URL") or getpass.getpass("Source database URL: ")
    warehouse = os.environ.get("TOTES_WAREHOUSE_URL") or getpass.getpass("Warehouse URL: ")
    email = os.environ.get("TOTES_ALERT_EMAIL") or input("Alert e-mail address: ")
    put_secrets(boto3.session.Session(), args.project, args.environment, source, warehouse,
                email)
    print(f"Secrets of {args.project}-{args.environment} put; confirm the subscription e-mail "
          f"sent to {email}.")


if __name__ == "__main__":
    main()
