"""Plain-text renderings of plans, breakdowns and status for the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from db.models import STATUSES, TrialStatus
from orchestrator.plan.grids import Grid, value_label

if TYPE_CHECKING:
    from db.repository import PlanResult
    from orchestrator.run.runner import RunSummary


def format_breakdown(grid: Grid, info: Mapping[str, Any]) -> str:
    lines = [f"{grid.name}: {grid.description}", f"trials: {info['total']}"]
    factors = info["factors"]
    if info["total"]:
        low, high = info["specs_per_cell"]
        per_cell = str(low) if low == high else f"{low}..{high}"
        product = " x ".join(f"{n} {axis}" for axis, n in factors.items())
        if not factors:
            shape = ""
        elif info["cells"] == info["full_product"]:
            shape = f" = {product}"
        else:
            shape = f", not a full product ({product} = {info['full_product']} combinations)"
        lines.append(f"cells: {info['cells']}{shape}; {per_cell} specs per cell "
                     f"(a cell: one {', '.join(info['cell_axes'])})")
    for axis, counts in info["axes"].items():
        if len(counts) == 1:
            (value, _), = counts.items()
            lines.append(f"  {axis:<24} {value}")
            continue
        shown = ", ".join(f"{value} ({n})" for value, n in list(counts.items())[:12])
        more = f", … {len(counts) - 12} more" if len(counts) > 12 else ""
        lines.append(f"  {axis:<24} {len(counts)} values: {shown}{more}")
    lines.extend(f"note: {note}" for note in grid.notes)
    return "\n".join(lines)


def format_spec_rows(rows: list[dict[str, Any]]) -> str:
    """`grid show --specs`: index, the hash's first 12 characters, the fields that vary across the grid."""
    if not rows:
        return "no specs"
    columns = [c for c in rows[0] if c not in ("index", "spec_hash")]

    def cell(column: str, value: Any) -> str:
        text = value_label(column, value)
        return text[:17] if text.startswith("spec:") else text  # spec:<12 of the source trial's hash>

    widths = {c: max(len(c), *(len(cell(c, r[c])) for r in rows)) for c in columns}
    lines = ["index  spec_hash     " + "  ".join(c.ljust(widths[c]) for c in columns)]
    for row in rows:
        lines.append(f"{row['index']:>5}  {row['spec_hash'][:12]}  "
                     + "  ".join(cell(c, row[c]).ljust(widths[c]) for c in columns))
    return "\n".join(line.rstrip() for line in lines)


def format_plan(experiment: str, result: PlanResult) -> str:
    return (
        f"experiment {experiment}: {result.total} trials — {result.new} new, "
        f"{result.already_completed} already completed, {result.already_pending} already pending/other"
    )


def format_status(counts: Mapping[str, int], extra: Mapping[str, Any] | None = None) -> str:
    total = sum(counts.values())
    parts = [f"{name} {counts.get(name, 0)}" for name in STATUSES]
    line = f"{total} trials: " + ", ".join(parts)
    if extra:
        line += "".join(f"\n{key}: {value}" for key, value in extra.items())
    return line


def format_run(summary: RunSummary) -> str:
    line = (f"ran {summary.runnable} trials in {summary.seconds:.1f}s: {summary.completed} completed, "
            f"{summary.failed} failed")
    if summary.skipped:
        line += f", {summary.skipped} not finished"
    if summary.claimed_elsewhere:
        line += f"; {summary.claimed_elsewhere} left to another driver"
        if summary.held_elsewhere:
            line += f" ({summary.held_elsewhere})"
    for spec_hash, error in list(summary.failures.items())[:10]:
        line += f"\n  failed {spec_hash[:12]}: {error}"
    if len(summary.failures) > 10:
        line += (f"\n  … {len(summary.failures) - 10} more failures "
                 f"(rtgrid query \"SELECT spec_hash, error FROM trials WHERE status='{TrialStatus.FAILED.value}'\")")
    return line
