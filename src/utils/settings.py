"""Runtime settings from the environment: where the databases, the lake and the processed area
are. The same variables serve the Lambda functions and the local command line (whose flags
override them).

=========================  ==============================================================
``TOTES_SOURCE_URL``       source database URL (``postgresql://user:pass@host:port/db``)
``TOTES_SOURCE_SECRET``    or: Secrets Manager secret with the source connection JSON
``TOTES_WAREHOUSE_URL``    warehouse database URL
``TOTES_WAREHOUSE_SECRET`` or: Secrets Manager secret with the warehouse connection JSON
``TOTES_LAKE``             ingest lake: a directory or ``s3://bucket/prefix``
``TOTES_PROCESSED``        processed area: a directory or ``s3://bucket/prefix``
``TOTES_CONFIG``           pipeline YAML (default ``config/pipeline.yaml``)
``TOTES_LEDGER``           run ledger: ``dynamodb://table`` or ``sqlite:///path`` (none: no
                           records, no leases)
=========================  ==============================================================
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

from totes.utils.config import DEFAULT_CONFIG_PATH
from totes.utils.db import Database, database_from_url
from totes.utils.errors import ConfigError
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, ledger_from_uri


def database_from_env(role: str, env: Mapping[str, str] = os.environ) -> Database:
    """The ``role`` ("source" or "warehouse") database (a MySQL source is a
    :class:`totes.utils.mysql.MySQLDatabase`) from ``TOTES_<ROLE>_URL`` or
    ``TOTES_<ROLE>_SECRET``.

    Raises:
        ConfigError: neither variable is set.
    """
    prefix = f"TOTES_{role.upper()}"
    if env.get(f"{prefix}_URL"):
        return database_from_url(role, env[f"{prefix}_URL"])
    if env.get(f"{prefix}_SECRET"):
        return Database.from_secret(role, env[f"{prefix}_SECRET"])
    raise ConfigError(f"no {role} database: set {prefix}_URL or {prefix}_SECRET")


def lake_from_env(variable: str, env: Mapping[str, str] = os.environ) -> Lake:
    """The storage area named by ``variable`` (``TOTES_LAKE`` or ``TOTES_PROCESSED``).

    Raises:
        ConfigError: the variable is not set.
    """
    uri: Optional[str] = env.get(variable)
    if not uri:
        raise ConfigError(f"{variable} is not set (a directory or s3://bucket/prefix)")
    return Lake(uri)


def config_path_from_env(env: Mapping[str, str] = os.environ) -> str:
    """``TOTES_CONFIG`` or the default ``config/pipeline.yaml``."""
    return env.get("TOTES_CONFIG") or DEFAULT_CONFIG_PATH


def ledger_from_env(env: Mapping[str, str] = os.environ) -> Optional[Ledger]:
    """The ledger ``TOTES_LEDGER`` names, or None when it is not set.

    Raises:
        ConfigError: an unsupported scheme.
    """
    uri = env.get("TOTES_LEDGER")
    return ledger_from_uri(uri) if uri else None
