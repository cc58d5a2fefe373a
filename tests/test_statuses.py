"""db.models.TrialStatus owns the trial statuses: the CHECK constraint lists exactly its values, and
no code in db/, orchestrator/ or cli.py spells a status as a string literal of its own."""

from __future__ import annotations

import ast
import re
from importlib import import_module
from pathlib import Path

import pytest
from sqlalchemy import CheckConstraint

from db.models import (
    ACTIVE,
    FINISHED,
    RETRYABLE,
    RUNNABLE,
    STARTABLE,
    STATUSES,
    Base,
    TrialStatus,
    status_values,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCANNED = [*sorted((REPO_ROOT / "db").rglob("*.py")), *sorted((REPO_ROOT / "orchestrator").rglob("*.py")),
           REPO_ROOT / "cli.py"]
# Files that may spell the statuses: the enum's own module.
OWNER = {"db/models.py"}
# (file, literal) pairs that stay literal, with the reason. Empty today: keep it short.
EXCEPTIONS: dict[tuple[str, str], str] = {}
# A status compared in SQL text: `status = 'failed'`, `status IN ('pending', ...)`.
SQL_STATUS = re.compile(r"status\s*(?:=|<>|!=|IN\s*\()\s*'(" + "|".join(STATUSES) + ")'", re.IGNORECASE)


def _literals(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in STATUSES or SQL_STATUS.search(node.value):
                found.append((node.lineno, node.value))
    return found


def test_no_status_literal_outside_the_enum() -> None:
    assert len(SCANNED) > 20
    offenders = []
    for path in SCANNED:
        name = path.relative_to(REPO_ROOT).as_posix()
        if name in OWNER:
            continue
        offenders += [f"{name}:{line}: {value!r}" for line, value in _literals(path)
                      if (name, value) not in EXCEPTIONS]
    assert not offenders, "use db.models.TrialStatus (or its groups) instead of:\n" + "\n".join(offenders)


def test_the_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('A = "failed"\nB = "WHERE t.status = \'completed\' AND x"\nC = "the trial failed"\n')
    assert [value for _, value in _literals(sample)] == ["failed", "WHERE t.status = 'completed' AND x"]


def test_check_constraint_lists_exactly_the_enum() -> None:
    checks = {c.name: str(c.sqltext) for c in Base.metadata.tables["trials"].constraints
              if isinstance(c, CheckConstraint)}
    assert checks["ck_trials_status"] == "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')"
    assert re.findall(r"'(\w+)'", checks["ck_trials_status"]) == [status.value for status in TrialStatus]
    # byte-identical to what revision 0001 created: no migration for the CHECK
    initial = import_module("migrations.versions.0001_initial")
    assert checks["ck_trials_status"] == f"status IN ({initial.STATUSES})"
    server_default = Base.metadata.tables["trials"].c.status.server_default
    assert server_default is not None and server_default.arg == TrialStatus.PENDING  # type: ignore[attr-defined]


def test_status_groups() -> None:
    assert STATUSES == ("pending", "running", "completed", "failed", "cancelled")
    assert TrialStatus.finished() == FINISHED == {TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.CANCELLED}
    assert ACTIVE == set(TrialStatus) - FINISHED
    assert RUNNABLE < STARTABLE < RETRYABLE and TrialStatus.COMPLETED not in RETRYABLE
    assert TrialStatus.CANCELLED not in STARTABLE  # a cancelled trial runs again only after a retry
    assert status_values(RETRYABLE) == ("pending", "running", "failed", "cancelled")
    assert "failed" in RUNNABLE and TrialStatus("failed") is TrialStatus.FAILED  # plain strings work too


@pytest.mark.parametrize("status", list(TrialStatus))
def test_members_are_their_values(status: TrialStatus) -> None:
    assert status == status.value and f"{status}" == status.value and hash(status) == hash(status.value)
