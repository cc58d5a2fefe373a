"""`rtgrid submit` / `resume` as one use case: plan, then run what is not completed."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from db.lifecycle import aware, utc_now
from db.models import FINISHED, TrialStatus
from db.records import BaselineRecord, ClaimOwner
from db.repository import PlanResult, Repository
from orchestrator.errors import UserError
from orchestrator.plan.grids import Grid
from orchestrator.plan.planner import Stage, record_plan, stages
from orchestrator.plan.spec import TrialSpec
from orchestrator.results.er import baselines_for
from orchestrator.run.driver import DriverLoop, judge_holders, this_driver
from orchestrator.run.patience import patiently
from orchestrator.run.runner import (
    RunOptions,
    RunSummary,
    StageInputs,
    check_artifacts_location,
    check_resources,
    is_client_address,
    run_stage,
    start_ray,
)

logger = logging.getLogger(__name__)

ProgressFactory = Callable[[int], Any]  # total -> object with .set_counts(counts) and .close()
INTERRUPTED = "interrupted: the driver stopped before this trial finished (rtgrid resume runs it again)"


@dataclass
class SubmitResult:
    experiment: str
    plan: PlanResult
    run: RunSummary


def runnable_specs(repo: Repository, experiment_id: int, grid: Grid) -> list[TrialSpec]:
    """Specs of the grid that the database says must (still) run, in grid order: pending, failed and
    every running one (the claims decide which of those this driver may take over)."""
    rows = repo.trials_to_run(experiment_id, stale_after_s=0)
    wanted = {row[1] for row in rows}
    return [spec for spec in grid.specs if spec.spec_hash in wanted]


def _source_inputs(repo: Repository, specs: list[TrialSpec]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Checkpoint and sha256 of every grid-trained source the transfers need; why others are missing."""
    needed = {h for h in (s.source_hash() for s in specs) if h is not None}
    paths: dict[str, str] = {}
    checksums: dict[str, str] = {}
    missing: dict[str, str] = {}
    for source_hash in needed:
        trial = repo.trial_by_hash(source_hash)
        if trial is not None and trial.status == TrialStatus.COMPLETED and trial.checkpoint_uri:
            paths[source_hash] = trial.checkpoint_uri
            artifact = repo.get_artifact(source_hash)
            sha256 = artifact.meta.get("sha256") if artifact is not None else None
            if sha256:
                checksums[source_hash] = str(sha256)
        elif trial is not None and trial.status == TrialStatus.COMPLETED:
            missing[source_hash] = (f"source trial {source_hash[:12]} completed without a checkpoint "
                                    f"(rtgrid retry it, or run-spec --hash {source_hash[:12]})")
        else:
            status = trial.status if trial is not None else "unknown"
            missing[source_hash] = f"source trial {source_hash[:12]} is {status}, not completed"
    return paths, checksums, missing


def _baselines(repo: Repository, specs: list[TrialSpec]) -> dict[tuple[str, str, str], BaselineRecord]:
    """The latest stored baseline of each spec's evaluation protocol (orchestrator/results/er.py)."""
    return baselines_for(repo, specs)


def preflight(dialect: str, options: RunOptions) -> None:
    """Refuse what cannot work before anything is recorded or started: the artifacts location, a
    Ray Client run on SQLite (`dialect`), an unreachable cluster, a trial that does not fit on the cluster."""
    check_artifacts_location(options.artifacts)
    if is_client_address(options.address) and dialect == "sqlite":
        raise UserError("--address ray://… runs Tune's loop on the cluster's head node, which must reach the "
                        "database: use a PostgreSQL --db, or run the driver on the head with --address HOST:PORT")
    start_ray(options)
    check_resources(options)


def claim_runnable(repo: Repository, owner: ClaimOwner, spec_hashes: Sequence[str], stale_after_s: float) -> list[str]:
    """Claim what no live driver holds: a claim of a driver that ran on this host and whose process
    is gone is taken at once; one whose process lives is never taken; others expire by heartbeat."""
    dead, live = judge_holders(repo.claim_holders(spec_hashes, owner.driver))
    if dead:
        logger.info("taking over the claims of %d driver(s) on this host whose process is gone", len(dead))
    return repo.claim(owner, spec_hashes, stale_after_s, dead=dead, live=live)


