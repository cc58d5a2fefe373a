"""The driver's background duties while a grid runs: keep its claims alive, refresh progress.

A thread, not a Tune hook: the claims of queued transfers must stay alive while the sources
train, between rounds, and under Ray Client (where Tune's loop runs on the head node). The
progress bar reads the database, so it shows the same truth as `rtgrid status`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from types import TracebackType
from typing import Protocol

from db.errors import one_line
from db.repository import Repository

logger = logging.getLogger(__name__)


class Progress(Protocol):
    def set_counts(self, counts: dict[str, int]) -> None: ...

    def close(self) -> None: ...


def new_driver_id() -> str:
    return f"driver-{uuid.uuid4().hex}"


class DriverLoop:
    """Heartbeats the driver's claims every `heartbeat_s` and refreshes `progress` every `refresh_s`."""

    def __init__(self, repo: Repository, driver: str, progress: Progress | None,
                 heartbeat_s: float = 30.0, refresh_s: float = 1.0) -> None:
        self.repo = repo
        self.driver = driver
        self.progress = progress
        self.heartbeat_s = heartbeat_s
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtgrid-driver", daemon=True)
        self.errors = 0  # database hiccups survived (the next tick tries again)

    def __enter__(self) -> DriverLoop:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._refresh()

    def _refresh(self) -> None:
        if self.progress is not None:
            self.progress.set_counts(self.repo.claim_counts(self.driver))

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.refresh_s):
            try:
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    self.repo.heartbeat_claims(self.driver)
                    last_beat = time.monotonic()
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - a lost connection must not kill the run; retry next tick
                self.errors += 1
                logger.warning("driver heartbeat/progress failed, retrying next tick: %s", one_line(exc))
                logger.debug("driver tick failure", exc_info=True)


