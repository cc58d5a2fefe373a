"""`rtgrid` command line: parses, calls into the packages, prints. No logic lives here."""

from __future__ import annotations

import functools
import json
import logging
import math
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from orchestrator import TrialStatus

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("rtgrid")

DB_HELP = "Database URL (default: $RTGRID_DB or sqlite:///rtgrid.sqlite)."


class ExperimentName(click.ParamType[str]):
    """An experiment name, checked by the one rule (orchestrator/plan/names.py) as Click parses it."""

    name = "experiment"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from orchestrator.plan.names import check_experiment_name

        return check_experiment_name(str(value))


EXPERIMENT = ExperimentName()


def max_specs_option(func: F) -> F:
    from orchestrator.plan.grids import DEFAULT_MAX_SPECS

    return click.option("--max-specs", type=click.IntRange(min=1), default=DEFAULT_MAX_SPECS, show_default=True,
                        help="Refuse a grid with more specs than this (counted before expanding).")(func)


def db_option(func: F) -> F:
    return click.option("--db", "db_url", default=None, help=DB_HELP)(func)


def readonly_db_option(func: F) -> F:
    return click.option("--db", "db_url", default=None, help=f"{DB_HELP[:-1]}; opened read-only.")(func)


def timeout_option(func: F) -> F:
    """`--timeout SECONDS` on a command that only reads: every statement it runs is stopped past it
    (by the server on PostgreSQL), with one line saying so."""

    @functools.wraps(func)
    def limited(*args: Any, timeout_s: float, **kwargs: Any) -> Any:
        from orchestrator.console.store import read_time_limit
        from orchestrator.errors import UserError

        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise UserError(f"--timeout must be a positive number of seconds, got {timeout_s!r}")
        with read_time_limit(timeout_s):
            return func(*args, **kwargs)

    option = click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
                          help="Seconds any one SQL statement may run before it is stopped.")
    return option(limited)  # type: ignore[return-value]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rtgrid")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


class RtgridGroup(click.Group):
    """A command group with rtgrid's one error handler; its subgroups get it too.

    user errors (bad input, refused query, unusable database)  -> "rtgrid: error: <line>", exit 2
    Click's usage errors (a bad option value, a missing argument) -> "rtgrid: error: <line>", exit 2
    RuntimeFailure (the work ran, some of it failed)           -> "rtgrid: error: <line>", exit 1
    Click's other exceptions, SystemExit, KeyboardInterrupt    -> as Click handles them
    anything else is a bug -> one line naming a crash log that holds the traceback, exit 1
    """

    group_class = type  # `@group.group()` makes an RtgridGroup

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option value or a missing argument: one line too
            path = (exc.ctx or ctx).command_path.split()[1:]  # the program's own name is always "rtgrid"
            click.echo(f"rtgrid: error: {exc.format_message()} (see rtgrid {' '.join(path)} --help)", err=True)
            ctx.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # Exit and Abort subclass RuntimeError: let them through before anything else
        except Exception as exc:
            from orchestrator.errors import USER_ERRORS, RuntimeFailure, one_line

            if isinstance(exc, USER_ERRORS):
                from orchestrator.console.store import explain_database_error

                logger.debug("user error", exc_info=exc)
                click.echo(f"rtgrid: error: {explain_database_error(one_line(exc))}", err=True)
                ctx.exit(2)
            if isinstance(exc, RuntimeFailure):
                click.echo(f"rtgrid: error: {one_line(exc)}", err=True)
                ctx.exit(1)
            from orchestrator.console.logs import write_crash_log

            logger.debug("internal error", exc_info=exc)
            where = write_crash_log(exc, ctx.command_path, _version())
            click.echo(f"rtgrid: internal error: {one_line(exc, typed=True)} (traceback in {where}); "
                       "please report it", err=True)
            ctx.exit(1)


def _group_quiet() -> bool:
    """The group's -q, which also quiets the commands that have their own --quiet."""
    obj = click.get_current_context().obj
    return bool(obj and obj.get("quiet"))


