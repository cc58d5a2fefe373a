"""Test and benchmark hooks of the worker, kept out of the production settings.

`WorkerSettings.diagnostics` is None on every production path; tests and `bench/schedule.py` set
it through `RunOptions.diagnostics` (or, for a driver started as a subprocess, through the
RTGRID_DIAGNOSTICS environment variable that the runner reads). Each hook is off unless set.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from workers.context import KernelContext, Report
from workers.io import append_line

KernelOverride = Literal["noop"]


@dataclass(frozen=True)
class KillWorker:
    """Kill the worker process (as the OOM killer does) the first `times` times spec `spec_hash`
    starts (`at_epoch` 0) or has saved its resume checkpoint of epoch `at_epoch` (mid-trial); one
    marker file per death, in `marker_dir` (a directory every node can see)."""

    spec_hash: str
    marker_dir: str
    times: int = 1
    at_epoch: int = 0


@dataclass(frozen=True)
class Diagnostics:
    kernel_override: KernelOverride | None = None  # "noop": measure the orchestration cost alone
    kill_worker: KillWorker | None = None  # fault injection for the lost-worker tests
    kernel_starts_log: str | None = None  # append one line per kernel start to this file
    kernel_delay_s: float = 0.0  # sleep this long before each kernel runs (paces noop specs in fault tests)

    def __post_init__(self) -> None:
        if self.kernel_override not in (None, "noop"):
            raise ValueError(f"unknown kernel override {self.kernel_override!r} (known: noop)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Diagnostics:
        values: dict[str, Any] = json.loads(text)
        unknown = set(values) - {"kernel_override", "kill_worker", "kernel_starts_log", "kernel_delay_s"}
        if unknown:
            raise ValueError(f"unknown diagnostics field(s): {', '.join(sorted(unknown))}")
        kill = values.get("kill_worker")
        return cls(kernel_override=values.get("kernel_override"),
                   kill_worker=KillWorker(**kill) if kill else None,
                   kernel_starts_log=values.get("kernel_starts_log"),
                   kernel_delay_s=float(values.get("kernel_delay_s", 0.0)))


def run_noop(spec: dict[str, Any], ctx: KernelContext, report: Report) -> dict[str, Any]:
    """Does no work: reports one epoch. Measures the orchestration cost of a spec."""
    report(spec["epochs"], {"test_acc": 0.5, "train_loss": 1.0, "seconds": 0.0})
    return {"test_acc": 0.5}


def log_kernel_start(path: str, spec_hash: str, attempt: int, node: str) -> None:
    """Append-only audit of a kernel start (what ran where, and how often)."""
    append_line(path, f"{time.time():.3f}\t{spec_hash}\t{attempt}\t{node}\t{os.getpid()}")


def maybe_kill_worker(fault: KillWorker | None, spec_hash: str, epoch: int = 0) -> None:
    """Die as an OOM-killed worker does when `fault` names this spec at this epoch (0: its start)
    and has deaths left."""
    if fault is None or fault.spec_hash != spec_hash or fault.at_epoch != epoch:
        return
    markers = Path(fault.marker_dir)
    markers.mkdir(parents=True, exist_ok=True)
    if len(list(markers.iterdir())) < fault.times:
        (markers / f"death-{time.time_ns()}").touch()
        os._exit(70)  # no cleanup, no last report: a real crash
