"""CLI conventions: the experiment as -e/--experiment everywhere (the positional spelling kept), JSON on read
commands, one line for a conflicting or missing experiment."""

from __future__ import annotations

import json

import pytest
from cli_helpers import command, error_line, run_cli

from orchestrator.plan.grids import PRESETS

EXPERIMENT_COMMANDS = [("status",), ("resume",), ("retry",), ("cancel",), ("export",), ("report",), ("plot",),
                       ("er", "fit"), ("experiment", "show"), ("experiment", "delete"), ("submit",)]


@pytest.mark.parametrize("path", EXPERIMENT_COMMANDS)
def test_every_experiment_command_takes_dash_e(path: tuple[str, ...]) -> None:
    options = {opt for p in command(*path).params for opt in getattr(p, "opts", [])}
    assert {"-e", "--experiment"} <= options, path


def test_two_different_experiments_or_none_are_one_line(tmp_path: object) -> None:
    assert "two experiments given" in error_line(run_cli("status", "a", "-e", "b", expect=2))
    assert "give the experiment" in error_line(run_cli("cancel", "--yes", expect=2))
    assert "give the experiment" in error_line(run_cli("experiment", "show", expect=2))


def test_grid_list_json() -> None:
    rows = json.loads(run_cli("grid", "list", "--json").stdout)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert next(r for r in rows if r["name"] == "utrera2021")["trials"] == 14_400
    assert json.loads(run_cli("grid", "show", "utrera2021", "--count", "--json").stdout) == {"trials": 14_400}


def test_the_demo_reads_and_writes_the_shared_default_database() -> None:
    """`rtgrid demo` has the same --db option as every command (no demo-only default file)."""
    demo_db = next(p for p in command("demo").params if p.name == "db_url")
    status_db = next(p for p in command("cancel").params if p.name == "db_url")
    assert demo_db.default is None and demo_db.help == status_db.help
    assert "sqlite:///rtgrid.sqlite" in str(demo_db.help)
