"""Upload the extract configuration to S3, where plan reads it at every execution
(``make upload-config``): changing a table's settings needs no code deployment.

The file is checked first, as plan checks it (an invalid file is never uploaded). It goes to
``s3://<artifacts bucket>/config/<source>/pipeline.yaml``; the bucket is read from the SSM
parameters immutable-terraform publishes (``/<project>/<environment>/artifacts_bucket``).

    python scripts/upload_config.py [--config config/pipeline.yaml] [--source totesys]
                                    [--project totes] [--environment prod]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import boto3

from totes.utils.config_file import load_config


def upload(session, config: Path, source: str, project: str, environment: str) -> str:
    """Check ``config`` and upload it; returns its S3 URI.

    Raises:
        ConfigError: the file is invalid (nothing is uploaded).
    """
    load_config(config)
    name = f"/{project}/{environment}/artifacts_bucket"
    bucket = session.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    key = f"config/{source}/pipeline.yaml"
    session.client("s3").put_object(Bucket=bucket, Key=key, Body=config.read_bytes(),
                                    ContentType="application/yaml")
    return f"s3://{bucket}/{key}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/pipeline.yaml"))
    parser.add_argument("--source", default="totesys")
    parser.add_argument("--project", default="totes")
    parser.add_argument("--environment", default="prod")
    arguments = parser.parse_args()
    uri = upload(boto3.session.Session(), arguments.config, arguments.source,
                 arguments.project, arguments.environment)
    print(f"uploaded {arguments.config} to {uri}; the next execution uses it")


if __name__ == "__main__":
    main()
