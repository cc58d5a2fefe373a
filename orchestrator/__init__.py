"""rtgrid's Python API: what to run, how it runs, what the results say.

Names load lazily so that `import orchestrator` costs nothing (no pandas, Ray or torch until used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that owns it
_EXPORTS: dict[str, str] = {
    "TrialSpec": "orchestrator.plan.spec",
    "Grid": "orchestrator.plan.grids",
    "load_grid": "orchestrator.plan.grids",
    "PRESETS": "orchestrator.plan.grids",
    "results_frame": "orchestrator.results.frames",
    "UserError": "orchestrator.errors",
    "TrialStatus": "db.models",
}

__all__ = ["PRESETS", "Grid", "TrialSpec", "TrialStatus", "UserError", "load_grid", "results_frame"]

if TYPE_CHECKING:  # pragma: no cover - static view of the lazy names
    from db.models import TrialStatus
    from orchestrator.errors import UserError
    from orchestrator.plan.grids import PRESETS, Grid, load_grid
    from orchestrator.plan.spec import TrialSpec
    from orchestrator.results.frames import results_frame


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
