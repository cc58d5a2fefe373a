"""One error handler for the whole CLI: user errors exit 2, bugs exit 1 with a crash log; logging verbosity."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli
from cli import main


def _invoke(*args: str, group: click.Group = main, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    # catch_exceptions=False: the handler, not Click's test runner, must turn errors into exit codes
    result = CliRunner().invoke(group, list(args), catch_exceptions=False, env=env)
    return result.exit_code, result.stdout, result.stderr


def _lines(text: str) -> list[str]:
    return text.strip().splitlines()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    assert _invoke("submit", "smoke", "--record-only", "--experiment", "s", "--db", url)[0] == 0
    return url


def test_user_error_is_one_line_exit_2() -> None:
    code, out, err = _invoke("grid", "show", "no-such-grid")
    assert code == 2 and out == ""
    assert _lines(err) == [_lines(err)[0]] and err.startswith("rtgrid: error: unknown grid 'no-such-grid'")


def test_refused_query_is_one_line_exit_2(sqlite_db: str) -> None:
    code, _, err = _invoke("query", "DELETE FROM trials", "--db", sqlite_db)
    assert code == 2 and len(_lines(err)) == 1 and err.startswith("rtgrid: error: ") and "read-only" in err
    assert _invoke("query", "SELECT count(*) AS n FROM trials", "--db", sqlite_db, "--format", "csv")[1] == "n\n61\n"


def test_unreachable_database_is_one_line_exit_2() -> None:
    code, _, err = _invoke("status", "--db", "postgresql://postgres@127.0.0.1:1/x")
    assert code == 2 and len(_lines(err)) == 1 and err.startswith("rtgrid: error: cannot open database")
    assert "Traceback" not in err


def _group_with(command: click.Command) -> click.Group:
    """A copy of the real group with one more (test-only) command; `main` itself is left as it is."""
    group = copy.copy(main)
    group.commands = {**main.commands, command.name or "": command}
    return group


@click.command("explode")
def _explode() -> None:
    """A real bug: a lookup that cannot succeed."""
    settings: dict[str, int] = {}
    print(settings["threads"])


def test_internal_error_is_one_line_exit_1_with_the_traceback_in_a_log_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    code, _, err = _invoke("explode", group=_group_with(_explode), env={"RTGRID_LOG_DIR": str(logs)})
    assert code == 1 and len(_lines(err)) == 1, err
    match = re.fullmatch(r"rtgrid: internal error: KeyError: 'threads' \(traceback in (\S+)\); please report it",
                         err.strip())
    assert match, err
    log = Path(match.group(1))
    assert log.parent == logs and log.is_file()
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and 'settings["threads"]' in text and "KeyError" in text
    assert "explode" in text  # the command, never its arguments
    assert "explode" not in main.commands  # the real group did not gain the command


def test_internal_error_in_a_subgroup_is_handled_too(tmp_path: Path) -> None:
    sub = copy.copy(main.commands["grid"])
    assert isinstance(sub, cli.RtgridGroup)
    sub.commands = {**sub.commands, "explode": _explode}  # type: ignore[attr-defined]
    code, _, err = _invoke("grid", "explode", group=_group_with(sub), env={"RTGRID_LOG_DIR": str(tmp_path)})
    assert code == 1 and len(_lines(err)) == 1 and "internal error: KeyError" in err


def test_subgroups_have_the_handler() -> None:
    for name in ("grid", "db", "er", "sources"):
        assert isinstance(main.commands[name], cli.RtgridGroup), name


@click.command("chatty")
def _chatty() -> None:
    logging.getLogger("orchestrator.run.test").warning("a warning")
    logging.getLogger("db.test").info("some info")
    logging.getLogger("workers.test").debug("a detail")
    click.echo("done")


def test_verbosity_flags() -> None:
    group = _group_with(_chatty)
    code, out, err = _invoke("chatty", group=group)
    assert code == 0 and out == "done\n" and _lines(err) == ["rtgrid: warning: a warning"]
    assert _lines(_invoke("-q", "chatty", group=group)[2]) == []
    assert _lines(_invoke("-v", "chatty", group=group)[2]) == ["rtgrid: warning: a warning", "rtgrid: info: some info"]
    err = _invoke("-vv", "chatty", group=group)[2]
    assert len(_lines(err)) == 3 and "[workers.test]: a detail" in err


def test_verbose_shows_info_logs_of_a_real_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    code, _, err = _invoke("-v", "submit", "smoke", "--record-only", "--db", url)
    assert code == 0 and "rtgrid: info: new database" in err
    code, _, err = _invoke("submit", "smoke", "--record-only", "--db", f"sqlite:///{tmp_path / 'w.db'}")
    assert code == 0 and err == ""


def test_version() -> None:
    code, out, _ = _invoke("--version")
    assert code == 0 and re.fullmatch(r"rtgrid \S+\n", out)


def test_group_quiet_reaches_the_commands_with_their_own_quiet() -> None:
    @click.command("show-quiet")
    def show_quiet() -> None:
        click.echo(cli._options(quiet=False).quiet)

    assert _invoke("-q", "show-quiet", group=_group_with(show_quiet))[1] == "True\n"
    assert _invoke("show-quiet", group=_group_with(show_quiet))[1] == "False\n"
