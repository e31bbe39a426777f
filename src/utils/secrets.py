"""Reading a database's connection from AWS Secrets Manager: the secret's JSON, as RDS writes
it (``{"engine", "host", "port", "username", "password", "dbname"}``)."""
from __future__ import annotations

import json

from totes.contracts.errors import ConfigError, DatabaseUnavailable


def read_secret(role: str, secret_id: str, session=None) -> dict:
    """The JSON document of secret ``secret_id``, which locates the ``role`` database.

    Raises:
        ConfigError: the secret does not exist, may not be read, or is not a JSON object.
        DatabaseUnavailable: Secrets Manager could not be reached or throttled (retry).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = (session or boto3.session.Session()).client("secretsmanager")
    try:
        value = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "InternalServiceError"):
            raise DatabaseUnavailable(f"secret {secret_id!r} of the {role} database: "
                                      f"{code}") from exc
        raise ConfigError(f"secret {secret_id!r} of the {role} database: {code}") from exc
    except BotoCoreError as exc:
        raise DatabaseUnavailable(f"secret {secret_id!r} of the {role} database: "
                                  f"{type(exc).__name__}") from exc
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"secret {secret_id!r} of the {role} database must be JSON with "
                          "host, port, username, password and dbname") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"secret {secret_id!r} of the {role} database must be a JSON "
                          "object with host, port, username, password and dbname")
    return doc
