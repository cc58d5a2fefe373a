"""The one Ray Tune entry point: a pack of specs in, one kernel run per spec, reports out.

A Tune trial carries a *pack* of specs (e.g. the seeds of one grid cell) so that a
14,400-spec grid costs a few hundred Tune trials, while every spec still gets its own
reports, status and retries. Every report names its spec; the driver's recorder turns
them into database rows. Nothing here touches the database.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from workers import catalog
from workers.catalog import (
    EVENT_KINDS,
    KERNEL_VERSION,
    METHODS,
    PARAMS,
    SCRATCH,
    SOURCE_SCHEMES,
    CatalogError,
    MethodTraits,
    Param,
)
from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.io import save_atomically, sha256_file
from workers.sources import resolve_source_path, verify_checksum

# What the orchestrator may use besides the trainable (it reaches workers through this module only).
# The catalog (names, method traits, the parameter schema) is torch-free, like this module at import.
__all__ = ["EVENT_KINDS", "KERNEL_VERSION", "METHODS", "PARAMS", "SCRATCH", "SOURCE_SCHEMES", "CatalogError",
           "KernelContext", "KernelInputError", "MethodTraits", "PackRunner", "Param", "catalog",
           "convert_trusted_checkpoint", "er_math", "execute", "resume_checkpoint_path", "sha256_file", "tune_entry"]

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]

# Kernels by spec kind; the "noop" override exists for scheduling benchmarks.
NOOP_KERNEL = "noop"


def run_noop(spec: dict[str, Any], ctx: KernelContext, report: Report) -> dict[str, Any]:
    """Does no work: reports one epoch. Measures the orchestration cost of a spec."""
    report(spec["epochs"], {"test_acc": 0.5, "train_loss": 1.0, "seconds": 0.0})
    return {"test_acc": 0.5}


def kernel_for(spec: Mapping[str, Any], override: str | None) -> Callable[..., dict[str, Any]]:
    if override == NOOP_KERNEL:
        return run_noop
    if spec["kind"] == "source":
        from workers.kernels import run_source

        return run_source
    from workers.kernels import run_transfer

    return run_transfer


def execute(spec: dict[str, Any], ctx: KernelContext, report: Report, kernel: str | None = None,
            source_checksum: str | None = None) -> dict[str, Any]:
    """Run one spec's kernel (resolving and checking its source first). Usable without Ray.

    `source_checksum` is the sha256 the driver recorded for a grid-trained source checkpoint; the
    file is checked against it (and against the spec's own checksum for file sources).
    """
    if spec["kind"] == "transfer" and kernel != NOOP_KERNEL:
        path = resolve_source_path(spec["source"], ctx.data_root, ctx.source_path)
        if path is not None:
            verify_checksum(path, spec.get("source_checksum"))
            verify_checksum(path, source_checksum)
        ctx.source_path = path
    return kernel_for(spec, kernel)(spec, ctx, report)


def with_er(metrics: dict[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add effective robustness when the (ID, OOD) pair has a baseline fit; else leave it empty."""
    test_acc, ood_acc = metrics.get("test_acc"), metrics.get("ood_acc")
    if baseline is None or test_acc is None or ood_acc is None:
        return metrics
    from workers.metrics import Baseline, effective_robustness

    fit = Baseline(slope=baseline["slope"], intercept=baseline["intercept"], transform=baseline["transform"],
                   n_points=int(baseline.get("n_points") or 0), r=baseline.get("r"))
    return {**metrics, "er": effective_robustness(test_acc, ood_acc, fit)}


def _node_id() -> str:
    try:
        import ray
    except ImportError:  # the kernels run without Ray too
        return socket.gethostname()
    # Asking a runtime context outside Ray would start a local Ray instance: ask only inside one.
    if ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def resume_checkpoint_path(artifacts_dir: str, spec_hash: str) -> Path:
    """Where a spec's resume state lives: keyed by spec_hash on the shared artifacts directory, so
    an in-process retry, a later round and a later driver all find the same file."""
    return Path(artifacts_dir) / "checkpoints" / f"{spec_hash}.pt"


def _load_resume_state(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a torn or unreadable file: start the spec afresh
        logger.warning("unreadable resume checkpoint %s: the spec starts afresh", path, exc_info=True)
        return None


def _log_kernel_start(artifacts_dir: str, spec_hash: str, attempt: int, node: str) -> None:
    """Append-only audit of every kernel start (what ran where, and how often)."""
    path = Path(artifacts_dir) / "kernel_starts.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{time.time():.3f}\t{spec_hash}\t{attempt}\t{node}\t{os.getpid()}\n")


def _maybe_kill_worker(fault: Mapping[str, Any] | None, spec_hash: str) -> None:
    """Fault injection for the lost-worker tests: the process dies as an OOM-killed worker does.

    settings["kill_worker"] = {"spec_hash": H, "marker_dir": D, "times": N} kills the worker the
    first N times spec H starts (one marker file per death, in a directory all nodes can see).
    """
    if not fault or fault.get("spec_hash") != spec_hash:
        return
    markers = Path(fault["marker_dir"])
    markers.mkdir(parents=True, exist_ok=True)
    if len(list(markers.iterdir())) < int(fault.get("times", 1)):
        (markers / f"death-{time.time_ns()}").touch()
        os._exit(70)  # no cleanup, no last report: a real crash


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class PackRunner:
    """Runs the specs of one pack in order; `emit` sends a batch of events to the driver.

    A spec's failure is its own: a bad input fails it at once, any other exception retries it
    in-process from its last resume checkpoint. A lost worker (the process dies) is handled by
    the driver, which runs the pack's unfinished specs again in a later round.
    """

    def __init__(self, settings: Mapping[str, Any], emit: Emit) -> None:
        self.settings = settings
        self._emit = emit
        # Events of quick specs travel together: one Tune report per flush, not per event.
        self.flush_interval_s = float(settings.get("flush_interval_s", 0.25))
        self.buffer: list[dict[str, Any]] = []
        self.last_flush = float("-inf")  # the first event goes out at once
        self.node = _node_id()

    def emit(self, payload: dict[str, Any], *, now: bool = False) -> None:
        """Queue an event; send the queue if asked, or if the last send was flush_interval_s ago."""
        self.buffer.append(payload)
        if now or time.monotonic() - self.last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            events, self.buffer = self.buffer, []
            self._emit({"event": "batch", "events": events})
        self.last_flush = time.monotonic()

    def run(self, items: list[Mapping[str, Any]]) -> None:
        try:
            for item in items:
                started = time.monotonic()
                self._run_spec(item)
                if time.monotonic() - started > self.flush_interval_s:
                    # A slow spec: its end is news now, and so will be the next one's start.
                    self.flush()
                    self.last_flush = float("-inf")
        finally:
            self.flush()

    def _run_spec(self, item: Mapping[str, Any]) -> None:
        spec_hash = item["spec_hash"]
        spec = item["spec"]
        artifacts = self.settings["artifacts_dir"]
        max_retries = int(self.settings.get("max_retries", 1))
        # Only long trials checkpoint: at an evaluation epoch once this much time has passed since
        # the last checkpoint (short trials simply run again after a crash).
        interval = float(self.settings.get("checkpoint_interval_s", 300.0))
        checkpoint = resume_checkpoint_path(artifacts, spec_hash)
        baseline = item.get("er_baseline")
        for attempt in range(1, max_retries + 2):
            state = _load_resume_state(checkpoint)
            resume_epoch = int(state.get("epoch", 0)) if state else None
            _log_kernel_start(artifacts, spec_hash, attempt, self.node)
            _maybe_kill_worker(self.settings.get("kill_worker"), spec_hash)
            self.emit({"event": "started", "spec_hash": spec_hash, "attempt": attempt, "node": self.node,
                       "resume_epoch": resume_epoch})
            last_save = time.monotonic()

            def report(epoch: int, metrics: dict[str, float], _hash: str = spec_hash) -> None:
                metrics = with_er(metrics, baseline)
                self.emit({"event": "epoch", "spec_hash": _hash, "epoch": int(epoch), **metrics})

            def save_state(kernel_state: dict[str, Any], _hash: str = spec_hash) -> None:
                nonlocal last_save
                if time.monotonic() - last_save < interval:
                    return
                last_save = time.monotonic()
                save_atomically(kernel_state, checkpoint)
                self.emit({"event": "checkpoint", "spec_hash": _hash, "epoch": int(kernel_state.get("epoch", 0)),
                           "uri": str(checkpoint)}, now=True)

            ctx = KernelContext(
                data_root=self.settings.get("data_root"),
                artifacts_dir=artifacts,
                device=self.settings.get("device", "cpu"),
                download=bool(self.settings.get("download", False)),
                source_path=item.get("source_path"),
                resume_state=state,
                save_state=save_state,
            )
            started = time.time()
            try:
                final = execute(dict(spec), ctx, report, self.settings.get("kernel"), item.get("source_checksum"))
            except KernelInputError as exc:  # bad input fails the same way every time: no retry
                self.emit({"event": "failed", "spec_hash": spec_hash, "error": _one_line(exc)}, now=True)
                return
            except Exception as exc:  # noqa: BLE001 - any kernel failure is recorded on its spec
                last = attempt == max_retries + 1
                detail = traceback.format_exc(limit=3) if last else ""
                event = "failed" if last else "retrying"
                self.emit({"event": event, "spec_hash": spec_hash, "error": _one_line(exc), "detail": detail},
                          now=True)
                if last:
                    return
                continue
            final = with_er(dict(final), baseline)
            artifacts_made = final.pop("artifacts", [])
            self.emit({"event": "final", "spec_hash": spec_hash, "duration_s": time.time() - started,
                       "artifacts_json": json.dumps(artifacts_made), **final})
            checkpoint.unlink(missing_ok=True)  # the result is recorded; the resume state is spent
            return


def tune_entry(config: dict[str, Any], packs: Mapping[str, list[dict[str, Any]]]) -> None:
    """The Ray Tune function trainable: one pack of specs, reported event batch by batch."""
    import torch
    from ray import tune

    settings = config["settings"]
    torch.set_num_threads(max(1, int(settings.get("threads", 1))))
    PackRunner(settings, tune.report).run(packs[config["pack_id"]])


# --- the driver's other doors into workers (the orchestrator imports nothing else here) ---


def convert_trusted_checkpoint(input_path: str, output_path: str) -> str:
    """One-time conversion of a trusted pickled checkpoint to a weights-only file; its sha256."""
    from workers.models import convert_trusted_checkpoint as convert

    return convert(input_path, output_path)


def er_math() -> Any:
    """The effective-robustness formulas (pure numpy) for driver-side fits and back-fills."""
    from workers import metrics

    return metrics
