"""The one timing loop of bench/: warm-up, device synchronisation, images per second; and the device's name."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step: Callable[[], object], images_per_step: int, steps: int, device: torch.device,
                      warmup: int = 3) -> float:
    """Throughput of `step` (which processes images_per_step images) over `steps` timed calls after
    `warmup` untimed ones (allocator, cuDNN autotuning, lazy init)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return images_per_step * steps / (time.perf_counter() - started)


def timed_seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of `run`, the device's queue drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def best_of(rounds: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Each key's best value over `rounds` calls of `measure` (all its measurements interleaved per round,
    so a slow spell of a shared machine hits every side alike, and the best round is the least disturbed)."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for key, value in measure().items():
            best[key] = max(best.get(key, value), value)
    return best


def use_threads(device: torch.device, threads: int) -> None:
    """CPU runs use `threads` torch threads (1: as a CPU trial with --cpus-per-trial 1 runs)."""
    if device.type == "cpu":
        torch.set_num_threads(threads)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"