@click.group(cls=RtgridGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v: info, -vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars.")
@click.version_option(package_name="rtgrid", prog_name="rtgrid", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """rtgrid: resumable, deduplicated transfer-learning robustness grids on Ray Tune."""
    from orchestrator.console.logs import configure
    from orchestrator.console.store import close_all

    configure(-1 if quiet else verbose)
    ctx.ensure_object(dict)["quiet"] = quiet
    ctx.call_on_close(close_all)


# --- grids --------------------------------------------------------------------------------


@main.group()
def grid() -> None:
    """List and inspect grid presets and grid files."""


@grid.command("list")
def grid_list() -> None:
    """The grid presets with their trial counts."""
    from orchestrator.plan.grids import iter_presets

    for name, line in iter_presets():
        click.echo(f"{name:<20}{line}")


@grid.command("show")
@click.argument("name")
@click.option("--count", is_flag=True, help="Print only the number of trials.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@max_specs_option
def grid_show(name: str, count: bool, fmt: str, max_specs: int) -> None:
    """Show a grid (preset NAME or YAML FILE): its size and a breakdown by axis."""
    from orchestrator.console.views import format_breakdown
    from orchestrator.plan.grids import breakdown, load_grid

    loaded = load_grid(name, max_specs)
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
def db_upgrade(db_url: str | None) -> None:
    """Migrate the database to the newest schema (creates it when new)."""
    from orchestrator.console.store import upgrade_database

    click.echo(upgrade_database(db_url))


@db.command("current")
@db_option
def db_current(db_url: str | None) -> None:
    """Print the database's schema revision and the one rtgrid needs."""
    from orchestrator.console.store import revision_line

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
        click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
                     help="Cap on trials running at once."),
        click.option("--max-failures", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Retries per spec."),
        click.option("--pack-size", type=click.IntRange(min=1), default=None,
                     help="Specs per Tune trial (default: automatic)."),
        click.option("--download", is_flag=True, help="Allow torchvision to download missing datasets."),
        click.option("--quiet", is_flag=True, help="No progress bar; one summary line."),
        click.option("--worker-logs", is_flag=True,
                     help="Also print the workers' output here (it is always in Ray's log files; every "
                          "failure is recorded on its trial and shown in the summary)."),
        click.option("--stale-after", "stale_after_s", type=float, default=120.0, show_default=True,
                     help=f"Seconds without a heartbeat after which a '{TrialStatus.RUNNING.value}' trial counts as "
                          "interrupted (0: every running trial; use when no other driver runs this experiment)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(**kwargs: Any) -> Any:
    from orchestrator.run.runner import RunOptions

    kwargs["quiet"] = kwargs.get("quiet", False) or _group_quiet()
    return RunOptions(**kwargs)


def _run_and_print(repo: Any, loaded: Any, experiment: str, options: Any) -> None:
    from orchestrator.console.progress import GridProgress
    from orchestrator.console.views import format_plan, format_run
    from orchestrator.run.submit import submit

    result = submit(repo, loaded, experiment, options,
                    progress_factory=lambda total: GridProgress(total, quiet=options.quiet))
    if not options.quiet:
        click.echo(format_plan(experiment, result.plan))
    click.echo(format_run(result.run))
    if result.run.failed:
        from orchestrator.errors import RuntimeFailure

        raise RuntimeFailure(f"{result.run.failed} of {result.run.runnable} trials failed "
                             f"(rtgrid retry {shlex.quote(experiment)} runs them again)")


@main.command()
@click.argument("grid_name", metavar="NAME|FILE")
@click.option("--experiment", type=EXPERIMENT, default=None, help="Experiment name (default: the grid's name).")
@click.option("--dry-run", is_flag=True, help="Record the experiment and its pending trials; run nothing.")
@max_specs_option
@db_option
@run_options
def submit(grid_name: str, experiment: str | None, dry_run: bool, max_specs: int, db_url: str | None,
           **run: Any) -> None:
    """Run a grid (preset NAME or YAML FILE): every spec not already completed."""
    from orchestrator.console.store import open_repository
    from orchestrator.console.views import format_plan
    from orchestrator.plan.grids import load_grid
    from orchestrator.plan.names import check_experiment_name
    from orchestrator.run.submit import plan_only

    loaded = load_grid(grid_name, max_specs)
    name = experiment or check_experiment_name(loaded.name, "grid name", " (or name the experiment: --experiment)")
    repo = open_repository(db_url, write=True)
    if dry_run:
        result = plan_only(repo, loaded, name)
        click.echo(format_plan(name, result))
        if result.new == 0:
            click.echo("nothing new to record: every spec of this grid is already in the database")
        return
    _run_and_print(repo, loaded, name, _options(**run))


@main.command()
@click.argument("experiment", type=EXPERIMENT)
@db_option
@run_options
def resume(experiment: str, db_url: str | None, **run: Any) -> None:
    """Run again what an experiment has not completed (failed, interrupted, pending)."""
    from orchestrator.console.store import open_repository
    from orchestrator.run.submit import grid_for_experiment

    repo = open_repository(db_url, write=True)
    _run_and_print(repo, grid_for_experiment(repo, experiment), experiment, _options(**run))


@main.command()
@click.argument("experiment", type=EXPERIMENT)
@click.option("--failed", "statuses", flag_value=TrialStatus.FAILED.value, default=True,
              help="Retry failed trials (default).")
@click.option("--cancelled", "statuses", flag_value=TrialStatus.CANCELLED.value, help="Retry cancelled trials.")
@db_option
@run_options
def retry(experiment: str, statuses: str, db_url: str | None, **run: Any) -> None:
    """Reset an experiment's failed (or cancelled) trials to pending and run them."""
    from orchestrator.console.store import open_repository
    from orchestrator.run.submit import grid_for_experiment

    repo = open_repository(db_url, write=True)
    loaded = grid_for_experiment(repo, experiment)
    experiment_id = repo.experiment_id(experiment)
    assert experiment_id is not None  # grid_for_experiment refused an unknown experiment
    reset = repo.reset_for_retry(experiment_id, statuses=(statuses,))
    click.echo(f"{reset} {statuses} trials reset to pending")
    _run_and_print(repo, loaded, experiment, _options(**run))


@main.command()
@click.argument("experiment", type=EXPERIMENT)
@db_option
def cancel(experiment: str, db_url: str | None) -> None:
    """Mark an experiment's pending and running trials cancelled (a running driver stops)."""
    from orchestrator.console.store import open_repository
    from orchestrator.errors import UserError

    repo = open_repository(db_url, write=True)
    experiment_id = repo.experiment_id(experiment)
    if experiment_id is None:
        raise UserError(f"unknown experiment {experiment!r}")
    click.echo(f"{repo.cancel_experiment(experiment_id)} trials cancelled")


@main.command()
@click.argument("experiment", type=EXPERIMENT, required=False)
@db_option
@timeout_option
def status(experiment: str | None, db_url: str | None) -> None:
    """Trial counts by status (one experiment or all), throughput and ETA."""
    from orchestrator.console.status import status_report
    from orchestrator.console.store import open_repository

    click.echo(status_report(open_repository(db_url, write=False), experiment))


@main.command("run-spec")
@click.option("--preset", "grid_name", required=True, help="Grid preset or YAML file holding the spec.")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Position of the spec in the grid.")
@click.option("--data-root", default=None, envvar="RTGRID_DATA")
@click.option("--artifacts", default="rtgrid_artifacts", envvar="RTGRID_ARTIFACTS", show_default=True)
@click.option("--source-path", default=None, help="Checkpoint file for the spec's source.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: all cores).")
@click.option("--download", is_flag=True, help="Allow torchvision to download missing datasets.")
@max_specs_option
def run_spec(grid_name: str, index: int, data_root: str | None, artifacts: str, source_path: str | None,
             threads: int | None, download: bool, max_specs: int) -> None:
    """Run one spec's kernel here and print its per-epoch metrics (no Ray, no database)."""
    from orchestrator.console.debug import run_one_spec

    for line in run_one_spec(grid_name, index, data_root, artifacts, source_path, threads, download, max_specs):
        click.echo(line)


@main.group()
def sources() -> None:
    """Source checkpoints."""


@sources.command("convert")
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("output_path", type=click.Path(dir_okay=False))
def sources_convert(input_path: str, output_path: str) -> None:
    """One-time conversion of a TRUSTED pickled checkpoint (e.g. MadryLab's) to a safe state dict.

    This unpickles INPUT with full pickle semantics: run it only on files you trust.
    """
    from orchestrator.console.debug import convert_source

    digest = convert_source(input_path, output_path)
    click.echo(f"wrote {output_path} (sha256 {digest})")


@main.command()
@click.option("--db", "db_url", default=None, help="Database URL (default: sqlite:///rtgrid-demo.sqlite).")
@click.option("--artifacts", default="rtgrid_artifacts", show_default=True)
@click.option("--seed-base", default=0, show_default=True, type=int,
              help="First seed of the study (sources and transfers); each seed base is a new experiment.")
@click.option("--target", type=click.Choice(["digits", "mnist"]), default="digits", show_default=True,
              help="The digit target: embedded sklearn digits, or real MNIST (needs --data-root).")
@click.option("--data-root", default=None, envvar="RTGRID_DATA",
              help="Dataset root holding MNIST in the torchvision layout (for --target mnist).")
@click.option("--reduced", is_flag=True, help="A smaller study (fewer seeds and epochs; noisier verdicts).")
@click.option("--quiet", is_flag=True)
def demo(db_url: str | None, artifacts: str, seed_base: int, target: str, data_root: str | None, reduced: bool,
         quiet: bool) -> None:
    """Run the embedded study end to end (local Ray, SQLite): three papers' claims, each with a verdict
    computed from the database (the same table as `rtgrid report study`)."""
    from orchestrator.console.demo import DemoOptions, run_demo

    options = DemoOptions(seed_base=seed_base, target=target, data_root=data_root,
                          scale="reduced" if reduced else "full")
    failed = run_demo(db_url, artifacts, quiet or _group_quiet(), click.echo, options)
    if failed:
        from orchestrator.errors import RuntimeFailure

        raise RuntimeFailure(f"{failed} demo trials failed")


@main.group()
def er() -> None:
    """Effective-robustness baselines."""


@er.command("fit")
@click.option("--id", "id_dataset", required=True, help="ID dataset, e.g. cifar10.")
@click.option("--ood", "ood_dataset", required=True, help="OOD set, e.g. cifar10.1.")
@click.option("--experiment", type=EXPERIMENT, default=None,
              help="The experiment whose trials get ER (only its trials of the fitted protocol). Alone: also the "
                   "testbed (its random-init runs; a circular fit, warned).")
@click.option("--testbed-experiment", type=EXPERIMENT, default=None,
              help="Fit on this experiment's random-init runs (ID data only) instead; needs --experiment.")
@click.option("--csv", "csv_path", default=None, type=click.Path(), help="Fit on a testbed CSV (id_acc,ood_acc).")
@click.option("--published", default=None, help="Use published coefficients, e.g. imagenet-v2.")
@click.option("--force", is_flag=True, help="Use a published baseline on a pair it was not fitted on.")
@click.option("--protocol", default=None,
              help='With --csv/--published: the evaluation protocol, e.g. \'{"input_size":16}\' (default: the '
                   "experiment's one protocol on the pair).")
@click.option("--transform", type=click.Choice(["logit", "probit"]), default="logit", show_default=True)
@db_option
def er_fit(id_dataset: str, ood_dataset: str, experiment: str | None, testbed_experiment: str | None,
           csv_path: str | None, published: str | None, force: bool, protocol: str | None, transform: str,
           db_url: str | None) -> None:
    """Fit an ER baseline per evaluation protocol, store it, and fill ER for the --experiment's trials of
    that protocol on (ID, OOD) (never another experiment's)."""
    from orchestrator.console.store import open_repository
    from orchestrator.errors import UserError
    from orchestrator.results import er as er_fits

    sources = [x for x in (testbed_experiment, csv_path, published) if x]
    if len(sources) > 1 or (not sources and not experiment):
        raise UserError("give --experiment, and at most one of --testbed-experiment, --csv, --published")
    if testbed_experiment and not experiment:
        raise UserError("--testbed-experiment needs --experiment (the experiment whose trials get ER)")
    if protocol is not None and not (csv_path or published):
        raise UserError("--protocol applies to --csv and --published (an experiment testbed fits each protocol)")
    repo = open_repository(db_url, write=True)
    if csv_path:
        fits = [er_fits.fit_from_csv(repo, csv_path, id_dataset, ood_dataset, transform, experiment, protocol)]
    elif published:
        fits = [er_fits.use_published(repo, published, id_dataset, ood_dataset, transform, experiment, protocol,
                                      force)]
    else:
        assert experiment is not None
        fits = er_fits.fit_from_experiment(repo, experiment, id_dataset, ood_dataset, transform, testbed_experiment)
    for fit in fits:
        for warning in fit.warnings:
            click.echo(warning, err=True)
        click.echo(fit.describe())


# --- results (read-only) -----------------------------------------------------------------
def _subset(value: str | None) -> int | str | None:
    if value is None or value == "full":
        return value
    try:
        return int(value)
    except ValueError:
        from orchestrator.errors import UserError

        raise UserError(f"--subset-size must be an integer or 'full', got {value!r}") from None


@main.command()
@click.argument("sql", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--schema", is_flag=True, help="Print the tables, columns and the results view, with their meaning.")
@readonly_db_option
@timeout_option
def query(sql: str | None, fmt: str, schema: bool, db_url: str | None) -> None:
    """Run one read-only SQL statement (SQL, or - to read it from stdin) and print the rows.

    The database is opened read-only: a statement that writes is refused and changes nothing.
    Start with the `results` view: rtgrid query --schema
    """
    from orchestrator.errors import UserError
    from orchestrator.results.query import ReadOnlyDatabase, format_result, schema_text

    if sql == "-":
        sql = sys.stdin.read()
    if not schema and not sql:
        raise UserError('give a SQL statement, e.g. rtgrid query "SELECT * FROM results LIMIT 5", or --schema')
    with ReadOnlyDatabase(db_url) as database:
        if schema:
            click.echo(schema_text(database))
        if sql:
            click.echo(format_result(database.execute_user(sql), fmt))


@main.command()
@click.argument("experiment", type=EXPERIMENT)
@click.option("--table", type=click.Choice(["trials", "epochs"]), default="trials", show_default=True,
              help="trials: one row per trial; epochs: one row per (trial, evaluation epoch).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Output file (CSV goes to stdout without it).")
@readonly_db_option
@timeout_option
def export(experiment: str, table: str, fmt: str, output: str | None, db_url: str | None) -> None:
    """Export an experiment's trials or per-epoch metrics (fractions) as CSV or Parquet."""
    from orchestrator.results.export import export_frame, write_export

    frame = export_frame(experiment, table, db_url)
    text = write_export(frame, fmt, output)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {len(frame)} rows to {output}", err=True)


def _report_names() -> list[str]:
    return ["utrera-table7", "utrera-blocks", "renofeation", "er", "demo", "study"]


@main.command()
@click.argument("name", type=click.Choice(_report_names()))
@click.option("--experiment", type=EXPERIMENT, required=True, help="Experiment name.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table",
              show_default=True, help="csv: the report's data in long form, accuracies as fractions.")
@click.option("--blocks", type=click.IntRange(min=0), default=None,
              help="Fine-tuned blocks (utrera-table7; default 3).")
@readonly_db_option
@timeout_option
def report(name: str, experiment: str, fmt: str, blocks: int | None, db_url: str | None) -> None:
    """Print one of the papers' tables for an experiment (percentages; ER in pp).

    \b
    utrera-table7  mean test accuracy by target x subset size and source (± 95% CI, * = best)
    utrera-blocks  test accuracy by number of fine-tuned blocks per target x source
    renofeation    clean accuracy and ASR by method x dataset, with the average
    er             per-epoch ER binned by ID accuracy, per architecture and init
    demo           the smoke grid's closing tables and the SQL behind the first
    study          the embedded study's verdicts (rtgrid demo): paired effect, 95% CI, n, verdict per claim
    """
    from orchestrator.results.reports import build_report, render

    click.echo(render(build_report(name, experiment, db_url, blocks), fmt))


def _plot_names() -> list[str]:
    return ["accuracy-delta", "learning-curve", "blocks", "asr-vs-clean", "er", "study-accuracy", "study-asr",
            "study-er"]


@main.command()
@click.argument("name", type=click.Choice(_plot_names()))
@click.option("--experiment", type=EXPERIMENT, required=True, help="Experiment name.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--blocks", type=click.IntRange(min=0), default=None,
              help="Fine-tuned blocks (accuracy-delta, learning-curve; default 3).")
@click.option("--subset-size", default=None, help="Training images (learning-curve, blocks; an integer or 'full'; "
                                                  "default the smallest).")
@readonly_db_option
@timeout_option
def plot(name: str, experiment: str, output: str, blocks: int | None, subset_size: str | None,
         db_url: str | None) -> None:
    """Draw one of the papers' figures for an experiment as a PNG.

    \b
    accuracy-delta  robust − natural test accuracy vs training images (Utrera Fig. 2b)
    learning-curve  test accuracy vs epoch (Utrera Fig. 3)
    blocks          test accuracy vs fine-tuned blocks (Utrera Fig. 4)
    asr-vs-clean    ASR vs clean accuracy (Renofeation)
    er              ER vs ID accuracy over training (Andreassen Fig. 1c)
    study-accuracy  the study (rtgrid demo): accuracy vs training images per source, 95% CI (Utrera)
    study-asr       the study: ASR vs clean accuracy per method and budget, 95% CI (Chin)
    study-er        the study: ER vs ID accuracy, binned, pre-trained vs random init (Andreassen)
    """
    from orchestrator.results.plots import check_output, make_plot, save_plot

    check_output(output)
    figure = make_plot(name, experiment, db_url, blocks=blocks, subset_size=_subset(subset_size))
    click.echo(f"wrote {save_plot(figure, output)}")


if __name__ == "__main__":  # pragma: no cover
    main()
