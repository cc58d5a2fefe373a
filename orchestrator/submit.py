"""`rtgrid submit` / `resume` as one use case: plan, then run what is not completed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.repository import PlanResult, Repository
from orchestrator.grids import Grid
from orchestrator.planner import Stage, record_plan, stages
from orchestrator.runner import RunOptions, RunSummary, _start_ray, run_stage
from orchestrator.spec import TrialSpec

ProgressFactory = Callable[[int], Any]  # total -> context manager with .update(event, spec_hash)


@dataclass
class SubmitResult:
    experiment: str
    plan: PlanResult
    run: RunSummary


def runnable_specs(repo: Repository, experiment_id: int, grid: Grid, stale_after_s: float) -> list[TrialSpec]:
    """Specs of the grid that the database says must (still) run, in grid order."""
    rows = repo.trials_to_run(experiment_id, stale_after_s=stale_after_s)
    wanted = {row[1] for row in rows}
    return [spec for spec in grid.specs if spec.spec_hash in wanted]


def _source_paths(repo: Repository, specs: list[TrialSpec]) -> tuple[dict[str, str], dict[str, str]]:
    """Checkpoint of every grid-trained source the transfers need; and the missing ones' reasons."""
    needed = {s.source.removeprefix("spec:") for s in specs if s.source and s.source.startswith("spec:")}
    paths: dict[str, str] = {}
    missing: dict[str, str] = {}
    for source_hash in needed:
        row = repo.trial_by_hash(source_hash)
        if row is not None and row["status"] == "completed" and row["checkpoint_uri"]:
            paths[source_hash] = row["checkpoint_uri"]
        else:
            status = row["status"] if row is not None else "unknown"
            missing[source_hash] = f"source trial {source_hash[:12]} is {status}, not completed"
    return paths, missing


def _baselines(repo: Repository, specs: list[TrialSpec]) -> dict[tuple, dict[str, Any]]:
    found: dict[tuple, dict[str, Any]] = {}
    for key in {(s.dataset, s.ood) for s in specs if s.ood}:
        baseline = repo.get_baseline(*key)
        if baseline is not None:
            found[key] = baseline
    return found


def submit(repo: Repository, grid: Grid, experiment: str, options: RunOptions,
           progress_factory: ProgressFactory | None = None) -> SubmitResult:
    started = time.time()
    experiment_id, plan = record_plan(repo, grid, experiment)
    todo = runnable_specs(repo, experiment_id, grid, options.stale_after_s)
    summary = RunSummary(runnable=len(todo))
    if not todo:
        return SubmitResult(experiment, plan, summary)
    _start_ray(options)
    progress = progress_factory(len(todo)) if progress_factory else None
    try:
        for stage in stages(todo):
            specs = stage.specs
            source_paths: dict[str, str] = {}
            if stage.name == "transfers":
                source_paths, missing = _source_paths(repo, specs)
                blocked = [s for s in specs if s.source and s.source.removeprefix("spec:") in missing]
                for spec in blocked:
                    reason = missing[spec.source.removeprefix("spec:")]  # type: ignore[union-attr]
                    repo.fail(spec.spec_hash, reason)
                    summary.failures[spec.spec_hash] = reason
                    if progress is not None:
                        progress.update("failed", spec.spec_hash)
                specs = [s for s in specs if s not in set(blocked)]
            if not specs:
                continue
            recorder = run_stage(repo, Stage(stage.name, specs), experiment, options, source_paths,
                                 _baselines(repo, specs), progress.update if progress is not None else None)
            summary.failures.update(recorder.failed)
    finally:
        if progress is not None:
            progress.close()
    counts = repo.status_counts_for([s.spec_hash for s in todo])
    summary.completed = counts.get("completed", 0)
    summary.failed = counts.get("failed", 0)
    summary.skipped = summary.runnable - summary.completed - summary.failed
    summary.seconds = time.time() - started
    return SubmitResult(experiment, plan, summary)


def plan_only(repo: Repository, grid: Grid, experiment: str) -> PlanResult:
    return record_plan(repo, grid, experiment)[1]


def grid_for_experiment(repo: Repository, experiment: str) -> Grid:
    """Rebuild an experiment's grid from the specs stored in the database (for resume/retry)."""
    experiment_id = repo.experiment_id(experiment)
    if experiment_id is None:
        from orchestrator.errors import UserError

        raise UserError(f"unknown experiment {experiment!r} (see `rtgrid status`)")
    specs = [TrialSpec.from_json(text) for text in repo.experiment_spec_jsons(experiment_id)]
    specs.sort(key=lambda s: s.kind != "source")
    return Grid(experiment, f"experiment {experiment} ({len(specs)} trials)", specs)


def summary_json(result: SubmitResult) -> str:
    return json.dumps({"experiment": result.experiment, "runnable": result.run.runnable,
                       "completed": result.run.completed, "failed": result.run.failed})
