"""`rtgrid experiment list|show|delete`: the experiments in a database, one in detail, and removing one."""

from __future__ import annotations

import json
from typing import Any

from db.models import STATUSES
from db.repository import DeleteResult, Repository
from orchestrator.errors import UserError


def _require(repo: Repository, name: str) -> int:
    experiment_id = repo.experiment_id(name)
    if experiment_id is None:
        known = repo.list_experiments()
        from difflib import get_close_matches

        close = get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown experiment {name!r}{hint} (known: {', '.join(known) or 'none'})")
    return experiment_id


def experiment_rows(repo: Repository) -> list[dict[str, Any]]:
    """One dict per experiment: name, grid, created, trials and the count of each status."""
    rows = []
    for name in repo.list_experiments():
        info = repo.experiment_info(name)
        assert info is not None
        counts = repo.status_counts(name)
        rows.append({"name": name, "grid": info.grid, "created_at": info.created_at.isoformat(timespec="seconds"),
                     "trials": sum(counts.values()), **counts})
    return rows


def format_experiment_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no experiments"
    header = f"{'experiment':<24}{'grid':<22}{'created':<21}{'trials':>8}" + "".join(f"{s:>11}" for s in STATUSES)
    lines = [header]
    for row in rows:
        lines.append(f"{row['name']:<24}{row['grid']:<22}{row['created_at']:<21}{row['trials']:>8}"
                     + "".join(f"{row[s]:>11}" for s in STATUSES))
    return "\n".join(lines)


def experiment_detail(repo: Repository, name: str) -> dict[str, Any]:
    experiment_id = _require(repo, name)
    info = repo.experiment_info(name)
    assert info is not None
    counts = repo.status_counts(name)
    grid = json.loads(info.grid_json) if info.grid_json else {}
    return {"name": name, "id": experiment_id, "grid": info.grid, "description": grid.get("description"),
            "notes": grid.get("notes", []), "created_at": info.created_at.isoformat(timespec="seconds"),
            "trials": sum(counts.values()), "statuses": counts,
            "shared_with_other_experiments": sum(repo.shared_trial_counts(experiment_id).values())}


def format_experiment_detail(detail: dict[str, Any]) -> str:
    lines = [f"experiment {detail['name']} (grid {detail['grid']}, created {detail['created_at']})"]
    if detail["description"]:
        lines.append(f"  {detail['description']}")
    statuses = ", ".join(f"{s} {n}" for s, n in detail["statuses"].items())
    lines.append(f"trials: {detail['trials']}: {statuses}")
    lines.append(f"shared with other experiments: {detail['shared_with_other_experiments']} (a delete keeps them)")
    lines.extend(f"note: {note}" for note in detail["notes"])
    return "\n".join(lines)


def delete_experiment(repo: Repository, name: str) -> DeleteResult:
    experiment_id = _require(repo, name)
    try:
        return repo.delete_experiment(experiment_id)
    except ValueError as exc:
        raise UserError(f"experiment {name!r} is running ({exc}): cancel it first (rtgrid cancel)") from None
