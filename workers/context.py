"""What a kernel needs from its surroundings, as plain values (no Ray, no database)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The callable every kernel reports through: report(epoch (1-based), metrics).
Report = Callable[[int, dict[str, float]], None]

# Data-path defaults on a CUDA device (CPU: 0 and 0, today's behaviour): DataLoader workers that decode
# photo datasets, and each worker's decoded-image cache. Runtime settings, never spec params: they do
# not change results (tests/test_device_path.py).
GPU_DATA_WORKERS = 4
GPU_DECODE_CACHE_MB = 512


@dataclass
class KernelContext:
    data_root: str | None = None  # torchvision-layout data root; embedded datasets ignore it
    artifacts_dir: str = "rtgrid_artifacts"  # shared by all workers: checkpoints, adversarial sets
    device: str = "cpu"
    download: bool = False
    source_path: str | None = None  # resolved source checkpoint of a transfer spec
    resume_state: dict[str, Any] | None = None  # saved by an earlier attempt of this trial
    save_state: Callable[[dict[str, Any]], None] | None = None  # called at evaluation epochs
    data_workers: int | None = None  # loader workers for decoded (photo) sets; None: the device's default
    decode_cache_mb: float | None = None  # each loader worker's decoded-image cache; None: the device's default

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def loader_workers(self) -> int:
        """DataLoader workers for batches made on the CPU (decoded photo sets)."""
        return self.data_workers if self.data_workers is not None else (GPU_DATA_WORKERS if self.on_gpu else 0)

    def loader_cache_mb(self) -> float:
        """MiB of decoded images each loader worker keeps."""
        if self.decode_cache_mb is not None:
            return self.decode_cache_mb
        return GPU_DECODE_CACHE_MB if self.on_gpu else 0

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
