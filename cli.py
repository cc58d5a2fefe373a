"""`rtgrid` command line: parses, calls into the packages, prints. No logic lives here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from orchestrator.cli_errors import one_line_errors

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = "Database URL (default: $RTGRID_DB or sqlite:///rtgrid.sqlite)."


def db_option(func: F) -> F:
    return click.option("--db", "db_url", default=None, help=DB_HELP)(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """rtgrid: resumable, deduplicated transfer-learning robustness grids on Ray Tune."""
    from orchestrator.store import close_all

    ctx.call_on_close(close_all)


# --- grids --------------------------------------------------------------------------------


@main.group()
def grid() -> None:
    """List and inspect grid presets and grid files."""


@grid.command("list")
def grid_list() -> None:
    """The grid presets with their trial counts."""
    from orchestrator.grids import iter_presets

    for name, line in iter_presets():
        click.echo(f"{name:<20}{line}")


@grid.command("show")
@click.argument("name")
@click.option("--count", is_flag=True, help="Print only the number of trials.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@one_line_errors
def grid_show(name: str, count: bool, fmt: str) -> None:
    """Show a grid (preset NAME or YAML FILE): its size and a breakdown by axis."""
    from orchestrator.grids import breakdown, load_grid
    from orchestrator.views import format_breakdown

    loaded = load_grid(name)
    if count:
        click.echo(len(loaded.specs))
        return
    info = breakdown(loaded.specs)
    if fmt == "json":
        click.echo(json.dumps({"name": loaded.name, "description": loaded.description, **info}, indent=2))
    else:
        click.echo(format_breakdown(loaded, info))


# --- database -----------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema: upgrade and current revision."""


@db.command("upgrade")
@db_option
@one_line_errors
def db_upgrade(db_url: str | None) -> None:
    """Migrate the database to the newest schema (creates it when new)."""
    from orchestrator.store import upgrade_database

    click.echo(upgrade_database(db_url))


@db.command("current")
@db_option
@one_line_errors
def db_current(db_url: str | None) -> None:
    """Print the database's schema revision and the one rtgrid needs."""
    from orchestrator.store import revision_line

    click.echo(revision_line(db_url))


# --- running grids --------------------------------------------------------------------------


