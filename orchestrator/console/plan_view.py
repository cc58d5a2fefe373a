"""Plain text of `rtgrid plan`: the stages table, throughput sources, cost, longest trial, preflight."""

from __future__ import annotations

from orchestrator.console.preflight import Check
from orchestrator.plan.cost import human_count
from orchestrator.plan.estimate import GridEstimate, StageEstimate, describe_spec


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f}" if hours >= 1 else f"{hours:.3f}"


def format_estimate(estimate: GridEstimate, checks: list[Check] | None, already_completed: int | None,
                    to_run: GridEstimate | None = None) -> str:
    lines = [f"plan {estimate.grid} (nothing is written)"]
    header = f"{'stage':<10} {'trials':>8} {'train image-steps':>18} {'eval image-steps':>17} {'GPU-hours':>10}"
    lines += [header, "-" * len(header)]

    def row(stage: StageEstimate) -> str:
        hours = _hours(stage.gpu_seconds) + ("+" if stage.unpriced else "")
        return (f"{stage.name:<10} {stage.trials:>8,} {human_count(stage.train_steps):>18} "
                f"{human_count(stage.eval_steps):>17} {hours:>10}")

    lines += [row(stage) for stage in estimate.stages]
    lines.append(row(estimate.total))
    if already_completed and to_run is not None:
        lines.append(f"{already_completed:,} of these specs are already completed in the database and will not run "
                     f"again; to run: {to_run.total.trials:,} trials, {_hours(to_run.total.gpu_seconds)} GPU-hours"
                     + (f", cost {to_run.cost:,.2f}" if to_run.cost is not None else ""))
    for rate in estimate.rates_used:
        blocks = "any blocks" if rate.blocks == "*" else f"{rate.blocks} blocks"
        lines.append(f"throughput {rate.arch} {rate.input_size}px {blocks}: {rate.train_images_per_s:,.0f} train / "
                     f"{rate.eval_images_per_s:,.0f} eval images/s on {rate.device} — {rate.source}")
    for (arch, size, blocks), trials in sorted(estimate.missing_rates.items()):
        lines.append(f"no throughput figure for {arch} {size}px blocks {blocks} ({trials:,} trials): not in the "
                     "GPU-hours (+); give one with --throughput FILE")
    for dataset, trials in sorted(estimate.unknown_sizes.items()):
        lines.append(f"split size of {dataset} unknown before loading ({trials:,} trials): not in the image-steps")
    if estimate.cost is not None:
        lines.append(f"cost: {estimate.gpu_hours:,.1f} GPU-hours x {estimate.price:g}/GPU-hour = "
                     f"{estimate.cost:,.2f}")
    else:
        lines.append("cost: give --gpu-hour-price to price the GPU-hours")
    if estimate.longest is not None:
        spec, seconds = estimate.longest
        lines.append(f"longest trial: {_hours(seconds)} GPU-hours, {spec.spec_hash[:12]} ({describe_spec(spec)})")
    if checks is not None:
        bad = [c for c in checks if not c.ok]
        lines.append(f"preflight on this machine: {len(checks) - len(bad)} ok, {len(bad)} missing")
        lines += [f"  {'ok' if c.ok else 'MISSING':<8}{c.what}: {c.detail}" for c in checks]
    lines.extend(f"note: {note}" for note in estimate.notes)
    return "\n".join(lines)
