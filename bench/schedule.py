"""Scheduling cost: rtgrid (packed specs, with the database) against plain Ray Tune (one trial
per spec), both running a no-op kernel on the same local Ray instance in the same process.

    .venv/bin/python bench/schedule.py                 # 1,000 specs each, then the 14,400 grid
    .venv/bin/python bench/schedule.py --specs 300 --skip-full

Prints the times and ratios (target: rtgrid >= 5x faster than plain Tune), then the time to plan, run and
record the whole 14,400-spec utrera2021 grid with the no-op kernel (target: <= 10 minutes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from orchestrator.console.store import open_repository
from orchestrator.plan.grids import Grid, load_grid
from orchestrator.run.runner import TUNE_ENV, RunOptions, start_ray
from orchestrator.run.submit import submit
from workers.trainable import Diagnostics


def plain_tune(n_specs: int, storage: str, tuned: bool) -> float:
    """The baseline: one Tune trial per spec, the trainable reporting once (like the no-op kernel).

    tuned=False is Tune as a user writes it (default loggers and actor handling); tuned=True
    reuses actors and turns Tune's own loggers off, as rtgrid does.
    """
    from ray import tune

    def noop(config: dict) -> None:
        tune.report({"test_acc": 0.5, "spec": config["spec"]})

    saved = {key: os.environ.pop(key) for key in TUNE_ENV if key in os.environ and not tuned}
    try:
        started = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(noop, {"cpu": 1}),
            param_space={"spec": tune.grid_search(list(range(n_specs)))},
            tune_config=tune.TuneConfig(reuse_actors=True) if tuned else None,
            run_config=tune.RunConfig(name=f"plain-{tuned}", storage_path=storage, verbose=0),
        )
        tuner.fit()
        return time.perf_counter() - started
    finally:
        os.environ.update(saved)


def through_rtgrid(grid: Grid, workdir: Path, name: str) -> float:
    repo = open_repository(f"sqlite:///{workdir / (name + '.sqlite')}", write=True)
    options = RunOptions(diagnostics=Diagnostics(kernel_override="noop"), artifacts=str(workdir / f"artifacts-{name}"),
                         quiet=True)
    started = time.perf_counter()
    result = submit(repo, grid, name, options)
    elapsed = time.perf_counter() - started
    assert result.run.completed == len(grid.specs), f"only {result.run.completed} of {len(grid.specs)} recorded"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", type=int, default=1000)
    parser.add_argument("--skip-full", action="store_true", help="Skip the 14,400-spec grid.")
    args = parser.parse_args()
    os.environ.update(TUNE_ENV)
    full = load_grid("utrera2021")
    subset = Grid("bench", "first specs of utrera2021", full.specs[: args.specs])
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-") as tmp:
        workdir = Path(tmp)
        start_ray(RunOptions(quiet=True))
        ours = through_rtgrid(subset, workdir, "bench")
        print(f"{args.specs} no-op specs through rtgrid (packed, with the database): {ours:.1f}s", flush=True)
        for tuned in (False, True):
            plain = plain_tune(args.specs, str(workdir / "plain"), tuned)
            label = "reused actors, no loggers" if tuned else "defaults"
            print(f"plain Ray Tune, one trial per spec ({label}): {plain:.1f}s -> rtgrid is {plain / ours:.1f}x "
                  "faster", flush=True)
        if not args.skip_full:
            seconds = through_rtgrid(full, workdir, "full")
            print(f"{len(full.specs)} no-op specs planned, run and recorded by rtgrid in {seconds:.0f}s "
                  f"({seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
