"""Reading the pipeline file (:mod:`totes.contracts.config`) from where it is kept: a local
file, or ``s3://bucket/key.yaml``, where the state machine's plan reads it, so that a change
needs no deployment."""
from __future__ import annotations

from pathlib import Path

from totes.contracts.config import DEFAULT_CONFIG_PATH, PipelineConfig, parse_config_text
from totes.contracts.errors import ConfigError, StorageUnavailable


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> PipelineConfig:
    """Read and validate the YAML file at ``path``: a local file, or ``s3://bucket/key.yaml``.

    Raises:
        ConfigError: the file is missing, is not YAML, or breaks the schema; the message names
            the file and the key, e.g. ``tables.payment.watermark_colum: extra inputs are not
            permitted``.
        StorageUnavailable: S3 could not be reached (retry).
    """
    if str(path).startswith("s3://"):
        text = _read_s3(str(path))
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    return parse_config_text(text, source=str(path))


def _read_s3(uri: str) -> str:
    """The text of the object at ``s3://bucket/key``."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        body = boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=key)["Body"]
        return body.read().decode("utf-8")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "404", "403"):
            raise ConfigError(f"cannot read configuration {uri}: {code}") from None
        raise StorageUnavailable(f"cannot read configuration {uri}: {code}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"cannot read configuration {uri}: "
                                 f"{type(exc).__name__}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"configuration {uri} is not UTF-8 text") from None
