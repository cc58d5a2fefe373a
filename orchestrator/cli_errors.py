"""How every rtgrid command fails on bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or an unusable database, never a bug in rtgrid."""
    from sqlalchemy.exc import DBAPIError

    from db.session import DatabaseError
    from orchestrator.errors import UserError
    from orchestrator.grids import GridError
    from orchestrator.spec import SpecError
    from workers.trainable import KernelInputError

    errors: list[type[BaseException]] = [DatabaseError, GridError, SpecError, KernelInputError, UserError,
                                         sqlite3.Error, DBAPIError]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    return tuple(errors)


def one_line_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except user_errors() as exc:
            text = str(getattr(exc, "orig", None) or exc).strip()
            message = text.splitlines()[0].strip() if text else type(exc).__name__
            click.echo(f"rtgrid: error: {message}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
