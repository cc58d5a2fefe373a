"""Time limits on reads: every read path (`query`, `report`, `plot`, `export`, `status`) runs under one.

PostgreSQL enforces it on the server: `SET LOCAL statement_timeout` inside each transaction, so a
runaway statement is cancelled by the server even when the client is killed. SQLite has no server:
a progress handler interrupts the statement once its deadline has passed. Either way the command
gets a one-line QueryTimeout naming the limit and the fix.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Engine, event

from db.errors import QueryTimeout

DEFAULT_TIMEOUT_S = 60.0
_SQLITE_CHECK_EVERY = 10_000  # virtual-machine instructions between deadline checks
_limit: ContextVar[float] = ContextVar("rtgrid_read_timeout_s", default=DEFAULT_TIMEOUT_S)


def current_limit() -> float:
    """Seconds a statement of a read may run (the command's --timeout; DEFAULT_TIMEOUT_S otherwise)."""
    return _limit.get()


def timeout_message(seconds: float) -> str:
    return (f"the query was stopped after {seconds:g} s (--timeout {seconds:g}); narrow it (WHERE, LIMIT) "
            "or raise --timeout")


def is_timeout(exc: BaseException) -> bool:
    """The driver's way of saying a statement was stopped by the time limit."""
    inner = getattr(exc, "orig", None) or exc
    if isinstance(inner, sqlite3.OperationalError):
        return str(inner).strip() == "interrupted"
    return "statement timeout" in str(inner) and type(inner).__name__ == "QueryCanceled"


@contextmanager
def read_time_limit(seconds: float) -> Iterator[None]:
    """Every read in the block runs under `seconds`; a stopped statement becomes one QueryTimeout line."""
    token = _limit.set(seconds)
    try:
        yield
    except QueryTimeout:
        raise
    except Exception as exc:
        if is_timeout(exc):
            raise QueryTimeout(timeout_message(seconds)) from None
        raise
    finally:
        _limit.reset(token)


class SqliteDeadline:
    """A progress handler: interrupts the running statement once `start`'s deadline has passed."""

    def __init__(self) -> None:
        self.deadline = math.inf

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def __call__(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0


def install_sqlite_deadline(connection: sqlite3.Connection) -> SqliteDeadline:
    deadline = SqliteDeadline()
    connection.set_progress_handler(deadline, _SQLITE_CHECK_EVERY)
    return deadline


def pg_timeout_sql(seconds: float) -> str:
    """The statement that limits the current PostgreSQL transaction's statements to `seconds`."""
    return f"SET LOCAL statement_timeout = {max(1, round(seconds * 1000))}"


def limit_engine(engine: Engine) -> Engine:
    """Apply the current limit to every statement of a plain SQLAlchemy engine (a reader's Repository)."""
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "before_cursor_execute")
        def _start(conn: Any, _cursor: Any, *_args: Any) -> None:
            # a fresh handler per statement: its deadline counts from this statement's start
            install_sqlite_deadline(conn.connection.driver_connection).start(current_limit())
    elif engine.dialect.name == "postgresql":
        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql(pg_timeout_sql(current_limit()))
    return engine
