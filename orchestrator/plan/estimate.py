"""`rtgrid plan`: a grid's trials per stage, image-steps, GPU-hours and cost, computed without a database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.plan.cost import ImageSteps, Throughput, gpu_seconds, image_steps, throughput_key, throughput_of
from orchestrator.plan.grids import Grid
from orchestrator.plan.planner import stages
from orchestrator.plan.spec import TrialSpec


@dataclass
class StageEstimate:
    name: str
    trials: int = 0
    train_steps: int = 0
    eval_steps: int = 0
    gpu_seconds: float = 0.0
    unpriced: int = 0  # trials with no throughput figure or no known split size: not in gpu_seconds

    def add(self, steps: ImageSteps | None, seconds: float | None) -> None:
        self.trials += 1
        if steps is not None:
            self.train_steps += steps.train
            self.eval_steps += steps.eval
        if seconds is None:
            self.unpriced += 1
        else:
            self.gpu_seconds += seconds


@dataclass
class GridEstimate:
    grid: str
    stages: list[StageEstimate]
    rates_used: list[Throughput]
    missing_rates: dict[tuple[str, int, str], int]  # (arch, input_size, blocks) -> trials without a figure
    unknown_sizes: dict[str, int]  # dataset -> trials whose image-steps are unknown before loading
    longest: tuple[TrialSpec, float] | None  # the trial with the most GPU-seconds
    price: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> StageEstimate:
        total = StageEstimate("total")
        for stage in self.stages:
            total.trials += stage.trials
            total.train_steps += stage.train_steps
            total.eval_steps += stage.eval_steps
            total.gpu_seconds += stage.gpu_seconds
            total.unpriced += stage.unpriced
        return total

    @property
    def gpu_hours(self) -> float:
        return self.total.gpu_seconds / 3600

    @property
    def cost(self) -> float | None:
        return None if self.price is None else self.gpu_hours * self.price


def estimate_grid(grid: Grid, table: Mapping[tuple[str, int, str], Throughput], price: float | None = None
                  ) -> GridEstimate:
    estimates: list[StageEstimate] = []
    used: dict[tuple[str, int, str], Throughput] = {}
    missing: dict[tuple[str, int, str], int] = {}
    unknown: dict[str, int] = {}
    longest: tuple[TrialSpec, float] | None = None
    for stage in stages(grid.specs):
        estimate = StageEstimate(stage.name)
        for spec in stage.specs:
            steps = image_steps(spec)
            rate = throughput_of(spec, table)
            seconds = None
            if steps is None:
                unknown[spec.dataset] = unknown.get(spec.dataset, 0) + 1
            if rate is None:
                key = throughput_key(spec)
                missing[key] = missing.get(key, 0) + 1
            else:
                used[rate.key] = rate
            if steps is not None and rate is not None:
                seconds = gpu_seconds(steps, rate)
                if longest is None or seconds > longest[1]:
                    longest = (spec, seconds)
            estimate.add(steps, seconds)
        estimates.append(estimate)
    return GridEstimate(grid.name, estimates, sorted(used.values(), key=lambda r: r.key), missing, unknown,
                        longest, price, list(grid.notes))


def describe_spec(spec: TrialSpec) -> str:
    """The key fields of a spec in one short phrase."""
    parts: list[Any] = [spec.kind, spec.arch, spec.method, spec.dataset]
    if spec.blocks is not None:
        parts.append(f"blocks {spec.blocks}")
    parts.append(f"subset {'full' if spec.subset_size is None else spec.subset_size}")
    parts.append(f"{spec.epochs} epochs")
    parts.append(f"seed {spec.seed}")
    return " ".join(str(p) for p in parts)


def estimate_json(estimate: GridEstimate) -> dict[str, Any]:
    def stage(s: StageEstimate) -> dict[str, Any]:
        return {"name": s.name, "trials": s.trials, "train_image_steps": s.train_steps,
                "eval_image_steps": s.eval_steps, "gpu_hours": s.gpu_seconds / 3600, "unpriced_trials": s.unpriced}

    longest = None
    if estimate.longest is not None:
        spec, seconds = estimate.longest
        longest = {"spec_hash": spec.spec_hash, "spec": describe_spec(spec), "gpu_hours": seconds / 3600}
    return {
        "grid": estimate.grid,
        "stages": [stage(s) for s in estimate.stages],
        "total": stage(estimate.total),
        "throughput": [{"arch": r.arch, "input_size": r.input_size, "blocks": r.blocks,
                        "train_images_per_s": r.train_images_per_s, "eval_images_per_s": r.eval_images_per_s,
                        "device": r.device, "source": r.source} for r in estimate.rates_used],
        "missing_throughput": [{"arch": k[0], "input_size": k[1], "blocks": k[2], "trials": n}
                               for k, n in sorted(estimate.missing_rates.items())],
        "unknown_sizes": estimate.unknown_sizes,
        "gpu_hour_price": estimate.price,
        "cost": estimate.cost,
        "longest_trial": longest,
    }
