"""The driver's background duties while a grid runs: keep its claims alive, refresh progress.

A thread, not a Tune hook: the claims of queued transfers must stay alive while the sources
train, between rounds, and under Ray Client (where Tune's loop runs on the head node). The
progress bar reads the database, so it shows the same truth as `rtgrid status`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from db.errors import one_line
from db.records import ClaimHolder, ClaimOwner
from db.repository import Repository

logger = logging.getLogger(__name__)


class Progress(Protocol):
    def set_counts(self, counts: dict[str, int]) -> None: ...

    def close(self) -> None: ...


def new_driver_id() -> str:
    return f"driver-{uuid.uuid4().hex}"


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/PID/stat field 22); None if unknown or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) onwards
    return None if fields[0] == "Z" else int(fields[19])


def this_driver() -> ClaimOwner:
    """A new driver id and the process it runs in: what a claim records."""
    pid = os.getpid()
    return ClaimOwner(new_driver_id(), socket.gethostname(), pid, process_start(pid))


def process_gone(pid: int, pid_start: int | None) -> bool:
    """Has the process `pid` of this host, started at `pid_start`, ended (or its pid been reused)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        pass
    started = process_start(pid)
    if started is None:  # a zombie, or no /proc: exists only as a zombie when /proc is readable
        return Path("/proc/self/stat").exists()
    return pid_start is not None and started != pid_start


def judge_holders(holders: Sequence[ClaimHolder]) -> tuple[list[str], list[str]]:
    """(dead, live) drivers among claim holders that ran on this host; others are judged by heartbeat."""
    here = socket.gethostname()
    dead: list[str] = []
    live: list[str] = []
    for holder in holders:
        if holder.host == here and holder.pid:
            (dead if process_gone(holder.pid, holder.pid_start) else live).append(holder.driver)
    return dead, live


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
        try:
            self._refresh()
        except Exception as exc:  # noqa: BLE001 - a last progress refresh must not turn a finished run into an error
            logger.warning("final progress refresh failed: %s", one_line(exc))

    def _refresh(self) -> None:
        if self.progress is not None:
            self.progress.set_counts(self.repo.claim_counts(self.driver))

    def _run(self) -> None:
        last_beat = time.monotonic()
        failing = False
        while not self._stop.wait(self.refresh_s):
            try:
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    self.repo.heartbeat_claims(self.driver)
                    last_beat = time.monotonic()
                self._refresh()
            except Exception as exc:  # noqa: BLE001 - a lost connection must not kill the run; retry next tick
                self.errors += 1
                if not failing:  # once per outage, not once per tick
                    logger.warning("driver heartbeat/progress failed, retrying every tick: %s", one_line(exc))
                failing = True
                logger.debug("driver tick failure", exc_info=True)
            else:
                if failing:
                    logger.warning("driver heartbeat/progress works again")
                failing = False


