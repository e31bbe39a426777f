"""SQL identifiers: the one rule every name from configuration or code follows before it is
put into a statement.

A name is a plain lower-case identifier, ``[a-z_][a-z0-9_]*`` of at most 63 characters
(PostgreSQL's limit); it is then double-quoted, so that it can never be read as a keyword or
as anything but one identifier. Values are never formatted into SQL: they are bound.
"""
from __future__ import annotations

import re

from totes.contracts.errors import ConfigError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """Return ``name`` as a quoted SQL identifier, after checking it is a plain lower-case name.

    Raises:
        ConfigError: ``name`` is not ``[a-z_][a-z0-9_]*`` of at most 63 characters.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(
            f"{name!r} is not a valid identifier: use lower-case letters, digits and _ "
            "(at most 63 characters, not starting with a digit)"
        )
    return f'"{name}"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``: a relation named with its schema, both checked and quoted, so
    that a statement never depends on the role's ``search_path``.

    Raises:
        ConfigError: either is not a valid identifier (see :func:`quote_ident`).
    """
    return f"{quote_ident(schema)}.{quote_ident(name)}"
