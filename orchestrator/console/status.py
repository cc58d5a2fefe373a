"""`rtgrid status`: counts by status, throughput and ETA, per experiment or overall."""

from __future__ import annotations

from db.models import ACTIVE
from db.repository import Repository
from orchestrator.console.views import format_status
from orchestrator.errors import UserError


def _eta(remaining: int, per_hour: float) -> str:
    if remaining == 0:
        return "done"
    if per_hour <= 0:
        return "unknown (no trial finished in the last hour)"
    hours = remaining / per_hour
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def status_report(repo: Repository, experiment: str | None) -> str:
    if experiment is not None and repo.experiment_id(experiment) is None:
        raise UserError(f"unknown experiment {experiment!r}")
    counts = repo.status_counts(experiment)
    per_hour = repo.completed_per_hour(experiment)
    remaining = sum(counts.get(status, 0) for status in ACTIVE)
    header = f"experiment {experiment}" if experiment else "all experiments"
    extra = {"throughput": f"{per_hour:.1f} trials/h (last hour)", "eta": _eta(remaining, per_hour)}
    text = f"{header}\n" + format_status(counts, extra)
    if experiment is None:
        names = repo.list_experiments()
        if names:
            text += "\nexperiments: " + ", ".join(names)
    return text
