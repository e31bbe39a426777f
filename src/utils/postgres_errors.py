"""PostgreSQL errors (pg8000's) mapped to the pipeline's: :class:`~totes.contracts.errors.
DatabaseUnavailable` when a retry can help, a ``TerminalError`` otherwise, the message saying
what was being done and the server's own words (never a password)."""
from __future__ import annotations

import socket
from typing import Optional

from pg8000.exceptions import DatabaseError, InterfaceError

from totes.contracts.errors import DatabaseUnavailable, TerminalError

#: Once connected, how long one network read may wait: a statement may legitimately send
#: nothing for minutes (the sort before a large extract's first row), so this is the longest
#: a stage may run (Lambda's 15 minutes), not the connection wait.
READ_TIMEOUT_SECONDS = 900.0

# SQLSTATE classes a retry cannot fix: invalid authorization (28), invalid catalog name (3D).
REJECTED_SQLSTATE_PREFIXES = ("28", "3D")


def server_error(exc: Optional[BaseException]) -> Optional[DatabaseError]:
    """The server's error behind ``exc``, if any. When a server refuses a connection (no such
    database, bad password) it sends its error and closes the socket; pg8000 then writes a
    Terminate message to that socket and raises the broken pipe as "network error", with the
    server's error only in the exception's context."""
    while exc is not None:
        if isinstance(exc, DatabaseError):
            return exc
        exc = exc.__context__
    return None


def sqlstate_and_message(exc: BaseException) -> tuple[str, str]:
    """(SQLSTATE, message with the server's detail line, such as the key a constraint names)."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    message = fields.get("M", str(exc))
    if fields.get("D"):
        message = f"{message}: {fields['D']}"
    return fields.get("C", ""), message


def sqlstate_of(exc: BaseException) -> str:
    """The SQLSTATE of a pg8000 ``DatabaseError`` (``"23505"``), or ``""``."""
    return sqlstate_and_message(exc)[0]


def network_reason(exc: BaseException) -> str:
    """What the operating system said when a connection failed (``Connection refused``,
    ``Name or service not known``, ``timed out``), not the driver's own wording."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.strerror or str(seen)):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


# SQLSTATE classes where the same statement can succeed later: connection exception (08),
# transaction rollback such as serialization failure or deadlock (40), insufficient
# resources (53), operator intervention such as a shutdown or a cancelled query (57), and a
# lock not granted within lock_timeout (55P03).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "53", "57", "55P03")


def translate_error(exc: BaseException, doing: str) -> BaseException:
    """Turn a pg8000 error raised while ``doing`` (e.g. "extracting table payment from the
    source database") into a :class:`DatabaseUnavailable` when a retry can help, else into a
    ``TerminalError`` subclass; other exceptions are returned unchanged."""
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailable(f"{doing}: no answer for {READ_TIMEOUT_SECONDS:g} s")
    if isinstance(exc, (InterfaceError, ConnectionError, socket.gaierror)):
        return DatabaseUnavailable(f"{doing}: connection lost ({network_reason(exc)})")
    if isinstance(exc, DatabaseError):
        state, message = sqlstate_and_message(exc)
        kind = DatabaseUnavailable if state.startswith(_TRANSIENT_SQLSTATE_PREFIXES) \
            else TerminalError
        return kind(f"{doing}: {message} (SQLSTATE {state})")
    return exc
