"""`rtgrid demo`: the smoke grid end to end on embedded data, local Ray, one SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from orchestrator.console.progress import GridProgress
from orchestrator.console.store import open_repository
from orchestrator.console.views import format_plan, format_run
from orchestrator.plan.grids import SMOKE_TARGETS, smoke
from orchestrator.results.er import fit_from_experiment
from orchestrator.run.runner import RunOptions
from orchestrator.run.submit import submit

DEMO_EXPERIMENT = "smoke-demo"


def run_demo(db_url: str | None, artifacts: str, quiet: bool, echo: Callable[[str], None]) -> int:
    """Run (or resume) the demo grid, fit ER baselines, print the closing tables. Returns failures."""
    # The one default every command reads (--db, else $RTGRID_DB, else sqlite:///rtgrid.sqlite): the README's
    # commands after `make demo` read what the demo wrote.
    repo = open_repository(db_url, write=True)
    grid = smoke()
    cpus = os.cpu_count() or 1
    options = RunOptions(artifacts=artifacts, cpus_per_trial=1.0, max_concurrent=cpus, quiet=quiet)
    result = submit(repo, grid, DEMO_EXPERIMENT, options,
                    progress_factory=lambda total: GridProgress(total, quiet=quiet))
    echo(format_plan(DEMO_EXPERIMENT, result.plan))
    echo(format_run(result.run))
    for target, ood in SMOKE_TARGETS.items():
        for fit in fit_from_experiment(repo, DEMO_EXPERIMENT, target, ood):
            for warning in fit.warnings:
                echo(warning)
            echo(fit.describe())
    for line in closing_tables(repo):
        echo(line)
    return result.run.failed


def closing_tables(repo: object) -> Iterator[str]:
    from orchestrator.results.reports import demo_report

    yield from demo_report(repo, DEMO_EXPERIMENT)