def run_options(func: F) -> F:
    """Options shared by submit / resume / retry / demo."""
    options = [
        click.option("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://… (default: local Ray)."),
        click.option("--data-root", default=None, envvar="RTGRID_DATA", help="Dataset root ($RTGRID_DATA)."),
        click.option("--artifacts", default="rtgrid_artifacts", envvar="RTGRID_ARTIFACTS", show_default=True,
                     help="Directory every node can read: source checkpoints, adversarial sets."),
        click.option("--cpus-per-trial", type=float, default=1.0, show_default=True),
        click.option("--gpus-per-trial", type=float, default=0.0, show_default=True,
                     help="Fractions pack trials on one GPU (0.25 = four per GPU)."),
        click.option("--max-concurrent", type=int, default=None, help="Cap on trials running at once."),
        click.option("--max-failures", type=int, default=1, show_default=True, help="Retries per spec."),
        click.option("--pack-size", type=int, default=None, help="Specs per Tune trial (default: automatic)."),
        click.option("--download", is_flag=True, help="Allow torchvision to download missing datasets."),
        click.option("--quiet", is_flag=True, help="No progress bar; one summary line."),
        click.option("--worker-logs", is_flag=True,
                     help="Also print the workers' output here (it is always in Ray's log files; every "
                          "failure is recorded on its trial and shown in the summary)."),
        click.option("--stale-after", "stale_after_s", type=float, default=120.0, show_default=True,
                     help="Seconds without a heartbeat after which a 'running' trial counts as interrupted "
                          "(0: every running trial; use when no other driver runs this experiment)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(**kwargs: Any) -> Any:
    from orchestrator.runner import RunOptions

    return RunOptions(**kwargs)


def _run_and_print(repo: Any, loaded: Any, experiment: str, options: Any) -> None:
    from orchestrator.progress import GridProgress
    from orchestrator.submit import submit
    from orchestrator.views import format_plan, format_run

    result = submit(repo, loaded, experiment, options,
                    progress_factory=lambda total: GridProgress(total, quiet=options.quiet))
    if not options.quiet:
        click.echo(format_plan(experiment, result.plan))
    click.echo(format_run(result.run))
    if result.run.failed:
        sys.exit(1)


@main.command()
@click.argument("grid_name", metavar="NAME|FILE")
@click.option("--experiment", default=None, help="Experiment name (default: the grid's name).")
@click.option("--dry-run", is_flag=True, help="Record the experiment and its pending trials; run nothing.")
@db_option
@run_options
@one_line_errors
def submit(grid_name: str, experiment: str | None, dry_run: bool, db_url: str | None, **run: Any) -> None:
    """Run a grid (preset NAME or YAML FILE): every spec not already completed."""
    from orchestrator.grids import load_grid
    from orchestrator.store import open_repository
    from orchestrator.submit import plan_only
    from orchestrator.views import format_plan

    loaded = load_grid(grid_name)
    name = experiment or loaded.name
    repo = open_repository(db_url, write=True)
    if dry_run:
        result = plan_only(repo, loaded, name)
        click.echo(format_plan(name, result))
        if result.new == 0:
            click.echo("nothing new to record: every spec of this grid is already in the database")
        return
    _run_and_print(repo, loaded, name, _options(**run))


@main.command()
@click.argument("experiment")
@db_option
@run_options
@one_line_errors
def resume(experiment: str, db_url: str | None, **run: Any) -> None:
    """Run again what an experiment has not completed (failed, interrupted, pending)."""
    from orchestrator.store import open_repository
    from orchestrator.submit import grid_for_experiment

    repo = open_repository(db_url, write=True)
    _run_and_print(repo, grid_for_experiment(repo, experiment), experiment, _options(**run))


@main.command()
@click.argument("experiment")
@click.option("--failed", "statuses", flag_value="failed", default=True, help="Retry failed trials (default).")
@click.option("--cancelled", "statuses", flag_value="cancelled", help="Retry cancelled trials.")
@db_option
@run_options
@one_line_errors
def retry(experiment: str, statuses: str, db_url: str | None, **run: Any) -> None:
    """Reset an experiment's failed (or cancelled) trials to pending and run them."""
    from orchestrator.store import open_repository
    from orchestrator.submit import grid_for_experiment

    repo = open_repository(db_url, write=True)
    loaded = grid_for_experiment(repo, experiment)
    reset = repo.reset_for_retry(repo.experiment_id(experiment), statuses=(statuses,))
    click.echo(f"{reset} {statuses} trials reset to pending")
    _run_and_print(repo, loaded, experiment, _options(**run))


@main.command()
@click.argument("experiment")
@db_option
@one_line_errors
def cancel(experiment: str, db_url: str | None) -> None:
    """Mark an experiment's pending and running trials cancelled (a running driver stops)."""
    from orchestrator.errors import UserError
    from orchestrator.store import open_repository

    repo = open_repository(db_url, write=True)
    experiment_id = repo.experiment_id(experiment)
    if experiment_id is None:
        raise UserError(f"unknown experiment {experiment!r}")
    click.echo(f"{repo.cancel_experiment(experiment_id)} trials cancelled")


@main.command()
@click.argument("experiment", required=False)
@db_option
@one_line_errors
def status(experiment: str | None, db_url: str | None) -> None:
    """Trial counts by status (one experiment or all), throughput and ETA."""
    from orchestrator.status import status_report
    from orchestrator.store import open_repository

    click.echo(status_report(open_repository(db_url, write=False), experiment))


@main.command("run-spec")
@click.option("--preset", "grid_name", required=True, help="Grid preset or YAML file holding the spec.")
@click.option("--index", type=int, default=0, show_default=True, help="Position of the spec in the grid.")
@click.option("--data-root", default=None, envvar="RTGRID_DATA")
@click.option("--artifacts", default="rtgrid_artifacts", envvar="RTGRID_ARTIFACTS", show_default=True)
@click.option("--source-path", default=None, help="Checkpoint file for the spec's source.")
@click.option("--threads", type=int, default=None, help="torch threads (default: all cores).")
@click.option("--download", is_flag=True, help="Allow torchvision to download missing datasets.")
@one_line_errors
def run_spec(grid_name: str, index: int, data_root: str | None, artifacts: str, source_path: str | None,
             threads: int | None, download: bool) -> None:
    """Run one spec's kernel here and print its per-epoch metrics (no Ray, no database)."""
    from orchestrator.debug import run_one_spec

    for line in run_one_spec(grid_name, index, data_root, artifacts, source_path, threads, download):
        click.echo(line)


@main.group()
def sources() -> None:
    """Source checkpoints."""


@sources.command("convert")
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("output_path", type=click.Path(dir_okay=False))
@one_line_errors
def sources_convert(input_path: str, output_path: str) -> None:
    """One-time conversion of a TRUSTED pickled checkpoint (e.g. MadryLab's) to a safe state dict.

    This unpickles INPUT with full pickle semantics: run it only on files you trust.
    """
    from orchestrator.debug import convert_source

    digest = convert_source(input_path, output_path)
    click.echo(f"wrote {output_path} (sha256 {digest})")


@main.command()
@click.option("--db", "db_url", default=None, help="Database URL (default: sqlite:///rtgrid-demo.sqlite).")
@click.option("--artifacts", default="rtgrid_artifacts", show_default=True)
@click.option("--quiet", is_flag=True)
@one_line_errors
def demo(db_url: str | None, artifacts: str, quiet: bool) -> None:
    """Run the embedded smoke grid end to end (local Ray, SQLite) and print its results."""
    from orchestrator.demo import run_demo

    failed = run_demo(db_url, artifacts, quiet, click.echo)
    if failed:
        sys.exit(1)


@main.group()
def er() -> None:
    """Effective-robustness baselines."""


@er.command("fit")
@click.option("--id", "id_dataset", required=True, help="ID dataset, e.g. cifar10.")
@click.option("--ood", "ood_dataset", required=True, help="OOD set, e.g. cifar10.1.")
@click.option("--experiment", default=None,
              help="Fit on this experiment's testbed: its retrain runs (random init, ID data only).")
@click.option("--csv", "csv_path", default=None, type=click.Path(), help="Fit on a testbed CSV (id_acc,ood_acc).")
@click.option("--published", default=None, help="Use published coefficients, e.g. imagenet-v2.")
@click.option("--transform", type=click.Choice(["logit", "probit"]), default="logit", show_default=True)
@db_option
@one_line_errors
def er_fit(id_dataset: str, ood_dataset: str, experiment: str | None, csv_path: str | None, published: str | None,
           transform: str, db_url: str | None) -> None:
    """Fit an ER baseline, store it, and fill ER for every stored epoch of that (ID, OOD) pair."""
    from orchestrator import er as er_fits
    from orchestrator.errors import UserError
    from orchestrator.store import open_repository

    chosen = [x for x in (experiment, csv_path, published) if x]
    if len(chosen) != 1:
        raise UserError("give exactly one of --experiment, --csv, --published")
    repo = open_repository(db_url, write=True)
    if experiment:
        fit = er_fits.fit_from_experiment(repo, experiment, id_dataset, ood_dataset, transform)
    elif csv_path:
        fit = er_fits.fit_from_csv(repo, csv_path, id_dataset, ood_dataset, transform)
    else:
        fit = er_fits.use_published(repo, str(published), id_dataset, ood_dataset, transform)
    click.echo(f"{fit.transform} fit {id_dataset}->{ood_dataset} from {fit.fitted_from}: slope {fit.slope:.4f}, "
               f"intercept {fit.intercept:.4f}, n={fit.n_points}; ER filled for {fit.epochs_filled} epoch rows "
               f"and {fit.trials_filled} trials")


def _add_result_commands() -> None:
    from orchestrator.cli_results import export, plot, query, report

    for command in (query, export, report, plot):
        main.add_command(command)


_add_result_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
