"""Plan a grid against the database: dedup by spec_hash, stage order, packing.

The database is the truth: a spec whose hash is already `completed` (in any experiment)
is linked, never run again; failed, cancelled-then-retried and interrupted ones run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any

from db.models import KEY_COLUMNS, TrialInit
from db.repository import GridConflict, PlanResult, Repository
from orchestrator.errors import UserError
from orchestrator.plan.grids import Grid
from orchestrator.plan.names import check_experiment_name
from orchestrator.plan.sources import SourceRef
from orchestrator.plan.spec import TrialSpec
from workers.trainable import catalog


def trial_init(spec: TrialSpec) -> TrialInit:
    """How the spec's backbone starts (`trials.init`), from the catalog's method traits.

    random: a source trial (it trains from scratch), source scratch, or a testbed method
    (random_init and not distils: retrain); distilled: random_init and distils (renofeation,
    delta-r: random weights, the pre-trained source as teacher); pretrained: the rest.
    Revision 0004 back-fills older rows with this rule as it was then.
    """
    ref = SourceRef.maybe(spec.source)
    if spec.kind == "source" or (ref is not None and ref.is_scratch):
        return TrialInit.RANDOM
    traits = catalog.method(spec.method, spec.kind)
    if traits.random_init:
        return TrialInit.DISTILLED if traits.distils else TrialInit.RANDOM
    return TrialInit.PRETRAINED


def trial_row(spec: TrialSpec) -> dict[str, Any]:
    """The `trials` row of a spec: its hash, canonical JSON, key fields as columns and its init."""
    row: dict[str, Any] = {name: getattr(spec, name) for name in KEY_COLUMNS}
    row["spec_hash"] = spec.spec_hash
    row["spec_json"] = spec.canonical_json()
    row["init"] = trial_init(spec).value
    return row


def grid_summary_json(grid: Grid) -> str:
    return json.dumps({"name": grid.name, "description": grid.description, "specs": len(grid.specs),
                       "notes": grid.notes})


def record_plan(repo: Repository, grid: Grid, experiment: str) -> tuple[int, PlanResult]:
    """Upsert the experiment and one pending trial per new spec, link existing ones: one transaction.

    An experiment holds one grid (a preset, or a YAML grid by its `name:`); planning another grid
    into it is refused, because resume and every report would mix the two.
    """
    check_experiment_name(experiment)  # the name becomes part of paths (Ray Tune's run directory)
    rows = [trial_row(spec) for spec in grid.specs]
    try:
        return repo.plan_experiment(experiment, grid.name, grid_summary_json(grid), rows)
    except GridConflict as exc:
        raise UserError(str(exc)) from None


def estimated_cost(spec: TrialSpec) -> float:
    """Relative cost used to start the longest trials first (fewer stragglers at the end)."""
    images = spec.subset_size or 50_000
    per_epoch = spec.param("iterations_per_epoch") or 0
    work = per_epoch * (spec.param("batch_size") or 128) if per_epoch else images
    adv = 1 + (spec.param("adv_steps") or 0)
    size = (spec.param("input_size") or 32) ** 2
    return float(spec.epochs * work * adv * size)


@dataclass(frozen=True)
class Stage:
    name: str
    specs: list[TrialSpec]


def stages(specs: Iterable[TrialSpec]) -> list[Stage]:
    """Sources before the transfers that need them; longest first inside a stage."""
    ordered = sorted(specs, key=estimated_cost, reverse=True)
    sources = [s for s in ordered if s.kind == "source"]
    transfers = [s for s in ordered if s.kind == "transfer"]
    return [stage for stage in (Stage("sources", sources), Stage("transfers", transfers)) if stage.specs]


def pack(specs: Sequence[TrialSpec], pack_size: int, alone: Set[str] = frozenset()) -> list[list[TrialSpec]]:
    """Group specs into Tune trials of at most `pack_size`; specs of one cell stay together.

    Specs in `alone` (ones whose worker died before) get a pack each, so that they cannot take
    other specs down with them. The order of `specs` (longest first) is kept between packs,
    so packs are long-first too.
    """
    packs: list[list[TrialSpec]] = [[s] for s in specs if s.spec_hash in alone]
    rest = [s for s in specs if s.spec_hash not in alone]
    if pack_size <= 1:
        packs += [[s] for s in rest]
    else:
        cells: dict[tuple[Any, ...], list[TrialSpec]] = {}
        for spec in rest:
            key = (spec.kind, spec.arch, spec.source, spec.dataset, spec.method, spec.blocks, spec.subset_size)
            cells.setdefault(key, []).append(spec)
        for members in cells.values():
            for start in range(0, len(members), pack_size):
                packs.append(members[start : start + pack_size])
    packs.sort(key=lambda p: max(estimated_cost(s) for s in p) * len(p), reverse=True)
    return packs
