"""The database package's errors and the one formatter of an error as one line.

Lives in `db` (the bottom of `cli -> orchestrator -> db`) so that the orchestrator and the CLI
use the same formatter; `workers` may not import `db` and keeps its own.
"""

from __future__ import annotations

import sqlite3


class DatabaseError(Exception):
    """The database cannot be used as asked (unreachable, missing, not rtgrid's). One-line message."""


class SchemaOutOfDate(DatabaseError):
    """The database's schema revision is not the one this rtgrid needs."""


def one_line(exc: BaseException, *, last: bool = False, typed: bool = False) -> str:
    """An error as one line: its message's first non-empty line (`last`: the last one, where Ray puts
    the original error), SQLAlchemy's wrapper unwrapped to the driver's error; `typed` prefixes the
    type name. A message without text is its type name."""
    inner = getattr(exc, "orig", None) or exc  # sqlalchemy.exc.DBAPIError wraps the driver's error
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    if not lines:
        return type(inner).__name__
    text = lines[-1] if last else lines[0]
    return f"{type(inner).__name__}: {text}" if typed else text


def driver_errors() -> tuple[type[BaseException], ...]:
    """The database drivers' own error classes (raw connections raise them unwrapped) and SQLAlchemy's wrapper."""
    from sqlalchemy.exc import DBAPIError

    errors: list[type[BaseException]] = [sqlite3.Error, DBAPIError]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return tuple(errors)
    errors.append(psycopg.Error)
    return tuple(errors)


class ReadOnlyViolation(ValueError):
    """A user's statement would (or might) write or act on the server, or is not exactly one statement."""


class QueryTimeout(DatabaseError):
    """A read ran past its time limit and was stopped (by the server on PostgreSQL). One-line message."""


def is_transient(exc: BaseException) -> bool:
    """A lost or refused connection, or a busy SQLite file: the same write may succeed later.

    Anything else (a constraint, a read-only file, a missing table) fails the same way every time
    and must not be retried into a silent hang.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    inner = exc.orig
    if isinstance(inner, sqlite3.OperationalError):
        return "database is locked" in str(inner) or "database is busy" in str(inner)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return isinstance(exc, OperationalError)
    return isinstance(inner, psycopg.OperationalError | psycopg.InterfaceError)
