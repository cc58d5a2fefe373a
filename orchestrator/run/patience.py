"""Riding out a database outage: the driver retries its reads and writes with backoff.

Only a lost or refused connection (or a busy SQLite file) is retried (`db.errors.is_transient`);
every other error fails at once, so a wrong URL or a read-only file never turns into a silent wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from db.errors import is_transient, one_line

logger = logging.getLogger(__name__)

T = TypeVar("T")

PATIENCE_S = 600.0  # how long a driver waits for its database before it gives up
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0


def patiently(call: Callable[[], T], what: str, patience_s: float = PATIENCE_S) -> T:
    """`call()`, retried with exponential backoff while the database is unreachable, for up to
    `patience_s`; then the last error is raised."""
    deadline = time.monotonic() + patience_s
    delay = FIRST_DELAY_S
    failed_since: float | None = None
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() >= deadline:
                raise
            if failed_since is None:
                failed_since = time.monotonic()
                logger.warning("database unreachable while %s, retrying for up to %.0fs: %s",
                               what, patience_s, one_line(exc))
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if failed_since is not None:
            logger.warning("database reachable again after %.0fs (%s)", time.monotonic() - failed_since, what)
        return result
