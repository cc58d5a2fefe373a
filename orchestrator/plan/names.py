"""Experiment names: the one rule, checked wherever a user gives one (CLI options and arguments, grid
files, the Python API). A name also becomes part of paths (Ray Tune's run directory under --artifacts),
so only plain characters: never a separator, never a leading dot, bounded length."""

from __future__ import annotations

import re

from orchestrator.errors import UserError

EXPERIMENT_NAME_MAX = 64
EXPERIMENT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{EXPERIMENT_NAME_MAX - 1}}}")
EXPERIMENT_NAME_RULE = (f"1-{EXPERIMENT_NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or "
                        "digit")


class ExperimentNameError(UserError):
    """An experiment name breaks the rule (one line; the name shown escaped and cut short)."""


def shown_name(name: str, limit: int = 40) -> str:
    """A user's name for a message: escaped (no raw control characters) and cut short."""
    text = ascii(name) if len(name) <= limit else ascii(name[:limit]) + f"… ({len(name)} characters)"
    return text


def check_experiment_name(name: str, what: str = "experiment name", other_fix: str = "") -> str:
    """`name` if it follows the rule; ExperimentNameError saying the rule (and `other_fix`) otherwise."""
    if not isinstance(name, str) or EXPERIMENT_NAME.fullmatch(name) is None:
        raise ExperimentNameError(f"invalid {what} {shown_name(str(name))}: use {EXPERIMENT_NAME_RULE}{other_fix}")
    return name


def printable(text: str) -> str:
    """`text` with control characters (terminal escape sequences) written as escapes, for display."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
