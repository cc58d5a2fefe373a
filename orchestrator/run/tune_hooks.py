"""Ray Tune hooks: the recorder callback and the cancel stopper.

Tune pickles callbacks and stoppers with its experiment state, and under Ray Client
(`--address ray://…`) it runs them in a Tune loop on the cluster's head node. So these classes
live at module level (they pickle by reference) and carry only plain values: the repository
they write through is found by token in this process's LIVE registry, or, in another process,
opened from the database URL they carry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ray import tune

from db.repository import Repository
from orchestrator.run.recorder import record_report

LIVE: dict[str, Repository] = {}
_OPENED: dict[str, Repository] = {}  # repositories opened from a URL in a process without the driver


def register(repo: Repository) -> str:
    token = f"live-{id(repo)}-{time.monotonic_ns()}"
    LIVE[token] = repo
    return token


def release(token: str) -> None:
    LIVE.pop(token, None)


def _repository(token: str, db_url: str) -> Repository:
    found = LIVE.get(token)
    if found is not None:
        return found
    if db_url not in _OPENED:
        from db.session import open_database

        _OPENED[db_url] = Repository(open_database(db_url, create=False))
    return _OPENED[db_url]


class RecorderCallback(tune.Callback):
    """Feeds every trial report to the recorder (one transaction per report)."""

    def __init__(self, token: str, db_url: str) -> None:
        self.token = token
        self.db_url = db_url

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        record_report(_repository(self.token, self.db_url), result)


class CancelStopper(tune.Stopper):
    """Ends the whole run when `rtgrid cancel` marked one of its specs cancelled."""

    def __init__(self, token: str, db_url: str, spec_hashes: Sequence[str], every_s: float = 5.0) -> None:
        self.token = token
        self.db_url = db_url
        self.spec_hashes = list(spec_hashes)
        self.every_s = every_s
        self.checked = time.monotonic()
        self.cancelled = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.checked >= self.every_s:
            self.checked = now
            self.cancelled = _repository(self.token, self.db_url).any_cancelled(self.spec_hashes)
        return self.cancelled
