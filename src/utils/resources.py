"""The resources a Lambda function works on, built from :class:`totes.utils.settings.Settings`:
the databases, the two storage areas, the pipeline file's path and the ledger. (Locally,
:mod:`totes.local.workspace` resolves the same resources with the command's flags and the
embedded defaults.)"""
from __future__ import annotations

from typing import Literal, Optional, overload

from totes.contracts.config import DEFAULT_CONFIG_PATH
from totes.contracts.errors import ConfigError
from totes.utils import settings as settings_module
from totes.utils.databases import (SourceDatabase, as_warehouse, database_from_secret,
                                   database_from_url)
from totes.utils.postgres import Database
from totes.utils.lake import Lake
from totes.utils.ledger import Ledger, ledger_from_uri
from totes.utils.settings import Settings

Role = Literal["source", "warehouse"]
Area = Literal["lake", "processed"]


@overload
def database(role: Literal["warehouse"], settings: Optional[Settings] = None) -> Database: ...


@overload
def database(role: Literal["source"], settings: Optional[Settings] = None) -> SourceDatabase: ...


def database(role: Role, settings: Optional[Settings] = None) -> SourceDatabase:
    """The ``role`` database from ``TOTES_<ROLE>_URL`` or ``TOTES_<ROLE>_SECRET`` (a MySQL
    source is a :class:`totes.utils.mysql.MySQLDatabase`).

    Raises:
        ConfigError: neither variable is set, or what it names is invalid.
        DatabaseUnavailable: Secrets Manager could not be reached (retry).
    """
    settings = settings or settings_module.current()
    url, secret = getattr(settings, f"{role}_url"), getattr(settings, f"{role}_secret")
    if url or secret:
        found = database_from_url(role, url) if url else database_from_secret(role, secret)
        return as_warehouse(found) if role == "warehouse" else found
    prefix = f"{settings_module.PREFIX}{role.upper()}"
    raise ConfigError(f"no {role} database: set {prefix}_URL or {prefix}_SECRET")


def storage(area: Area, settings: Optional[Settings] = None) -> Lake:
    """The storage area ``TOTES_LAKE`` or ``TOTES_PROCESSED`` names.

    Raises:
        ConfigError: the variable is not set, or names an unsupported scheme.
    """
    settings = settings or settings_module.current()
    uri = getattr(settings, area)
    if not uri:
        raise ConfigError(f"{settings_module.variable(area)} is not set (a directory or "
                          "s3://bucket/prefix)")
    return Lake(uri)


def config_path(settings: Optional[Settings] = None) -> str:
    """``TOTES_CONFIG`` or the default ``config/pipeline.yaml``."""
    return (settings or settings_module.current()).config or DEFAULT_CONFIG_PATH


def ledger(settings: Optional[Settings] = None) -> Optional[Ledger]:
    """The ledger ``TOTES_LEDGER`` names, or None when it is not set.

    Raises:
        ConfigError: an unsupported scheme.
    """
    uri = (settings or settings_module.current()).ledger
    return ledger_from_uri(uri) if uri else None
