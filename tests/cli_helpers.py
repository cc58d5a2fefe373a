"""The one way tests call the `rtgrid` command line: `run_cli` on `cli.main`, `error_line` for failures.

Every command goes through the real group (`cli.main`), as a user's shell does, so the group's
setup and the one error handler are part of what is tested.
"""

from __future__ import annotations

from collections.abc import Mapping

import click
from click.testing import CliRunner, Result

from cli import main

__all__ = ["Result", "command", "error_line", "run_cli"]


def run_cli(*args: str, expect: int | None = 0, group: click.Group = main,
            env: Mapping[str, str] | None = None) -> Result:
    """`rtgrid ARGS…`; asserts the exit code is `expect` (None: any). catch_exceptions=False: the CLI's
    own handler, not Click's test runner, must turn errors into exit codes. `group`: a copy of `main`
    with test-only commands; `env`: extra environment variables."""
    result = CliRunner().invoke(group, [str(arg) for arg in args], catch_exceptions=False, env=env)
    if expect is not None:
        assert result.exit_code == expect, (args, result.exit_code, result.stdout, result.stderr)
    return result


def error_line(result: Result) -> str:
    """The one stderr line of a refused command: exit 2, `rtgrid: error: …`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtgrid: error: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


def command(*path: str) -> click.Command:
    """The Click command at `path` under `cli.main` (e.g. command("report")), for its parameters."""
    found: click.Command = main
    for name in path:
        assert isinstance(found, click.Group), (path, name)
        found = found.commands[name]
    return found
