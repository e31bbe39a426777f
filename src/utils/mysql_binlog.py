"""A MySQL or MariaDB source's binary log (the binlog), read for change data capture through
python-mysql-replication (``pymysqlreplication``, on PyMySQL): whether the server is ready,
where the log stands, a consistent snapshot's position, and the log's events from a
position, decoded into :class:`RowChange`, :class:`Commit` and :class:`Statement`.

**Positions.** A binlog position is a file (``binlog.000003``: a base name and a numeric
index) and a byte offset in it (32 bits: a binlog file stops growing at ``max_binlog_size``,
at most 1 GiB). :func:`encode` packs them into one integer, ``index << 32 | offset``, which
orders positions as the server wrote them (files in index order, offsets within a file) and
fits the lake's 64-bit commit position column (:data:`totes.contracts.cdc.LSN`), where
PostgreSQL's LSN goes: the rest of the pipeline orders versions by it unchanged.
:func:`position_text` writes one as ``binlog.000003:1234``.

**What the server needs** (:func:`readiness`): ``log_bin = ON``, ``binlog_format = ROW``
(each changed row, not the statement), ``binlog_row_image = FULL`` (a delete and an update
carry the whole row), ``binlog_row_metadata = FULL`` (each table map names its columns: the
log says which column a value is, and shows a schema change), a ``server_id``; the role
needs ``REPLICATION SLAVE`` and ``REPLICATION CLIENT`` (MariaDB 10.5+ names the latter
``BINLOG MONITOR``), and SELECT on the tables. These are server settings a role cannot set:
:func:`dba_statements` gives what a DBA runs.

**Reading.** A dump connection registers as a replica with a ``server_id`` of its own
(:func:`reader_server_id`, derived from the pipeline's name: a second reader with the same
id takes the server's dump thread from the first, so two readers of one pipeline never both
read) and is asked not to block: the stream ends where the log ends.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional, Union

import pymysql

from totes.contracts.identifiers import quote_ident
from totes.utils.mysql import ACCESS_DENIED_ERRORS, error_number

#: The server settings change data capture needs, and the value each must have.
REQUIRED_SETTINGS = (("log_bin", "ON"), ("binlog_format", "ROW"), ("binlog_row_image", "FULL"),
                     ("binlog_row_metadata", "FULL"))
#: The global privileges the role needs: each as (what a GRANT names, the names a server
#: shows that give it).
REQUIRED_PRIVILEGES = (("REPLICATION SLAVE", ("REPLICATION SLAVE", "REPLICATION REPLICA",
                                              "REPLICA", "ALL PRIVILEGES")),
                       ("REPLICATION CLIENT", ("REPLICATION CLIENT", "BINLOG MONITOR",
                                               "SUPER", "ALL PRIVILEGES")))
_OFFSET_BITS = 32
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1


def encode(index: int, offset: int) -> int:
    """The binlog position (file index, byte offset) as one ordered integer."""
    return (index << _OFFSET_BITS) | offset


def decode(position: int) -> tuple[int, int]:
    """``(file index, byte offset)`` of an :func:`encode`-d position."""
    return position >> _OFFSET_BITS, position & _OFFSET_MASK


def file_index(name: str) -> int:
    """The numeric index of a binlog file's name (``binlog.000003`` → 3).

    Raises:
        ValueError: the name has no numeric extension.
    """
    stem, _, number = name.rpartition(".")
    if not stem or not number.isdigit():
        raise ValueError(f"{name!r} is not a binlog file name (like binlog.000003)")
    return int(number)


def position_text(position: int, base: Optional[str] = None) -> str:
    """A position as ``binlog.000003:1234`` (``base``: the files' base name; without it,
    ``#3:1234``)."""
    index, offset = decode(position)
    return f"{base}.{index:06d}:{offset}" if base else f"#{index}:{offset}"


def readiness(conn, tables: dict[str, str]) -> list[str]:
    """What stops change data capture of ``tables`` (name → primary key column) from working,
    each with the fix (empty: ready): the server's binlog settings, the role's privileges,
    each table's primary key. ``conn`` is a :class:`~totes.utils.mysql.MySQLConnection`."""
    problems = []
    values = {name.lower(): str(value) for name, value in conn.run(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', "
        "'binlog_row_image', 'binlog_row_metadata', 'server_id')")}
    for name, wanted in REQUIRED_SETTINGS:
        found = values.get(name)
        if found is None:
            problems.append(f"the server has no {name} setting (MySQL 8.0.14+ or MariaDB "
                            f"10.5+ is needed for change data capture from the binlog)")
        elif found.upper() != wanted:
            how = "start the server with --log-bin (and a server_id)" if name == "log_bin" \
                else f"SET GLOBAL {name} = '{wanted}' and in the server's configuration " \
                     f"({name} = {wanted}; on RDS, in the parameter group)"
            problems.append(f"the server runs with {name} = {found}: {how}")
    if values.get("server_id") == "0":
        problems.append("the server runs with server_id = 0: give it a server_id (a "
                        "replica cannot read a server without one)")
    held = privileges(conn)
    user = current_user(conn)
    missing = [grant for grant, names in REQUIRED_PRIVILEGES if not held & set(names)]
    if missing:
        problems.append(f"the role {user} may not read the binlog (it lacks "
                        f"{', '.join(missing)}): GRANT REPLICATION SLAVE, REPLICATION CLIENT "
                        f"ON *.* TO {user}")
    for table, key in tables.items():
        found_key = [c for c, in conn.run(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE "
            "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %(t)s AND CONSTRAINT_NAME = "
            "'PRIMARY' ORDER BY ORDINAL_POSITION", t=table)]
        exists = conn.run("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                          "DATABASE() AND TABLE_NAME = %(t)s", t=table)
        if exists and found_key != [key]:
            problems.append(f"table {table} has no primary key on {key} (its changes would "
                            f"not say which row): ALTER TABLE {quote_ident(table)} ADD PRIMARY "
                            f"KEY ({quote_ident(key)})")
    return problems


def current_user(conn) -> str:
    """The role as a GRANT names it: ``'etl'@'%'``."""
    (user,), = conn.run("SELECT CURRENT_USER()")
    name, _, host = str(user).rpartition("@")
    return f"'{name}'@'{host}'"


def privileges(conn) -> set[str]:
    """The global privileges of the role (upper case), from ``SHOW GRANTS``."""
    held: set[str] = set()
    for grant, in conn.run("SHOW GRANTS FOR CURRENT_USER()"):
        match = re.match(r"GRANT (.+?) ON \*\.\* TO ", str(grant))
        if match:
            held |= {p.strip().upper() for p in match.group(1).split(",")}
    return held


def dba_statements(conn, tables: list[str]) -> list[str]:
    """What a DBA sets and grants for change data capture of ``tables`` and this role (the
    role cannot set server settings itself): the settings not as required, as ``SET
    GLOBAL`` (which the server's configuration must repeat), and the grants the role
    lacks. Empty when nothing is missing."""
    values = {name.lower(): str(value) for name, value in conn.run(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', "
        "'binlog_row_image', 'binlog_row_metadata')")}
    statements = []
    for name, wanted in REQUIRED_SETTINGS:
        if values.get(name, "").upper() == wanted:
            continue
        if name == "log_bin":
            statements.append("-- in the server's configuration: log_bin = ON, server_id = "
                              "<a number>, then restart (on RDS, automated backups on)")
        else:
            statements.append(f"SET GLOBAL {name} = '{wanted}'  -- and {name} = {wanted} in "
                              "the server's configuration")
    held = privileges(conn)
    user = current_user(conn)
    if any(not held & set(names) for _, names in REQUIRED_PRIVILEGES):
        statements.append(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {user}")
    if "ALL PRIVILEGES" not in held and "SELECT" not in held:
        (database,), = conn.run("SELECT DATABASE()")
        for table in tables:
            if not _may_select(conn, table):
                statements.append(f"GRANT SELECT ON {quote_ident(database)}."
                                  f"{quote_ident(table)} TO {user}")
    return statements


def _may_select(conn, table: str) -> bool:
    try:  # an identifier through quote_ident; ANSI_QUOTES is on in every session
        conn.run(f"SELECT 1 FROM {quote_ident(table)} LIMIT 0")  # nosec B608
        return True
    except pymysql.err.MySQLError as exc:
        if error_number(exc) in ACCESS_DENIED_ERRORS:
            return False
        raise


def binary_logs(conn) -> dict[int, tuple[str, int]]:
    """The server's binlog files: index → (name, size in bytes)."""
    return {file_index(row[0]): (str(row[0]), int(row[1]))
            for row in conn.run("SHOW BINARY LOGS")}


def head(conn) -> tuple[int, str]:
    """Where the server writes next: (the position, the files' base name).

    Raises:
        TerminalError (through the session): the binlog is off.
    """
    rows = conn.run("SHOW MASTER STATUS")
    if not rows:
        raise ValueError("the server writes no binlog (log_bin is OFF)")
    name, offset = str(rows[0][0]), int(rows[0][1])
    return encode(file_index(name), offset), name.rpartition(".")[0]


def snapshot_position(conn) -> int:
    """The binlog position consistent with the snapshot of the transaction ``conn`` has just
    started with ``START TRANSACTION WITH CONSISTENT SNAPSHOT``: every transaction committed
    at or before it is in the snapshot, none after. MariaDB reports it exactly
    (``binlog_snapshot_file`` and ``binlog_snapshot_position``); on MySQL, which does not,
    the server's position read right after the snapshot was taken (a transaction committing
    between the two is then neither copied nor read: see docs/cdc.md, "Limits")."""
    found = {name.lower(): value for name, value in
             conn.run("SHOW STATUS LIKE 'binlog_snapshot_%'")}
    name, offset = found.get("binlog_snapshot_file"), found.get("binlog_snapshot_position")
    if name and offset:
        return encode(file_index(str(name)), int(offset))
    return head(conn)[0]


def behind_bytes(logs: dict[int, tuple[str, int]], position: int) -> int:
    """How many bytes of binlog the server holds past ``position`` (``logs`` as
    :func:`binary_logs` gives them)."""
    index, offset = decode(position)
    return sum(size - (offset if i == index else 0) for i, (_, size) in logs.items()
               if i >= index)


def reader_server_id(name: str) -> int:
    """The replica ``server_id`` a pipeline named ``name`` reads the binlog with (stable,
    in 1,000,000,000–1,999,999,999, away from the small ids servers are usually given)."""
    return 1_000_000_000 + zlib.crc32(name.encode()) % 1_000_000_000


@dataclass(frozen=True)
class TableColumns:
    """A table map: the columns the following row events of ``table`` carry (names from
    ``binlog_row_metadata = FULL``; None where the server did not send them)."""

    table: str
    columns: tuple[Optional[str], ...]


@dataclass(frozen=True)
class RowChange:
    """One changed row of ``table``: ``operation`` ``insert`` (``after`` only), ``update``
    (both) or ``delete`` (``before`` only), each a dict column → value as PyMySQL reads it
    (int, Decimal, str, bytes, datetime, date, timedelta...)."""

    table: str
    operation: str
    before: Optional[dict]
    after: Optional[dict]


@dataclass(frozen=True)
class Commit:
    """A transaction's end (its XID event): ``position`` after it, ``commit_time`` (UTC,
    whole seconds: the binlog's resolution)."""

    position: int
    commit_time: datetime


@dataclass(frozen=True)
class Statement:
    """A statement logged as such (DDL: ``ALTER TABLE``, ``TRUNCATE``...), in ``schema``
    (the statement's default database), ``position`` after it, ``time`` when it ran (UTC,
    whole seconds; None when not known)."""

    sql: str
    schema: str
    position: int
    time: Optional[datetime] = None


Event = Union[TableColumns, RowChange, Commit, Statement]


def connection_settings(params: dict) -> dict:
    """PyMySQL arguments of the dump connection, from a
    :class:`~totes.utils.mysql.MySQLDatabase`'s ``params`` (no database: a dump reads the
    server's whole log)."""
    settings = {k: v for k, v in params.items() if k != "database"}
    settings.update(charset="utf8mb4", connect_timeout=10)
    return settings


def events(params: dict, start: int, file_name: str, database: str, tables: list[str],
           server_id: int) -> Iterator[Event]:
    """The binlog's events from ``start`` (an :func:`encode`-d position in the file
    ``file_name``) to the log's current end: row changes and table maps of ``tables`` in
    ``database``, every commit, and every statement logged as such (the caller decides
    which concern it). The stream is closed when the iterator is closed or read to its end.

    Raises:
        pymysql errors: the server refused or lost the dump (the caller's session maps them).
    """
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import QueryEvent, RotateEvent, XidEvent
    from pymysqlreplication.row_event import (DeleteRowsEvent, TableMapEvent, UpdateRowsEvent,
                                              WriteRowsEvent)

    index, offset = decode(start)
    stream = BinLogStreamReader(
        connection_settings=connection_settings(params), server_id=server_id,
        blocking=False, resume_stream=True, log_file=file_name, log_pos=offset,
        only_events=[QueryEvent, XidEvent, RotateEvent, TableMapEvent, WriteRowsEvent,
                     UpdateRowsEvent, DeleteRowsEvent],
        only_schemas=[database], only_tables=list(tables), enable_logging=False)
    try:
        for event in stream:
            current = file_index(stream.log_file)
            if isinstance(event, RotateEvent):
                continue
            end = encode(current, event.packet.log_pos)
            if isinstance(event, XidEvent):
                yield Commit(end, datetime.fromtimestamp(event.timestamp, timezone.utc))
            elif isinstance(event, QueryEvent):
                schema = event.schema.decode() if isinstance(event.schema, bytes) \
                    else str(event.schema or "")
                if event.query.strip().upper() in ("BEGIN", "COMMIT"):
                    if event.query.strip().upper() == "COMMIT":  # a non-XA engine's commit
                        yield Commit(end, datetime.fromtimestamp(event.timestamp,
                                                                 timezone.utc))
                    continue
                yield Statement(event.query, schema, end,
                                datetime.fromtimestamp(event.timestamp, timezone.utc))
            elif isinstance(event, TableMapEvent):
                if event.schema == database and event.table in tables:
                    yield TableColumns(event.table, tuple(c.name for c in event.columns))
            elif event.schema == database and event.table in tables:
                for row in event.rows:
                    if isinstance(event, WriteRowsEvent):
                        yield RowChange(event.table, "insert", None, row["values"])
                    elif isinstance(event, DeleteRowsEvent):
                        yield RowChange(event.table, "delete", row["values"], None)
                    else:
                        yield RowChange(event.table, "update", row["before_values"],
                                        row["after_values"])
    finally:
        stream.close()


_DDL = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(ALTER\s+(?:ONLINE\s+|IGNORE\s+)*TABLE|TRUNCATE"
                  r"(?:\s+TABLE)?|DROP\s+(?:TEMPORARY\s+)?TABLE|RENAME\s+TABLE|CREATE\s+"
                  r"(?:OR\s+REPLACE\s+)?TABLE)\s+(.*)$", re.IGNORECASE | re.DOTALL)
#: One identifier: back-quoted (a doubled back-quote inside), double-quoted (ANSI_QUOTES) or
#: bare.
_IDENTIFIER = r'(?:`(?:[^`]|``)+`|"(?:[^"]|"")+"|[\w$]+)'
#: A table name, optionally qualified by its database, at the start of a text.
_NAME = re.compile(rf"\s*({_IDENTIFIER})(?:\s*\.\s*({_IDENTIFIER}))?", re.DOTALL)
_IF_EXISTS = re.compile(r"\s*IF\s+(?:NOT\s+)?EXISTS\b", re.IGNORECASE)


def _unquoted(identifier: str) -> str:
    if identifier[:1] == "`":
        return identifier[1:-1].replace("``", "`")
    if identifier[:1] == '"':
        return identifier[1:-1].replace('""', '"')
    return identifier


def _names(text: str, kind: str) -> list[tuple[Optional[str], str]]:
    """The tables a DDL statement of ``kind`` acts on, from ``text`` (what follows its
    keywords), as ``(database or None, table)``: the one table of ``ALTER``, ``TRUNCATE``
    and ``CREATE`` (not the source of ``CREATE TABLE … LIKE`` or ``… AS SELECT``, nor a table
    a foreign key references), every table of ``DROP``, both sides of each pair of
    ``RENAME``."""
    found: list[tuple[Optional[str], str]] = []
    rest = text
    if found_if := _IF_EXISTS.match(rest):
        rest = rest[found_if.end():]
    while True:
        match = _NAME.match(rest)
        if not match:
            break
        first, second = match.group(1), match.group(2)
        found.append((_unquoted(first), _unquoted(second)) if second else
                     (None, _unquoted(first)))
        rest = rest[match.end():]
        if kind == "RENAME TABLE" and (to := re.match(r"\s*TO\b", rest, re.IGNORECASE)):
            rest = rest[to.end():]
            continue
        if kind in ("DROP TABLE", "RENAME TABLE") and (comma := re.match(r"\s*,", rest)):
            rest = rest[comma.end():]
            continue
        break
    return found


def statement_tables(statement: Statement, database: str, tables: list[str]
                     ) -> tuple[Optional[str], list[str]]:
    """Which of ``tables`` (of ``database``) a logged statement changes the shape or rows of,
    and how: ``("TRUNCATE", [...])``, ``("ALTER TABLE", [...])``, ... (``(None, [])`` for a
    statement that concerns none of them). Only the tables the statement acts on count
    (:func:`_names`): ``CREATE TABLE copy LIKE sales_order`` or a foreign key that references
    ``payment`` leaves those tables alone. Names compare without case (a server with
    ``lower_case_table_names`` set takes ``SALES_ORDER`` for ``sales_order``: a table
    stopped in doubt is safer than a change missed); an unqualified name is in the
    statement's default database."""
    match = _DDL.match(statement.sql)
    if not match:
        return None, []
    kind = " ".join(match.group(1).upper().split())
    kind = "TRUNCATE" if kind.startswith("TRUNCATE") else kind
    kind = "CREATE TABLE" if kind.startswith("CREATE") else kind
    kind = "ALTER TABLE" if kind.startswith("ALTER") else kind
    kind = "DROP TABLE" if kind.startswith("DROP") else kind
    named = {((schema or statement.schema).lower(), table.lower()) for schema, table in
             _names(match.group(2), kind)}
    return kind, [table for table in tables if (database.lower(), table.lower()) in named]
