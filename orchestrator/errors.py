"""rtgrid's error tree: what the CLI turns into one line, and with which exit status.

    UserError (ValueError)          bad input, a refused query, an unusable database: exit 2
      GridError, SpecError          (orchestrator.plan) a bad grid or spec
      QueryRefused                  (orchestrator.results.query) a statement that would write
    RuntimeFailure (RuntimeError)   the command ran and something failed, e.g. trials: exit 1

`db` and `workers` sit below the orchestrator and cannot subclass `UserError`: their input errors
(`DatabaseError`, `KernelInputError`) and the database drivers' errors count as user errors
through `USER_ERRORS`. Anything else reaching the CLI is a bug in rtgrid.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from db.errors import one_line

__all__ = ["USER_ERRORS", "RuntimeFailure", "UserError", "one_line"]

if TYPE_CHECKING:  # pragma: no cover - the static view of the lazy name below
    USER_ERRORS: tuple[type[BaseException], ...]


class UserError(ValueError):
    """Bad input: unknown experiment, bad option combination, unreachable cluster."""


class RuntimeFailure(RuntimeError):
    """The command did its work and some of it failed (e.g. trials): one line, exit 1."""


@lru_cache(maxsize=1)
def _user_errors() -> tuple[type[BaseException], ...]:
    from db.errors import DatabaseError, driver_errors
    from workers.trainable import KernelInputError

    return (UserError, DatabaseError, KernelInputError, *driver_errors())


def __getattr__(name: str) -> Any:
    # USER_ERRORS is built on first use: it imports the database drivers, which `import orchestrator` must not.
    if name == "USER_ERRORS":
        return _user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
