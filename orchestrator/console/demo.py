"""`rtgrid demo`: the embedded study end to end (local Ray, one SQLite file), closing with its verdicts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from orchestrator.console.progress import GridProgress
from orchestrator.console.store import open_repository
from orchestrator.console.views import format_plan, format_run
from orchestrator.errors import UserError
from orchestrator.plan.grids import STUDY_OOD, STUDY_SHAPE_TARGET, study, study_experiment, study_testbed
from orchestrator.results.er import fit_from_experiment
from orchestrator.run.runner import RunOptions
from orchestrator.run.submit import submit

TESTBED_SUFFIX = "-testbed"


@dataclass(frozen=True)
class DemoOptions:
    seed_base: int = 0
    target: str = "digits"  # or "mnist" (needs data_root)
    data_root: str | None = None
    scale: str = "full"  # or "reduced" (the tests')

    @property
    def experiment(self) -> str:
        return study_experiment(self.seed_base, self.target, self.scale)


def run_demo(db_url: str | None, artifacts: str, quiet: bool, echo: Callable[[str], None],
             demo: DemoOptions | None = None) -> int:
    """Run (or resume) the study, fit the ER baseline on its independent testbed, print the verdicts.
    Returns the number of failed trials."""
    demo = demo or DemoOptions()
    if demo.target != "digits" and not demo.data_root:
        raise UserError(f"--target {demo.target} reads real data: give --data-root (torchvision layout)")
    # The one default every command reads (--db, else $RTGRID_DB, else sqlite:///rtgrid.sqlite): the README's
    # commands after `make demo` read what the demo wrote.
    repo = open_repository(db_url, write=True)
    experiment = demo.experiment
    cpus = os.cpu_count() or 1
    options = RunOptions(artifacts=artifacts, cpus_per_trial=1.0, max_concurrent=cpus, quiet=quiet,
                         data_root=demo.data_root)
    result = submit(repo, study(demo.seed_base, demo.target, demo.scale), experiment, options,
                    progress_factory=lambda total: GridProgress(total, quiet=quiet))
    echo(format_plan(experiment, result.plan))
    echo(format_run(result.run))
    # The testbed's runs are in the study already: planning them as their own experiment runs nothing and
    # gives the ER fit a testbed that holds none of the compared runs.
    testbed = experiment + TESTBED_SUFFIX
    submit(repo, study_testbed(demo.seed_base, demo.target, demo.scale), testbed, options)
    for fit in fit_from_experiment(repo, experiment, STUDY_SHAPE_TARGET, STUDY_OOD, testbed_experiment=testbed):
        for warning in fit.warnings:
            echo(warning)
        echo(fit.describe())
    for line in closing_tables(repo, experiment):
        echo(line)
    for path in save_study_plots(repo, experiment, artifacts):
        echo(f"wrote {path}")
    return result.run.failed


STUDY_PLOTS = ("study-accuracy", "study-asr", "study-er")


def save_study_plots(repo: object, experiment: str, artifacts: str) -> Iterator[str]:
    """The study's three figures as <artifacts>/<experiment>-<plot>.png (the same as `rtgrid plot`)."""
    from orchestrator.results.plots import make_plot, save_plot

    for name in STUDY_PLOTS:
        yield str(save_plot(make_plot(name, experiment, repo), os.path.join(artifacts, f"{experiment}-{name}.png")))


def closing_tables(repo: object, experiment: str) -> Iterator[str]:
    from orchestrator.results.study import study_lines

    yield from study_lines(repo, experiment)
