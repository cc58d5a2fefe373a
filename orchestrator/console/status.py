"""`rtgrid status`: stages and cells by state, running trials, recent failures, throughput and an ETA
weighted by each trial's image-steps (orchestrator/plan/cost.py), as text, JSON or a live view."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from db.models import STATUSES, TrialStatus
from db.repository import Repository, TrialProgress
from orchestrator.errors import UserError
from orchestrator.plan.cost import image_steps
from orchestrator.plan.estimate import describe_spec
from orchestrator.plan.grids import CELL_AXES, value_label
from orchestrator.plan.spec import TrialSpec

WINDOW_S = 3600.0  # throughput over the trials completed in the last hour
MIN_WINDOW_S = 60.0
# A cell's state: the first of these that any of its trials is in, else "done" (every trial completed).
CELL_STATES = (TrialStatus.RUNNING, TrialStatus.FAILED, TrialStatus.PENDING, TrialStatus.CANCELLED)
DONE = "done"


class _Weights:
    """image-steps by spec_hash, parsed once per process (a --watch refresh re-reads only new trials)."""

    def __init__(self) -> None:
        self.steps: dict[str, int | None] = {}
        self.specs: dict[str, TrialSpec] = {}

    def spec(self, trial: TrialProgress) -> TrialSpec:
        if trial.spec_hash not in self.specs:
            self.specs[trial.spec_hash] = TrialSpec.from_json(trial.spec_json)
        return self.specs[trial.spec_hash]

    def of(self, trial: TrialProgress) -> int | None:
        if trial.spec_hash not in self.steps:
            found = image_steps(self.spec(trial))
            self.steps[trial.spec_hash] = None if found is None else found.total
        return self.steps[trial.spec_hash]


_WEIGHTS = _Weights()


def _eta_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    hours = seconds / 3600
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def _cell_state(counts: Counter[str]) -> str:
    for status in CELL_STATES:
        if counts.get(status.value):
            return status.value
    return DONE


def status_view(repo: Repository, experiment: str | None, failures: int = 5,
                now: datetime | None = None) -> dict[str, Any]:
    """Everything `rtgrid status` shows, as plain data (the --json output)."""
    if experiment is not None and repo.experiment_id(experiment) is None:
        raise UserError(f"unknown experiment {experiment!r} (rtgrid experiment list)")
    now = now or datetime.now().astimezone()
    trials = repo.trial_progress(experiment)
    weights = _WEIGHTS
    known = [w for w in (weights.of(t) for t in trials) if w is not None]
    fallback = sum(known) / len(known) if known else 1.0

    def weight(trial: TrialProgress) -> float:
        found = weights.of(trial)
        return float(fallback if found is None else found)

    counts = Counter(t.status for t in trials)
    stages: dict[str, Counter[str]] = {}
    cells: dict[tuple[Any, ...], Counter[str]] = {}
    for trial in trials:
        spec = weights.spec(trial)
        stages.setdefault("sources" if spec.kind == "source" else "transfers", Counter())[trial.status] += 1
        cells.setdefault(tuple(getattr(spec, a) for a in CELL_AXES), Counter())[trial.status] += 1
    cell_rows = [{**{a: value_label(a, v) for a, v in zip(CELL_AXES, key, strict=True)}, "state": _cell_state(c),
                  "counts": {s: c.get(s, 0) for s in STATUSES}} for key, c in cells.items()]

    running = []
    remaining = done_steps = 0.0
    recent: list[TrialProgress] = []
    for trial in trials:
        spec = weights.spec(trial)
        if trial.status == TrialStatus.RUNNING:
            total_epochs = spec.epochs
            progress = min(1.0, (trial.last_epoch or 0) / total_epochs)
            remaining += weight(trial) * (1 - progress)
            elapsed = (now - trial.started_at).total_seconds() if trial.started_at else None
            running.append({"spec_hash": trial.spec_hash, "spec": describe_spec(spec), "epoch": trial.last_epoch,
                            "epochs": spec.epochs, "elapsed_s": elapsed, "node": trial.worker})
        elif trial.status == TrialStatus.PENDING:
            remaining += weight(trial)
        elif trial.status == TrialStatus.COMPLETED:
            done_steps += weight(trial)
            if trial.finished_at is not None and trial.finished_at >= now - timedelta(seconds=WINDOW_S):
                recent.append(trial)

    window = WINDOW_S
    starts = [t.started_at for t in recent if t.started_at is not None]
    if starts:
        window = min(WINDOW_S, max(MIN_WINDOW_S, (now - min(starts)).total_seconds()))
    steps_per_hour = sum(weight(t) for t in recent) * 3600 / window
    failed = sorted((t for t in trials if t.status == TrialStatus.FAILED),
                    key=lambda t: t.finished_at or datetime.min.replace(tzinfo=now.tzinfo), reverse=True)
    return {
        "experiment": experiment,
        "generated_at": now.isoformat(timespec="seconds"),
        "trials": len(trials),
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "stages": [{"name": name, "counts": {s: c.get(s, 0) for s in STATUSES}} for name, c in stages.items()],
        "cells": {"total": len(cell_rows),
                  "by_state": {state: sum(1 for r in cell_rows if r["state"] == state)
                               for state in (DONE, *(s.value for s in CELL_STATES))},
                  "rows": cell_rows},
        "running_trials": running,
        "failures": [{"spec_hash": t.spec_hash, "spec": describe_spec(weights.spec(t)),
                      "error": _one_line(t.error), "finished_at": t.finished_at.isoformat(timespec="seconds")
                      if t.finished_at else None} for t in failed[:failures]],
        "throughput": {"trials_per_hour": len(recent) * 3600 / window, "image_steps_per_hour": steps_per_hour,
                       "window_s": window},
        "image_steps": {"done": done_steps, "remaining": remaining},
        "eta": _eta(experiment, counts, remaining, steps_per_hour),
        "experiments": repo.list_experiments() if experiment is None else None,
    }


def _one_line(error: str | None, limit: int = 200) -> str:
    text = (error or "").strip()
    line = text.splitlines()[0] if text else TrialStatus.FAILED.value
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _eta(experiment: str | None, counts: Counter[str], remaining: float, steps_per_hour: float) -> dict[str, Any]:
    active = counts.get(TrialStatus.PENDING, 0) + counts.get(TrialStatus.RUNNING, 0)
    name = shlex.quote(experiment) if experiment else "EXPERIMENT"
    if not active:
        cancelled, failed = counts.get(TrialStatus.CANCELLED, 0), counts.get(TrialStatus.FAILED, 0)
        if cancelled:
            return {"state": TrialStatus.CANCELLED.value, "seconds": None,
                    "text": f"none: nothing is scheduled, {cancelled} trials are cancelled "
                            f"(rtgrid retry {name} --cancelled runs them)"}
        if failed:
            return {"state": TrialStatus.FAILED.value, "seconds": None,
                    "text": f"none: nothing is scheduled, {failed} trials failed (rtgrid retry {name} runs them)"}
        return {"state": DONE, "seconds": 0.0, "text": DONE}
    if steps_per_hour <= 0:
        return {"state": "unknown", "seconds": None, "text": "unknown (no trial finished in the last hour)"}
    seconds = remaining / steps_per_hour * 3600
    return {"state": TrialStatus.RUNNING.value, "seconds": seconds,
            "text": f"{_eta_text(seconds)} (remaining image-steps at the last hour's rate)"}


def _short(value: str) -> str:
    """spec:<12 of the source trial's hash>; a Ray node id's first 12 characters."""
    if value.startswith("spec:"):
        return value[:17]
    return value[:12] if len(value) > 40 and all(c in "0123456789abcdef" for c in value) else value


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{s} {counts.get(s, 0)}" for s in STATUSES)


def format_status_view(view: dict[str, Any], max_cells: int = 15) -> str:
    header = f"experiment {view['experiment']}" if view["experiment"] else "all experiments"
    lines = [header, f"{view['trials']} trials: {_counts_line(view['counts'])}"]
    for stage in view["stages"]:
        lines.append(f"  {stage['name']:<10} {sum(stage['counts'].values()):>7}: {_counts_line(stage['counts'])}")
    cells = view["cells"]
    by_state = ", ".join(f"{state} {n}" for state, n in cells["by_state"].items())
    lines.append(f"cells: {cells['total']} ({by_state})")
    unfinished = [r for r in cells["rows"] if r["state"] != DONE]
    for row in unfinished[:max_cells]:
        key = " ".join(_short(row[a]) for a in CELL_AXES if row[a] != "null")
        c = row["counts"]
        done = f"{c[TrialStatus.COMPLETED.value]}/{sum(c.values())}"
        lines.append(f"  {row['state']:<10} {done:>9} done, "
                     f"{c[TrialStatus.RUNNING.value]} {TrialStatus.RUNNING.value}, {c[TrialStatus.FAILED.value]} "
                     f"{TrialStatus.FAILED.value}  {key}")
    if len(unfinished) > max_cells:
        lines.append(f"  … {len(unfinished) - max_cells} more cells not done (--json lists every cell)")
    if view["running_trials"]:
        lines.append(f"{TrialStatus.RUNNING.value} ({len(view['running_trials'])}):")
        for run in view["running_trials"]:
            epoch = f"epoch {run['epoch'] or 0}/{run['epochs']}"
            lines.append(f"  {run['spec_hash'][:12]}  {epoch:<13} {_elapsed(run['elapsed_s']):>9}  "
                         f"{_short(run['node'] or '?')}  {run['spec']}")
    if view["failures"]:
        failed = view["counts"].get(TrialStatus.FAILED.value, 0)
        lines.append(f"last {len(view['failures'])} of {failed} failures:")
        for failure in view["failures"]:
            lines.append(f"  {failure['spec_hash'][:12]}  {failure['error']}")
    throughput = view["throughput"]
    lines.append(f"throughput: {throughput['trials_per_hour']:.1f} trials/h, "
                 f"{throughput['image_steps_per_hour']:.3g} image-steps/h (last hour)")
    lines.append(f"eta: {view['eta']['text']}")
    if view.get("experiments"):
        lines.append("experiments: " + ", ".join(view["experiments"]))
    return "\n".join(lines)


def status_json(view: dict[str, Any]) -> str:
    return json.dumps(view, indent=2)


def _frame(view: dict[str, Any]) -> Any:
    """One frame of the live view: lines cropped to the terminal, never wrapped (the layout stays put)."""
    from rich.text import Text

    return Text(format_status_view(view), no_wrap=True, overflow="ellipsis")


def watch(load: Callable[[], dict[str, Any]], interval_s: float, frames: Iterable[int] | None = None) -> None:
    """A live view (rich) refreshed every `interval_s` until nothing is pending or running (or Ctrl-C).
    `frames` bounds the refreshes (tests)."""
    import time

    from rich.console import Console
    from rich.live import Live

    console = Console()
    view = load()
    with Live(_frame(view), console=console, auto_refresh=False, transient=False) as live:
        for _ in frames if frames is not None else iter(int, 1):
            if view["eta"]["state"] not in (TrialStatus.RUNNING.value, "unknown"):
                break
            time.sleep(interval_s)
            view = load()
            live.update(_frame(view), refresh=True)
        live.refresh()
