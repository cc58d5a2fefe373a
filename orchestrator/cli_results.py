"""Click commands that answer questions: `query`, `export`, `report`, `plot` (all read-only).

cli.py adds them to the `rtgrid` group (`main.add_command(query)` …). Bad input prints one
line on stderr, "rtgrid: error: …", and exits with status 2, as every rtgrid command does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from orchestrator.cli_errors import one_line_errors

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = "Database URL (default: $RTGRID_DB or sqlite:///rtgrid.sqlite); opened read-only."


def db_option(func: F) -> F:
    return click.option("--db", "db_url", default=None, help=DB_HELP)(func)


def _subset(value: str | None) -> int | str | None:
    if value is None or value == "full":
        return value
    try:
        return int(value)
    except ValueError:
        from orchestrator.errors import UserError

        raise UserError(f"--subset-size must be an integer or 'full', got {value!r}") from None


@click.command()
@click.argument("sql", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--schema", is_flag=True, help="Print the tables, columns and the results view, with their meaning.")
@db_option
@one_line_errors
def query(sql: str | None, fmt: str, schema: bool, db_url: str | None) -> None:
    """Run one read-only SQL statement (SQL, or - to read it from stdin) and print the rows.

    The database is opened read-only: a statement that writes is refused and changes nothing.
    Start with the `results` view: rtgrid query --schema
    """
    from orchestrator.errors import UserError
    from orchestrator.query import ReadOnlyDatabase, format_result, schema_text

    if sql == "-":
        sql = sys.stdin.read()
    if not schema and not sql:
        raise UserError('give a SQL statement, e.g. rtgrid query "SELECT * FROM results LIMIT 5", or --schema')
    with ReadOnlyDatabase(db_url) as database:  # type: ignore[arg-type]
        if schema:
            click.echo(schema_text(database))
        if sql:
            click.echo(format_result(database.execute_user(sql), fmt))


@click.command()
@click.argument("experiment")
@click.option("--table", type=click.Choice(["trials", "epochs"]), default="trials", show_default=True,
              help="trials: one row per trial; epochs: one row per (trial, evaluation epoch).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Output file (CSV goes to stdout without it).")
@db_option
@one_line_errors
def export(experiment: str, table: str, fmt: str, output: str | None, db_url: str | None) -> None:
    """Export an experiment's trials or per-epoch metrics (fractions) as CSV or Parquet."""
    from orchestrator.export import export_frame, write_export

    frame = export_frame(experiment, table, db_url)
    text = write_export(frame, fmt, output)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {len(frame)} rows to {output}", err=True)


def _report_names() -> list[str]:
    return ["utrera-table7", "utrera-blocks", "renofeation", "er", "demo"]


@click.command()
@click.argument("name", type=click.Choice(_report_names()))
@click.option("--experiment", required=True, help="Experiment name.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table",
              show_default=True, help="csv: the report's data in long form, accuracies as fractions.")
@click.option("--blocks", type=int, default=None, help="Fine-tuned blocks (utrera-table7; default 3).")
@db_option
@one_line_errors
def report(name: str, experiment: str, fmt: str, blocks: int | None, db_url: str | None) -> None:
    """Print one of the papers' tables for an experiment (percentages; ER in pp).

    \b
    utrera-table7  mean test accuracy by target x subset size and source (± 95% CI, * = best)
    utrera-blocks  test accuracy by number of fine-tuned blocks per target x source
    renofeation    clean accuracy and ASR by method x dataset, with the average
    er             per-epoch ER binned by ID accuracy, per architecture and init
    demo           the demo's closing tables and the SQL behind the first
    """
    from orchestrator.reports import build_report, render

    click.echo(render(build_report(name, experiment, db_url, blocks), fmt))


def _plot_names() -> list[str]:
    return ["accuracy-delta", "learning-curve", "blocks", "asr-vs-clean", "er"]


@click.command()
@click.argument("name", type=click.Choice(_plot_names()))
@click.option("--experiment", required=True, help="Experiment name.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--blocks", type=int, default=None, help="Fine-tuned blocks (accuracy-delta, learning-curve; "
                                                        "default 3).")
@click.option("--subset-size", default=None, help="Training images (learning-curve, blocks; an integer or 'full'; "
                                                  "default the smallest).")
@db_option
@one_line_errors
def plot(name: str, experiment: str, output: str, blocks: int | None, subset_size: str | None,
         db_url: str | None) -> None:
    """Draw one of the papers' figures for an experiment as a PNG.

    \b
    accuracy-delta  robust − natural test accuracy vs training images (Utrera Fig. 2b)
    learning-curve  test accuracy vs epoch (Utrera Fig. 3)
    blocks          test accuracy vs fine-tuned blocks (Utrera Fig. 4)
    asr-vs-clean    ASR vs clean accuracy (Renofeation)
    er              ER vs ID accuracy over training (Andreassen Fig. 1c)
    """
    from orchestrator.plots import check_output, make_plot, save_plot

    check_output(output)
    figure = make_plot(name, experiment, db_url, blocks=blocks, subset_size=_subset(subset_size))
    click.echo(f"wrote {save_plot(figure, output)}")


COMMANDS = (query, export, report, plot)
