"""database_unavailable: the worker's database being gone is told apart from a
statement the database refused (only the former waits without using an attempt)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from relaybus.db.errors import database_unavailable


class _DriverError(Exception):
    """What a DB-API driver raises, with the SQLSTATE it carries."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(sqlstate: str | None, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", None, _DriverError(sqlstate), connection_invalidated=invalidated)


def test_refused_or_broken_connections_are_unavailability() -> None:
    assert database_unavailable(ConnectionRefusedError(111, "refused"))
    assert database_unavailable(OSError("network unreachable"))
    assert database_unavailable(_wrapped("08006"))  # connection failure
    assert database_unavailable(_wrapped("08003"))  # connection does not exist
    assert database_unavailable(_wrapped("57P01"))  # admin shutdown
    assert database_unavailable(_wrapped("57P03"))  # cannot connect now (recovery)
    assert database_unavailable(_wrapped(None, invalidated=True))


def test_statements_the_database_refused_are_not() -> None:
    assert not database_unavailable(_wrapped("22012"))  # division by zero
    assert not database_unavailable(_wrapped("23505"))  # unique violation
    assert not database_unavailable(_wrapped("40001"))  # serialization failure
    assert not database_unavailable(ValueError("bad payload"))
