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


def experiment_option(func: F) -> F:
    return click.option("-e", "--experiment", type=EXPERIMENT, default=None, help="Experiment name.")(func)


def experiment_argument(func: F) -> F:
    """The experiment as `-e/--experiment NAME` (the convention everywhere) or positionally (the older spelling)."""
    func = experiment_option(func)
    return click.argument("experiment_arg", type=EXPERIMENT, metavar="[EXPERIMENT]", required=False)(func)


def _one_experiment(positional: str | None, option: str | None, *, required: bool = True) -> str | None:
    """The experiment, given as `-e/--experiment NAME` (the convention) or positionally (the older spelling)."""
    from orchestrator.errors import UserError

    if positional is not None and option is not None and positional != option:
        raise UserError(f"two experiments given ({positional!r} and --experiment {option!r}): give one")
    name = option if option is not None else positional
    if name is None and required:
        raise UserError("give the experiment: -e/--experiment NAME")
    return name


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def grid_list(as_json: bool) -> None:
    """The grid presets with their trial counts."""
    from orchestrator.plan.grids import PRESETS, iter_presets

    if as_json:
        grids = [PRESETS[name]() for name in PRESETS]
        click.echo(json.dumps([{"name": g.name, "trials": len(g.specs), "description": g.description}
                               for g in grids], indent=2))
        return
    for name, line in iter_presets():
        click.echo(f"{name:<20}{line}")


