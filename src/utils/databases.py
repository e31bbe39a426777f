"""Which database a URL or a Secrets Manager secret names: a PostgreSQL
:class:`~totes.utils.postgres.Database` or, for a source, a MySQL/MariaDB
:class:`~totes.utils.mysql.MySQLDatabase` (the warehouse is PostgreSQL)."""
from __future__ import annotations

from typing import Union

from totes.contracts.errors import ConfigError
from totes.utils.database_url import MYSQL_ENGINES, MYSQL_SCHEMES
from totes.utils.mysql import MySQLDatabase
from totes.utils.postgres import Database
from totes.utils.secrets import read_secret

#: A source database of either engine (both have ``session``, ``describe``, ``location``).
SourceDatabase = Union[Database, MySQLDatabase]


def database_from_url(role: str, url: str) -> SourceDatabase:
    """The database a URL names: a :class:`Database` for ``postgresql://``, a
    :class:`MySQLDatabase` for ``mysql://`` or ``mariadb://`` (a source only).

    Raises:
        ConfigError: as :meth:`Database.from_url` / :meth:`MySQLDatabase.from_url`, or a MySQL
            URL for the warehouse.
    """
    if url.partition("://")[0].lower() in MYSQL_SCHEMES:
        _refuse_mysql(role)
        return MySQLDatabase.from_url(role, url)
    return Database.from_url(role, url)


def database_from_secret(role: str, secret_id: str, session=None) -> SourceDatabase:
    """The database whose connection JSON secret ``secret_id`` holds: a :class:`Database`, or
    a :class:`MySQLDatabase` when the JSON says ``"engine": "mysql"`` (a source only).

    Raises:
        ConfigError: the secret is not JSON, lacks host, username, password or dbname, or
            names MySQL for the warehouse.
        DatabaseUnavailable: Secrets Manager could not be reached (retry).
    """
    doc = read_secret(role, secret_id, session)
    if str(doc.get("engine", "")).lower() in MYSQL_ENGINES:
        _refuse_mysql(role)
        return MySQLDatabase.from_document(role, secret_id, doc)
    return Database.from_document(role, secret_id, doc)


def as_warehouse(database: SourceDatabase) -> Database:
    """``database`` as the warehouse, which is PostgreSQL.

    Raises:
        ConfigError: it is a MySQL database (a source only).
    """
    if not isinstance(database, Database):
        _refuse_mysql("warehouse")
        raise ConfigError(f"the {database.describe()} cannot be the warehouse")
    return database


def _refuse_mysql(role: str) -> None:
    if role == "warehouse":
        raise ConfigError("the warehouse database must be PostgreSQL (postgresql://...); "
                          "MySQL and MariaDB are supported as sources")
