"""Ray Tune hooks on the driver: the recorder callback and the cancel stopper.

Tune pickles callbacks and stoppers with its experiment state. These classes live at module
level so they pickle by reference; the live objects they use (database engine, progress bar)
stay in LIVE, found by token, and are never pickled.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ray import tune

from db.repository import Repository
from orchestrator.recorder import ReportRecorder, trial_error

LIVE: dict[str, Any] = {}


def _register(value: Any) -> str:
    token = f"live-{id(value)}-{time.monotonic_ns()}"
    LIVE[token] = value
    return token


class RecorderCallback(tune.Callback):
    """Feeds every trial report to the recorder; heartbeats running specs; fails orphaned ones."""

    def __init__(self, recorder: ReportRecorder, packs: Mapping[str, list[str]], heartbeat_s: float = 30.0) -> None:
        self.token = _register((recorder, dict(packs)))
        self.heartbeat_s = heartbeat_s
        self.last_heartbeat = time.monotonic()

    def _recorder(self) -> ReportRecorder:
        return LIVE[self.token][0]

    def _pack(self, trial: Any) -> list[str]:
        return LIVE[self.token][1].get(trial.config["pack_id"], [])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._recorder().handle(result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._recorder().fail_unfinished(self._pack(trial), trial_error(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._recorder().fail_unfinished(self._pack(trial), "trial ended without a final report for this spec")

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat < self.heartbeat_s:
            return
        self.last_heartbeat = now
        recorder = self._recorder()
        running = [h for t in trials if t.status == "RUNNING" for h in self._pack(t) if h not in recorder.finished]
        if running:
            recorder.repo.heartbeat(running)

    def release(self) -> None:
        LIVE.pop(self.token, None)


class CancelStopper(tune.Stopper):
    """Ends the whole run when `rtgrid cancel` marked one of its specs cancelled."""

    def __init__(self, repo: Repository, spec_hashes: Sequence[str], every_s: float = 5.0) -> None:
        self.token = _register((repo, list(spec_hashes)))
        self.every_s = every_s
        self.checked = time.monotonic()
        self.cancelled = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.checked >= self.every_s:
            self.checked = now
            repo, hashes = LIVE[self.token]
            self.cancelled = repo.any_cancelled(hashes)
        return self.cancelled

    def release(self) -> None:
        LIVE.pop(self.token, None)