@grid.command("show")
@click.argument("name", metavar="NAME|FILE")
@click.option("--count", is_flag=True, help="Print only the number of trials.")
@click.option("--specs", is_flag=True, help="List every spec: index (run-spec --index), hash, the fields that vary.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@max_specs_option
def grid_show(name: str, count: bool, specs: bool, fmt: str, as_json: bool, max_specs: int) -> None:
    """Show a grid (preset NAME or YAML FILE): its size, cells and every axis (params.* included)."""
    from orchestrator.console.views import format_breakdown, format_spec_rows
    from orchestrator.plan.grids import breakdown, load_grid, spec_rows

    loaded = load_grid(name, max_specs)
    fmt = "json" if as_json else fmt
    if count:
        click.echo(json.dumps({"trials": len(loaded.specs)}) if fmt == "json" else len(loaded.specs))
        return
    if specs:
        rows = spec_rows(loaded)
        click.echo(json.dumps(rows, indent=2) if fmt == "json" else format_spec_rows(rows))
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


@main.command()
@click.option("--grid", "grid_name", default=None, help="Grid preset or YAML file whose datasets and sources to check.")
@click.option("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://… (default: local Ray).")
@click.option("--data-root", default=None, envvar="RTGRID_DATA", help="Dataset root ($RTGRID_DATA).")
@click.option("--artifacts", default="rtgrid_artifacts", envvar="RTGRID_ARTIFACTS", show_default=True,
              help="Directory every node must read and write.")
@click.option("--manifest", default=None,
              help="Source manifest (default: $RTGRID_SOURCES, else $RTGRID_ARTIFACTS/sources.json).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@max_specs_option
@db_option
@click.pass_context
def doctor(ctx: click.Context, grid_name: str | None, address: str | None, data_root: str | None, artifacts: str,
           manifest: str | None, as_json: bool, max_specs: int, db_url: str | None) -> None:
    """Check a cluster before a grid: database, Ray and versions, datasets and sources on every node, artifacts.

    One line per check with its verdict and fix; exit 0 only when every check passes (1 otherwise)."""
    import os

    from orchestrator.console.doctor import Options, load_grid_verdict, render, run_checks

    if manifest:  # the grid's manifest: sources resolve against the same file doctor verifies
        os.environ["RTGRID_SOURCES"] = manifest
    loaded, verdicts = (load_grid_verdict(grid_name, max_specs) if grid_name else (None, None))
    options = Options(address=address, data_root=data_root, artifacts=artifacts, db_url=db_url, manifest=manifest)
    if not render(([verdicts] if verdicts else []) + run_checks(loaded, options), as_json, click.echo):
        ctx.exit(1)


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
        click.option("--data-workers", type=click.IntRange(min=0), default=None,
                     help="DataLoader workers decoding photo datasets, per trial (default: none on CPU, a few "
                          "on GPU; in-memory sets are batched on the training device)."),
        click.option("--decode-cache-mb", type=click.FloatRange(min=0), default=None,
                     help="MiB of decoded photos each loader worker keeps (default: none on CPU; on GPU the "
                          "workers' default, GPU_DECODE_CACHE_MB in workers/context.py)."),
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


def _checked_options(db_url: str | None, run: dict[str, Any]) -> Any:
    """The run options, refused (one line, exit 2) before the database is opened or created when they
    cannot work: bad values, an unreachable cluster, a trial that does not fit on it."""
    from orchestrator.console.store import database_dialect
    from orchestrator.run.submit import preflight

    options = _options(**run)
    preflight(database_dialect(db_url), options)
    return options


def _run_and_print(repo: Any, loaded: Any, experiment: str, options: Any, *, must_finish: bool = False) -> None:
    """Run and print the summary. `must_finish` (resume, retry): trials left to another driver fail
    the command, so a resume that ran nothing does not look like success."""
    from orchestrator.console.progress import GridProgress
    from orchestrator.console.views import format_plan, format_run
    from orchestrator.errors import RuntimeFailure
    from orchestrator.run.submit import submit

    result = submit(repo, loaded, experiment, options,
                    progress_factory=lambda total: GridProgress(total, quiet=options.quiet))
    if not options.quiet:
        click.echo(format_plan(experiment, result.plan))
    click.echo(format_run(result.run))
    if result.run.failed:
        raise RuntimeFailure(f"{result.run.failed} of {result.run.runnable} trials failed "
                             f"(rtgrid retry {shlex.quote(experiment)} runs them again)")
    if must_finish and result.run.claimed_elsewhere:
        raise RuntimeFailure(f"{result.run.claimed_elsewhere} runnable trials left unrun: "
                             f"{result.run.held_elsewhere or 'another driver holds them'}")


def plan_options(func: F) -> F:
    """Options of `rtgrid plan` (and `submit --dry-run`, its alias)."""
    options = [
        click.option("--gpu-hour-price", type=click.FloatRange(min=0), default=None,
                     help="Price of one GPU-hour: prints the cost."),
        click.option("--throughput", "throughput_file", type=click.Path(dir_okay=False), default=None,
                     help="CSV of images/s per (arch, input_size, blocks) over the shipped table "
                          "(orchestrator/plan/throughput.csv has the columns and where each figure comes from)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _print_plan(loaded: Any, data_root: str | None, throughput_file: str | None, price: float | None,
                as_json: bool, db_url: str | None = None) -> None:
    from orchestrator.console.plan_view import format_estimate
    from orchestrator.console.preflight import completed_in_database, preflight
    from orchestrator.plan.cost import read_throughput
    from orchestrator.plan.estimate import estimate_grid, estimate_json
    from orchestrator.plan.grids import Grid

    table = read_throughput(throughput_file)
    estimate = estimate_grid(loaded, table, price)
    checks = preflight(loaded, data_root)
    try:
        done = completed_in_database(loaded, db_url)
    except Exception as exc:  # a plan never needs the database: say why it was not read, and go on
        from orchestrator.errors import USER_ERRORS, one_line

        if not isinstance(exc, USER_ERRORS):
            raise
        done = None
        estimate.notes.append(f"database not read ({one_line(exc)}): completed specs are not counted out")
    to_run = None
    if done:
        rest = Grid(loaded.name, loaded.description, [s for s in loaded.specs if s.spec_hash not in done])
        to_run = estimate_grid(rest, table, price)
    if as_json:
        data = estimate_json(estimate)
        data["preflight"] = [{"ok": c.ok, "what": c.what, "detail": c.detail} for c in checks]
        data["already_completed"] = None if done is None else len(done)
        data["to_run"] = None if to_run is None else estimate_json(to_run)["total"]
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(format_estimate(estimate, checks, len(done) if done else None, to_run))


@main.command()
@click.argument("grid_name", metavar="NAME|FILE")
@click.option("--data-root", default=None, envvar="RTGRID_DATA", help="Dataset root to check ($RTGRID_DATA).")
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--db", "db_url", default=None,
              help=f"{DB_HELP[:-1]}: when it exists, specs completed there are counted out; read only, never created.")
@max_specs_option
def plan(grid_name: str, data_root: str | None, gpu_hour_price: float | None, throughput_file: str | None,
         as_json: bool, db_url: str | None, max_specs: int) -> None:
    """What a grid (preset NAME or YAML FILE) would run and cost; writes nothing.

    Trials per stage, training and evaluation image-steps, GPU-hours at the images/s of a throughput table,
    the cost at --gpu-hour-price, the longest trial, and whether the datasets and source weights are where
    the workers look (on this machine).
    """
    from orchestrator.plan.grids import load_grid

    _print_plan(load_grid(grid_name, max_specs), data_root, throughput_file, gpu_hour_price, as_json, db_url)


@main.command()
@click.argument("grid_name", metavar="NAME|FILE")
@click.option("-e", "--experiment", type=EXPERIMENT, default=None, help="Experiment name (default: the grid's name).")
@click.option("--dry-run", is_flag=True, help="Print the plan (`rtgrid plan`) and write nothing.")
@click.option("--record-only", is_flag=True, help="Record the experiment and its pending trials; run nothing.")
@plan_options
@max_specs_option
@db_option
@run_options
def submit(grid_name: str, experiment: str | None, dry_run: bool, record_only: bool, gpu_hour_price: float | None,
           throughput_file: str | None, max_specs: int, db_url: str | None, **run: Any) -> None:
    """Run a grid (preset NAME or YAML FILE): every spec not already completed."""
    from orchestrator.console.store import open_repository
    from orchestrator.console.views import format_plan
    from orchestrator.plan.grids import load_grid
    from orchestrator.plan.names import check_experiment_name
    from orchestrator.run.submit import plan_only

    loaded = load_grid(grid_name, max_specs)
    name = experiment or check_experiment_name(loaded.name, "grid name", " (or name the experiment: --experiment)")
    if dry_run:
        _print_plan(loaded, run["data_root"], throughput_file, gpu_hour_price, False, db_url)
        return
    options = None if record_only else _checked_options(db_url, run)
    repo = open_repository(db_url, write=True)
    if record_only:
        result = plan_only(repo, loaded, name)
        click.echo(format_plan(name, result))
        if result.new == 0:
            click.echo("nothing new to record: every spec of this grid is already in the database")
        return
    _run_and_print(repo, loaded, name, options)


@main.command()
@experiment_argument
@db_option
@run_options
def resume(experiment_arg: str | None, experiment: str | None, db_url: str | None, **run: Any) -> None:
    """Run again what an experiment has not completed (failed, interrupted, pending)."""
    from orchestrator.console.store import open_repository
    from orchestrator.run.submit import grid_for_experiment

    name = _one_experiment(experiment_arg, experiment)
    assert name is not None
    options = _checked_options(db_url, run)
    repo = open_repository(db_url, write=True)
    _run_and_print(repo, grid_for_experiment(repo, name), name, options, must_finish=True)


@main.command()
@experiment_argument
@click.option("--failed", is_flag=True, help="Retry failed trials (the default when neither flag is given).")
@click.option("--cancelled", is_flag=True, help="Retry cancelled trials (with --failed: both).")
@db_option
@run_options
def retry(experiment_arg: str | None, experiment: str | None, failed: bool, cancelled: bool, db_url: str | None,
          **run: Any) -> None:
    """Reset an experiment's failed and/or cancelled trials to pending and run them."""
    from orchestrator.console.store import open_repository
    from orchestrator.run.submit import grid_for_experiment

    name = _one_experiment(experiment_arg, experiment)
    assert name is not None
    statuses = [s.value for s, wanted in ((TrialStatus.FAILED, failed or not cancelled),
                                          (TrialStatus.CANCELLED, cancelled)) if wanted]
    options = _checked_options(db_url, run)  # before any trial is reset
    repo = open_repository(db_url, write=True)
    loaded = grid_for_experiment(repo, name)
    experiment_id = repo.experiment_id(name)
    assert experiment_id is not None  # grid_for_experiment refused an unknown experiment
    reset = repo.reset_for_retry(experiment_id, statuses=statuses)
    click.echo(f"{reset} {' or '.join(statuses)} trials reset to pending")
    _run_and_print(repo, loaded, name, options, must_finish=True)


@main.command()
@experiment_argument
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
def cancel(experiment_arg: str | None, experiment: str | None, yes: bool, db_url: str | None) -> None:
    """Mark an experiment's pending and running trials cancelled (a running driver stops). Asks first."""
    from orchestrator.console.store import open_repository
    from orchestrator.errors import UserError

    name = _one_experiment(experiment_arg, experiment)
    repo = open_repository(db_url, write=True)
    experiment_id = repo.experiment_id(str(name))
    if experiment_id is None:
        raise UserError(f"unknown experiment {name!r}")
    if not yes:
        counts = repo.status_counts(name)
        active = sum(counts.get(s, 0) for s in (TrialStatus.PENDING, TrialStatus.RUNNING))
        click.confirm(f"cancel experiment {name!r}: {active} pending or running trials (shared ones too)?",
                      abort=True, err=True)
    click.echo(f"{repo.cancel_experiment(experiment_id)} trials cancelled")


@main.command()
@experiment_argument
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="A live view, refreshed until nothing is pending or running (Ctrl-C "
                                            "stops it).")
@click.option("--interval", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Seconds between --watch refreshes.")
@click.option("--failures", type=click.IntRange(min=0), default=5, show_default=True,
              help="How many of the latest failures to show.")
@readonly_db_option
@timeout_option
def status(experiment_arg: str | None, experiment: str | None, as_json: bool, watch: bool, interval: float,
           failures: int, db_url: str | None) -> None:
    """Stages and cells by state, running trials, the latest failures, throughput and an ETA weighted by
    image-steps (one experiment, or all)."""
    from orchestrator.console import status as view
    from orchestrator.console.store import open_repository

    name = _one_experiment(experiment_arg, experiment, required=False)
    repo = open_repository(db_url, write=False)
    if watch and as_json:
        from orchestrator.errors import UserError

        raise UserError("--watch is a live view; --json prints one snapshot: give one of them")
    if watch:
        view.watch(lambda: view.status_view(repo, name, failures), interval)
        return
    data = view.status_view(repo, name, failures)
    click.echo(view.status_json(data) if as_json else view.format_status_view(data))


@main.command("run-spec")
@click.option("--preset", "grid_name", default=None, help="Grid preset or YAML file holding the spec.")
@click.option("--index", type=click.IntRange(min=0), default=None,
              help="Position of the spec in the grid (default 0; see grid show --specs).")
@click.option("--hash", "spec_hash", default=None,
              help="The spec's hash (6+ leading characters): in the --preset grid, or without --preset the trial "
                   "of that hash in the database (e.g. a failed one).")
@click.option("--data-root", default=None, envvar="RTGRID_DATA")
@click.option("--artifacts", default="rtgrid_artifacts", envvar="RTGRID_ARTIFACTS", show_default=True)
@click.option("--source-path", default=None, help="Checkpoint file for the spec's source.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: all cores).")
@click.option("--download", is_flag=True, help="Allow torchvision to download missing datasets.")
@max_specs_option
@readonly_db_option
def run_spec(grid_name: str | None, index: int | None, spec_hash: str | None, data_root: str | None, artifacts: str,
             source_path: str | None, threads: int | None, download: bool, max_specs: int, db_url: str | None) -> None:
    """Run one spec's kernel here and print its per-epoch metrics (no Ray; writes no database)."""
    from orchestrator.console.debug import choose_spec, run_one_spec

    chosen = choose_spec(grid_name, index, spec_hash, db_url, max_specs)
    for line in run_one_spec(chosen, data_root, artifacts, source_path, threads, download):
        click.echo(line)


@main.group()
def sources() -> None:
    """Source checkpoints."""


def manifest_option(func: F) -> F:
    return click.option("--manifest", default=None,
                        help="Source manifest (default: $RTGRID_SOURCES, else $RTGRID_ARTIFACTS/sources.json).")(func)


@sources.command("list")
@manifest_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def sources_list(manifest: str | None, as_json: bool) -> None:
    """The source models of the manifest: name, architecture, clean ImageNet top-1, sha256, file."""
    from orchestrator.plan.manifest import as_rows, load, manifest_path

    rows = as_rows(load(manifest_path(manifest)))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        click.echo(f"{row['name']:<24} {row['arch']:<14} top1 {top1:>6}  {row['sha256'][:12]}  {row['file']}")
    if not rows:
        click.echo(f"no sources in {manifest_path(manifest)} (add one: rtgrid sources add NAME FILE --arch ARCH)")


@sources.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="Architecture of the checkpoint, e.g. resnet50.")
@click.option("--top1", type=float, default=None, help="Clean ImageNet top-1 (%%); known for the published models.")
@click.option("--replace", is_flag=True, help="Record a new file under an existing name.")
@manifest_option
def sources_add(name: str, file: str, arch: str, top1: float | None, replace: bool, manifest: str | None) -> None:
    """Hash FILE and record it as NAME: grid files then name it `source: manifest:NAME`."""
    from orchestrator.plan.manifest import add, manifest_path

    entry = add(manifest_path(manifest), name, file, arch, top1, replace=replace)
    click.echo(f"{entry.name}: {entry.file} sha256 {entry.sha256[:12]} ({manifest_path(manifest)})")


@sources.command("verify")
@manifest_option
@click.pass_context
def sources_verify(ctx: click.Context, manifest: str | None) -> None:
    """Hash every file of the manifest again; exit 1 when one is missing or differs."""
    from orchestrator.plan.manifest import load, manifest_path, verify_entry

    entries = load(manifest_path(manifest))
    problems = [problem for problem in map(verify_entry, entries.values()) if problem]
    for problem in problems:
        click.echo(f"FAIL  {problem}")
    click.echo(f"{len(entries) - len(problems)} of {len(entries)} source files match their sha256")
    if problems:
        ctx.exit(1)


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
@db_option
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
@click.option("-e", "--experiment", type=EXPERIMENT, default=None,
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


@main.group()
def experiment() -> None:
    """The experiments in the database: list, show, delete."""


@experiment.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@readonly_db_option
def experiment_list(as_json: bool, db_url: str | None) -> None:
    """Every experiment with its grid and trial counts by status."""
    from orchestrator.console.experiments import experiment_rows, format_experiment_rows
    from orchestrator.console.store import open_repository

    rows = experiment_rows(open_repository(db_url, write=False))
    click.echo(json.dumps(rows, indent=2) if as_json else format_experiment_rows(rows))


@experiment.command("show")
@experiment_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@readonly_db_option
def experiment_show(experiment_arg: str | None, experiment: str | None, as_json: bool, db_url: str | None) -> None:
    """One experiment: its grid, trial counts, how many trials it shares with other experiments."""
    from orchestrator.console.experiments import experiment_detail, format_experiment_detail
    from orchestrator.console.store import open_repository

    name = str(_one_experiment(experiment_arg, experiment))
    detail = experiment_detail(open_repository(db_url, write=False), name)
    click.echo(json.dumps(detail, indent=2) if as_json else format_experiment_detail(detail))


@experiment.command("delete")
@experiment_argument
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
def experiment_delete(experiment_arg: str | None, experiment: str | None, yes: bool, db_url: str | None) -> None:
    """Delete an experiment and the trials only it holds (trials shared with other experiments are kept)."""
    from orchestrator.console.experiments import delete_experiment, experiment_detail
    from orchestrator.console.store import open_repository

    name = str(_one_experiment(experiment_arg, experiment))
    repo = open_repository(db_url, write=True)
    detail = experiment_detail(repo, name)
    if not yes:
        click.confirm(f"delete experiment {name!r}: {detail['trials'] - detail['shared_with_other_experiments']} "
                      f"trials and their epochs (keeping {detail['shared_with_other_experiments']} shared with other "
                      "experiments)?", abort=True, err=True)
    result = delete_experiment(repo, name)
    click.echo(f"deleted experiment {name}: {result.deleted} trials removed, {result.kept_shared} shared trials kept")


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
@experiment_argument
@click.option("--table", type=click.Choice(["trials", "epochs"]), default="trials", show_default=True,
              help="trials: one row per trial; epochs: one row per (trial, evaluation epoch).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "tensorboard"]), default=None,
              help="Default: from -o's extension (.parquet), else csv. tensorboard: one run per trial "
                   "(epoch scalars, HParams) under -o DIR.")
@click.option("-o", "--output", default=None, type=click.Path(),
              help="Output file (CSV goes to stdout without it); a directory for tensorboard.")
@readonly_db_option
@timeout_option
def export(experiment_arg: str | None, experiment: str | None, table: str, fmt: str | None, output: str | None,
           db_url: str | None) -> None:
    """Export an experiment's trials or per-epoch metrics (fractions) as CSV or Parquet, or as TensorBoard runs."""
    from orchestrator.results.export import RUN_FORMATS, export_format, export_frame, export_runs, write_export

    name = _one_experiment(experiment_arg, experiment)
    assert name is not None
    fmt = export_format(fmt, output)
    if fmt in RUN_FORMATS:
        runs = export_runs(name, fmt, output, db_url)
        click.echo(f"wrote {runs} runs to {output}/{name} (tensorboard --logdir {output})", err=True)
        return
    frame = export_frame(name, table, db_url)
    text = write_export(frame, fmt, output)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {len(frame)} rows to {output}", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8050, show_default=True)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (the dashboard has no authentication).")
@click.option("--refresh", "refresh_s", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds between refreshes of the open page while a grid runs.")
@readonly_db_option
@timeout_option
def ui(host: str, port: int, allow_remote: bool, refresh_s: float, db_url: str | None) -> None:
    """Serve a read-only web dashboard of the results (experiments, grid heatmap, trials, curves, reports)."""
    from orchestrator.ui.server import check_bind, open_database, serve

    warning = check_bind(host, allow_remote)
    database = open_database(db_url)
    if warning:
        click.echo(warning.format(host=host, port=port), err=True)
    click.echo(f"rtgrid ui: http://{host}:{port}/ on {database.safe_url} (read-only; Ctrl-C stops it)", err=True)
    serve(database, host, port, refresh_s)


def _report_names() -> list[str]:
    from orchestrator.results.reports import REPORTS

    return list(REPORTS)


def _known_name(what: str, name: str, known: list[str]) -> str:
    """A report / plot name, or one line with a "did you mean" (not Click's multi-line usage)."""
    if name not in known:
        from orchestrator.errors import UserError
        from orchestrator.results.reports import unknown_name_message

        raise UserError(unknown_name_message(what, name, known))
    return name


WHERE_HELP = ("Only trials where COLUMN=VALUE[,VALUE…] or COLUMN!=VALUE, on a key column (kind, arch, source, "
              "dataset, ood, method, blocks, subset_size, seed, epochs; null, or full for subset_size); repeatable.")


@main.command()
@click.argument("name", metavar="NAME")
@click.option("-e", "--experiment", "experiments", type=EXPERIMENT, multiple=True, required=True,
              help="Experiment name; repeat it to put experiments side by side.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "latex", "csv", "json"]), default="table",
              show_default=True, help="csv: the report's data in long form, accuracies as fractions; json: the "
                                      "tables as shown and that data; latex: booktabs tables.")
@click.option("--where", "where", multiple=True, help=WHERE_HELP)
@click.option("--blocks", type=click.IntRange(min=0), default=None,
              help="Fine-tuned blocks (utrera-table7; default 3).")
@readonly_db_option
@timeout_option
def report(name: str, experiments: tuple[str, ...], fmt: str, where: tuple[str, ...], blocks: int | None,
           db_url: str | None) -> None:
    """Print one of the papers' tables for an experiment (percentages with ± 95% CI and (runs); ER in pp).

    \b
    utrera-table7  mean test accuracy by target x subset size and source (± 95% CI, * = best)
    utrera-blocks  test accuracy by number of fine-tuned blocks per target x source
    renofeation    clean accuracy and ASR by method x dataset, with the average
    er             per-epoch ER binned by ID accuracy, per architecture and init
    demo           the smoke grid's closing tables and the SQL behind the first
    study          the embedded study's verdicts (rtgrid demo): paired effect, 95% CI, n, verdict per claim
    """
    from orchestrator.results.reports import build_reports, render

    _known_name("report", name, _report_names())
    click.echo(render(build_reports(name, list(experiments), db_url, blocks, where), fmt))


def _plot_names() -> list[str]:
    from orchestrator.results.plots import PLOTS

    return list(PLOTS)


@main.command()
@click.argument("name", metavar="NAME")
@click.option("-e", "--experiment", type=EXPERIMENT, required=True, help="Experiment name.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write: .png, .pdf or .svg (the extension picks the format).")
@click.option("--dpi", type=click.IntRange(min=20, max=1200), default=150, show_default=True,
              help="Resolution of a PNG (PDF and SVG stay vector).")
@click.option("--where", "where", multiple=True, help=WHERE_HELP)
@click.option("--blocks", type=click.IntRange(min=0), default=None,
              help="Fine-tuned blocks (accuracy-delta, learning-curve; default 3).")
@click.option("--subset-size", default=None, help="Training images (learning-curve, blocks; an integer or 'full'; "
                                                  "default the smallest).")
@readonly_db_option
@timeout_option
def plot(name: str, experiment: str, output: str, dpi: int, where: tuple[str, ...], blocks: int | None,
         subset_size: str | None, db_url: str | None) -> None:
    """Draw one of the papers' figures for an experiment as PNG, PDF or SVG.

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

    _known_name("plot", name, _plot_names())
    check_output(output)
    figure = make_plot(name, experiment, db_url, blocks=blocks, subset_size=_subset(subset_size), where=where)
    click.echo(f"wrote {save_plot(figure, output, dpi)}")


if __name__ == "__main__":  # pragma: no cover
    main()
