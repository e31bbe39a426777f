"""Database URLs: ``postgresql://``, ``mysql://`` and ``mariadb://`` read by one rule, and the
engines a Secrets Manager secret may name."""
from __future__ import annotations

from urllib.parse import parse_qs, unquote

from totes.contracts.errors import ConfigError

#: The ``engine`` values of a secret that mean MySQL (as :mod:`totes.utils.mysql` reads them).
MYSQL_ENGINES = ("mysql", "mariadb", "aurora-mysql")
#: URL schemes of a MySQL or MariaDB database.
MYSQL_SCHEMES = ("mysql", "mariadb")


def parse_url(role: str, url: str, schemes: tuple[str, ...], example: str,
              default_port: int) -> tuple[str, dict]:
    """Split a database URL into ``(scheme, {"user", "password", "host", "port", "database",
    "query"})``, every part percent-decoded; ``password`` is None when absent.

    How it is read (libpq's URI form, made robust for passwords): the credentials are
    everything before the **last** ``@``, the user before their first ``:`` and the password
    after it, so a password may hold any character, ``/ ? # @ :`` included. A user name
    holding ``:`` or ``@``, and a database name or query value holding ``/ ? # @``, must be
    percent-encoded. The URL is never echoed in a message.

    Raises:
        ConfigError: the scheme is not one of ``schemes``, the port is not a number from 1 to
            65535, or the URL names no database (the message names the role, not the URL).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in schemes:
        raise ConfigError(f"{role} database URL must look like {example}")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    location, _, query_text = location.partition("?")
    hostport, _, database = location.partition("/")
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    database = unquote(database.split("#", 1)[0])
    if not database:
        raise ConfigError(f"{role} database URL names no database (…/dbname)")
    user, colon, password = userinfo.partition(":")
    hostname, port_text = _host_and_port(hostport)
    return scheme.lower(), {
        "user": unquote(user), "password": unquote(password) if colon and password else None,
        "host": unquote(hostname) or "localhost",
        "port": _port(role, port_text or query.get("port") or str(default_port)),
        "database": database, "query": query}


def _host_and_port(hostport: str) -> tuple[str, str]:
    """``("db.example.com", "5432")`` of ``db.example.com:5432``; IPv6 in brackets."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = hostport.partition(":")
    return host, port


def _port(role: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{role} database URL: port {text!r} is not a number from 1 to 65535")
    return port
