"""How figures look: the one palette and marker set, one (colour, marker) per series label across every
panel of a figure, metric ranges that CI bands are clipped to, and the output formats.

Colours are Okabe & Ito's colour-blind-safe palette ("Color Universal Design", 2008); markers differ too,
so that series stay apart in greyscale and for every colour vision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError

# blue, orange, bluish green, vermillion, reddish purple, sky blue, black, yellow (last: faint on white)
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
                              "#F0E442")
MARKERS: tuple[str, ...] = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<", ">", "p")
FORMATS: tuple[str, ...] = ("png", "pdf", "svg")  # matplotlib's Agg, PDF and SVG backends
DEFAULT_DPI = 150

# A metric's possible range in the unit plotted (percentage points): bands never leave it.
ACCURACY_RANGE = (0.0, 100.0)
DELTA_RANGE = (-100.0, 100.0)  # a difference of two accuracies
ER_RANGE = (-100.0, 100.0)


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str


def styles(labels: Iterable[str]) -> dict[str, Style]:
    """One style per label, in the order given (the caller's sort), the same in every panel of a figure.
    Colour and marker advance together, so two labels never share both."""
    ordered = list(dict.fromkeys(labels))
    return {label: Style(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]) for i, label in enumerate(ordered)}


def n_text(counts: Iterable[int]) -> str:
    """`n=10`, or `n=3–10` where points rest on different numbers of runs."""
    values = sorted({int(c) for c in counts})
    if not values:
        return "n=0"
    return f"n={values[0]}" if len(values) == 1 else f"n={values[0]}–{values[-1]}"


def output_format(path: str | Path) -> str:
    """The figure format named by the file's extension (png, pdf or svg)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UserError(f"{path}: a figure file ends in {', '.join('.' + f for f in FORMATS)} "
                        f"(the extension picks the format)")
    return suffix
