"""Ray Tune hooks: the recorder callback and the cancel stopper.

Tune pickles callbacks and stoppers with its experiment state, and under Ray Client
(`--address ray://…`) it runs them in a Tune loop on the cluster's head node. So these classes
live at module level (they pickle by reference) and carry only plain values: the repository
they write through is found by token in this process's LIVE registry, or, in another process,
opened from the database URL they carry, which never holds the password (orchestrator/run/secrets.py).

The recorder rides out a database outage: reports wait in a backlog, in order, and are written
when the database answers again; at the end of the run it waits (with backoff) until all are in.
Its writes are fenced by the driver's claim: reports of trials another driver took over are
dropped, and said so once per trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ray import tune

from db.errors import is_transient, one_line
from db.repository import Repository
from orchestrator.run.patience import patiently
from orchestrator.run.recorder import record_report
from orchestrator.run.secrets import with_password

logger = logging.getLogger(__name__)

LIVE: dict[str, Repository] = {}
_OPENED: dict[str, Repository] = {}  # repositories opened from a URL in a process without the driver
RETRY_EVERY_S = 1.0  # while the database is down, the backlog is tried this often


def register(repo: Repository) -> str:
    token = f"live-{id(repo)}-{time.monotonic_ns()}"
    LIVE[token] = repo
    return token


def release(token: str) -> None:
    LIVE.pop(token, None)


def _repository(token: str, db_url: str, secret_file: str | None = None) -> Repository:
    found = LIVE.get(token)
    if found is not None:
        return found
    if db_url not in _OPENED:
        from db.session import open_database

        _OPENED[db_url] = Repository(open_database(with_password(db_url, secret_file), create=False))
    return _OPENED[db_url]


class RecorderCallback(tune.Callback):
    """Feeds every trial report to the recorder (one transaction per report), in order, surviving outages."""

    def __init__(self, token: str, db_url: str, driver: str | None = None, secret_file: str | None = None) -> None:
        self.token = token
        self.db_url = db_url  # "" locally; under Ray Client the URL without its password
        self.driver = driver
        self.secret_file = secret_file
        self.backlog: list[dict[str, Any]] = []
        self.lost: set[str] = set()
        self.down_since: float | None = None
        self.tried = 0.0

    def _repo(self) -> Repository:
        return _repository(self.token, self.db_url, self.secret_file)

    def _record_first(self) -> None:
        lost = record_report(self._repo(), self.backlog[0], self.driver)
        self.backlog.pop(0)
        for spec_hash in sorted(lost - self.lost):
            logger.warning("spec %s: another driver took over this trial (its claim here had expired); "
                           "this driver no longer records it", spec_hash[:12])
        self.lost |= lost

    def _flush(self) -> None:
        """Write the backlog in order; stop (and keep the rest) at the first sign of an outage."""
        self.tried = time.monotonic()
        while self.backlog:
            try:
                self._record_first()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    logger.warning("database unreachable: keeping reports until it answers (%s)", one_line(exc))
                return
        if self.down_since is not None:
            logger.warning("database reachable again after %.0fs: every kept report is recorded",
                           time.monotonic() - self.down_since)
            self.down_since = None

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.backlog.append(dict(result))
        self._flush()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.backlog and time.monotonic() - self.tried >= RETRY_EVERY_S:
            self._flush()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """The run is over: wait (with backoff) until every kept report is recorded."""
        while self.backlog:
            patiently(self._record_first, f"recording {len(self.backlog)} kept reports")
        self.down_since = None


class CancelStopper(tune.Stopper):
    """Ends the whole run when `rtgrid cancel` marked one of its specs cancelled."""

    def __init__(self, token: str, db_url: str, spec_hashes: Sequence[str], every_s: float = 5.0,
                 secret_file: str | None = None) -> None:
        self.token = token
        self.db_url = db_url
        self.secret_file = secret_file
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
            try:
                repo = _repository(self.token, self.db_url, self.secret_file)
                self.cancelled = repo.any_cancelled(self.spec_hashes)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.info("cancel check skipped, the database is unreachable: %s", one_line(exc))
        return self.cancelled
