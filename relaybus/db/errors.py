"""Telling "the database is unreachable" apart from "this statement failed"."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

# SQLSTATEs that mean the server or the connection is gone, not that the statement
# was wrong: class 08 (connection exception), and the shutdown / start-up states a
# restart or crash goes through.
_UNAVAILABLE_STATES = ("08",)
_UNAVAILABLE_CODES = {"57P01", "57P02", "57P03"}  # admin / crash shutdown, starting up


def database_unavailable(err: BaseException) -> bool:
    """Whether ``err`` says the database could not be reached or went away (a
    refused or broken connection, a server shutting down or starting up), as opposed
    to a statement it refused. Retrying later helps the former, never the latter."""
    if isinstance(err, OSError | ConnectionError):
        return True
    source: BaseException | None = err
    if isinstance(err, DBAPIError):
        if err.connection_invalidated:
            return True
        source = err.orig
    # The driver's own errors (asyncpg raises some unwrapped, e.g. on connecting to a
    # server in recovery) carry the SQLSTATE too.
    code = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
    if isinstance(code, str):
        return code.startswith(_UNAVAILABLE_STATES) or code in _UNAVAILABLE_CODES
    # A socket error wrapped by the driver.
    cause = err.__cause__ or (source.__cause__ if source is not None else None)
    return isinstance(cause, OSError | ConnectionError)
