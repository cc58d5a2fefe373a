"""What the results say: frames (the Python API), statistics, reports, plots, export, ER fits.

`from orchestrator.results import results_frame` is the entry point; it loads pandas on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["results_frame"]


def __getattr__(name: str) -> Any:
    if name == "results_frame":
        from orchestrator.results.frames import results_frame

        return results_frame
    raise AttributeError(f"module 'orchestrator.results' has no attribute {name!r}")
