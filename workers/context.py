"""What a kernel needs from its surroundings, as plain values (no Ray, no database)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The callable every kernel reports through: report(epoch (1-based), metrics).
Report = Callable[[int, dict[str, float]], None]


@dataclass
class KernelContext:
    data_root: str | None = None  # torchvision-layout data root; embedded datasets ignore it
    artifacts_dir: str = "rtgrid_artifacts"  # shared by all workers: checkpoints, adversarial sets
    device: str = "cpu"
    download: bool = False
    source_path: str | None = None  # resolved source checkpoint of a transfer spec
    resume_state: dict[str, Any] | None = None  # saved by an earlier attempt of this trial
    save_state: Callable[[dict[str, Any]], None] | None = None  # called at evaluation epochs

    def work_dir(self, *parts: str) -> Path:
        path = Path(self.artifacts_dir).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @classmethod
    def from_env(cls, **overrides: Any) -> KernelContext:
        base = cls(
            data_root=os.environ.get("RTGRID_DATA"),
            artifacts_dir=os.environ.get("RTGRID_ARTIFACTS", "rtgrid_artifacts"),
        )
        for key, value in overrides.items():
            setattr(base, key, value)
        return base