def describe_holders(repo: Repository, spec_hashes: Sequence[str], driver: str, stale_after_s: float) -> str:
    """Who holds the trials this driver could not claim, and when (or how) they can be taken over."""
    here = socket.gethostname()
    holders = repo.claim_holders(spec_hashes, driver)
    _, live = judge_holders(holders)
    now = utc_now()
    parts = []
    for holder in holders:
        host = "this host" if holder.host == here else holder.host
        where = f"pid {holder.pid} on {host}" if holder.pid and host else f"claim {holder.driver}"
        if holder.driver in live:
            parts.append(f"{holder.trials} held by a live driver ({where}): let it finish, or stop it and resume")
            continue
        beat = aware(holder.last_heartbeat)
        age = (now - beat).total_seconds() if beat is not None else 0.0
        wait = max(0.0, stale_after_s - age)
        parts.append(f"{holder.trials} held by a driver ({where}) whose last heartbeat was {age:.0f}s ago: "
                     f"taken over after {wait:.0f}s more without one, or now with --stale-after 0 if it is gone")
    return "; ".join(parts)


def _run_stages(repo: Repository, grid: Grid, todo: list[TrialSpec], experiment: str, options: RunOptions,
                driver: str) -> None:
    start_ray(options)
    for stage in stages(todo):
        specs = stage.specs
        inputs = StageInputs(baselines=patiently(partial(_baselines, repo, specs), "reading ER baselines"),
                             source_files=grid.source_files)
        if stage.name == "transfers":
            paths, checksums, missing = patiently(partial(_source_inputs, repo, specs), "reading sources")
            for spec in specs:
                reason = missing.get(spec.source_hash() or "")
                if reason is not None:
                    logger.warning("transfer %s not run: %s", spec.spec_hash[:12], reason)
                    patiently(partial(repo.fail, spec.spec_hash, reason, driver), "recording a missing source")
            specs = [s for s in specs if (s.source_hash() or "") not in missing]
            inputs = StageInputs(paths, checksums, inputs.baselines, grid.source_files)
        if specs:
            run_stage(repo, Stage(stage.name, specs), experiment, options, inputs, driver)


def submit(repo: Repository, grid: Grid, experiment: str, options: RunOptions,
           progress_factory: ProgressFactory | None = None) -> SubmitResult:
    """Record the plan, claim what must run, run it stage by stage, release the claims."""
    started = time.time()
    preflight(repo.dialect, options)
    experiment_id, plan = record_plan(repo, grid, experiment)
    candidates = runnable_specs(repo, experiment_id, grid)
    summary = RunSummary()
    if not candidates:
        return SubmitResult(experiment, plan, summary)
    owner = this_driver()
    claimed = set(claim_runnable(repo, owner, [s.spec_hash for s in candidates], options.stale_after_s))
    todo = [s for s in candidates if s.spec_hash in claimed]
    summary.runnable = len(todo)
    logger.info("experiment %s: %d specs to run, %d claimed by this driver", experiment, len(candidates), len(todo))
    if todo:
        progress = progress_factory(len(todo)) if progress_factory else None
        try:
            with DriverLoop(repo, owner.driver, progress, heartbeat_s=heartbeat_interval(options.stale_after_s)):
                _run_stages(repo, grid, todo, experiment, options, owner.driver)
        finally:
            patiently(partial(repo.release_claims, owner.driver, INTERRUPTED), "releasing the claims")
            if progress is not None:
                progress.close()
    hashes = [s.spec_hash for s in todo]
    counts = patiently(partial(repo.status_counts_for, hashes), "counting results")
    summary.completed = counts.get(TrialStatus.COMPLETED, 0)
    summary.failed = counts.get(TrialStatus.FAILED, 0)
    summary.skipped = summary.runnable - summary.completed - summary.failed
    summary.failures = patiently(partial(repo.errors_of, hashes), "reading errors")
    # What another driver held and has not finished yet: left unrun by this command.
    others = [s.spec_hash for s in candidates if s.spec_hash not in claimed]
    statuses = repo.statuses_of(others) if others else {}
    unfinished = [h for h in others if statuses.get(h) not in FINISHED]
    summary.claimed_elsewhere = len(unfinished)
    if unfinished:
        summary.held_elsewhere = describe_holders(repo, unfinished, owner.driver, options.stale_after_s)
    summary.seconds = time.time() - started
    return SubmitResult(experiment, plan, summary)


def heartbeat_interval(stale_after_s: float) -> float:
    """Beat well within this driver's own stale limit (every 30 s at most, every second at least)."""
    return min(30.0, max(1.0, stale_after_s / 4))


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
    info = repo.experiment_info(experiment)
    # The stored grid name: resuming plans the experiment's own grid again, never "another" grid.
    grid_name = info.grid if info is not None and info.grid else experiment
    return Grid(grid_name, f"experiment {experiment} ({len(specs)} trials)", specs)


def summary_json(result: SubmitResult) -> str:
    return json.dumps({"experiment": result.experiment, "runnable": result.run.runnable,
                       TrialStatus.COMPLETED.value: result.run.completed,
                       TrialStatus.FAILED.value: result.run.failed})
