"""The one Ray Tune entry point: a pack of specs in, one kernel run per spec, reports out.

A Tune trial carries a *pack* of specs (e.g. the seeds of one grid cell) so that a
14,400-spec grid costs a few hundred Tune trials, while every spec still gets its own
reports, status and retries. Every report names its spec; the driver's recorder turns
them into database rows. Nothing here touches the database.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.sources import resolve_source_path, verify_checksum

Emit = Callable[[dict[str, Any], str | None], None]

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
        from workers.adversarial import run_source

        return run_source
    from workers.transfer import run_transfer

    return run_transfer


def execute(spec: dict[str, Any], ctx: KernelContext, report: Report, kernel: str | None = None) -> dict[str, Any]:
    """Run one spec's kernel (resolving and checking its source first). Usable without Ray."""
    if spec["kind"] == "transfer" and kernel != NOOP_KERNEL:
        path = resolve_source_path(spec["source"], ctx.data_root, ctx.source_path)
        if path is not None:
            verify_checksum(path, spec.get("source_checksum"))
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

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray there is no node id
        return socket.gethostname()


def _log_kernel_start(artifacts_dir: str, spec_hash: str, attempt: int, node: str) -> None:
    """Append-only audit of every kernel start (what ran where, and how often)."""
    path = Path(artifacts_dir) / "kernel_starts.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{time.time():.3f}\t{spec_hash}\t{attempt}\t{node}\t{os.getpid()}\n")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class PackRunner:
    """Runs the specs of one pack in order; `emit` sends a report (and optional checkpoint dir)."""

    def __init__(self, settings: Mapping[str, Any], emit: Emit, restored: Mapping[str, Any] | None) -> None:
        self.settings = settings
        self._emit = emit
        # Events of quick specs travel together: one Tune report per flush, not per event.
        self.flush_interval_s = float(settings.get("flush_interval_s", 0.25))
        self.buffer: list[dict[str, Any]] = []
        self.last_flush = float("-inf")  # the first event goes out at once
        self.done: set[str] = set((restored or {}).get("done", []))
        self.resume_hash: str | None = (restored or {}).get("current")
        self.resume_state: dict[str, Any] | None = (restored or {}).get("state")
        self.node = _node_id()

    def emit(self, payload: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        """Queue an event; send the queue now unless the last send was under flush_interval_s ago."""
        self.buffer.append(payload)
        if checkpoint_dir is None and time.monotonic() - self.last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self, checkpoint_dir: str | None = None) -> None:
        if self.buffer or checkpoint_dir is not None:
            events, self.buffer = self.buffer, []
            self._emit({"event": "batch", "events": events}, checkpoint_dir)
        self.last_flush = time.monotonic()

    def _checkpoint(self, payload: dict[str, Any], state: dict[str, Any] | None, current: str | None) -> None:
        import torch

        directory = tempfile.mkdtemp(prefix="rtgrid-ckpt-")
        try:
            Path(directory, "progress.json").write_text(json.dumps({"done": sorted(self.done), "current": current}))
            if state is not None:
                torch.save(state, Path(directory, "state.pt"))
            self.emit(payload, directory)
            self.flush(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def run(self, items: list[Mapping[str, Any]]) -> None:
        try:
            self._run_all(items)
        finally:
            self.flush()

    def _run_all(self, items: list[Mapping[str, Any]]) -> None:
        for position, item in enumerate(items):
            spec_hash = item["spec_hash"]
            if spec_hash in self.done:
                continue
            started = time.monotonic()
            self._run_spec(item)
            self.done.add(spec_hash)
            elapsed = time.monotonic() - started
            if elapsed > self.flush_interval_s:
                # A slow spec: its end is news now, and so will be the next one's start.
                self.flush()
                self.last_flush = float("-inf")
            long_enough = elapsed > float(self.settings.get("checkpoint_after_s", 30.0))
            if long_enough and position + 1 < len(items):
                self._checkpoint({"event": "progress", "spec_hash": spec_hash}, None, None)

    def _run_spec(self, item: Mapping[str, Any]) -> None:
        spec_hash = item["spec_hash"]
        spec = item["spec"]
        max_retries = int(self.settings.get("max_retries", 1))
        # Only long trials checkpoint: at an evaluation epoch once this much time has passed since
        # the last checkpoint (short trials simply run again after a crash).
        interval = float(self.settings.get("checkpoint_interval_s", 300.0))
        last_checkpoint = [time.monotonic()]
        state = self.resume_state if self.resume_hash == spec_hash else None
        baseline = item.get("er_baseline")
        for attempt in range(1, max_retries + 2):
            _log_kernel_start(self.settings["artifacts_dir"], spec_hash, attempt, self.node)
            self.emit({"event": "started", "spec_hash": spec_hash, "attempt": attempt, "node": self.node}, None)

            def report(epoch: int, metrics: dict[str, float], _hash: str = spec_hash) -> None:
                metrics = with_er(metrics, baseline)
                self.emit({"event": "epoch", "spec_hash": _hash, "epoch": int(epoch), **metrics}, None)

            def save_state(kernel_state: dict[str, Any], _hash: str = spec_hash) -> None:
                if time.monotonic() - last_checkpoint[0] >= interval:
                    last_checkpoint[0] = time.monotonic()
                    epoch = int(kernel_state.get("epoch", 0))
                    self._checkpoint({"event": "checkpoint", "spec_hash": _hash, "epoch": epoch}, kernel_state, _hash)

            ctx = KernelContext(
                data_root=self.settings.get("data_root"),
                artifacts_dir=self.settings["artifacts_dir"],
                device=self.settings.get("device", "cpu"),
                download=bool(self.settings.get("download", False)),
                source_path=item.get("source_path"),
                resume_state=state,
                save_state=save_state,
            )
            started = time.time()
            try:
                final = execute(dict(spec), ctx, report, self.settings.get("kernel"))
            except KernelInputError as exc:  # bad input fails the same way every time: no retry
                self.emit({"event": "failed", "spec_hash": spec_hash, "error": _one_line(exc)}, None)
                return
            except Exception as exc:  # noqa: BLE001 - any kernel failure is recorded on its spec
                last = attempt == max_retries + 1
                detail = traceback.format_exc(limit=3) if last else ""
                event = "failed" if last else "retrying"
                self.emit({"event": event, "spec_hash": spec_hash, "error": _one_line(exc), "detail": detail}, None)
                state = None
                if last:
                    return
                continue
            final = with_er(dict(final), baseline)
            artifacts = final.pop("artifacts", [])
            self.emit(
                {"event": "final", "spec_hash": spec_hash, "duration_s": time.time() - started,
                 "artifacts_json": json.dumps(artifacts), **final},
                None,
            )
            return


def _restore() -> dict[str, Any] | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    import torch

    with checkpoint.as_directory() as directory:
        progress = json.loads(Path(directory, "progress.json").read_text())
        state_path = Path(directory, "state.pt")
        if state_path.exists():
            progress["state"] = torch.load(state_path, weights_only=True)
    return progress


def tune_entry(config: dict[str, Any], packs: Mapping[str, list[dict[str, Any]]]) -> None:
    """The Ray Tune function trainable."""
    import torch
    from ray import tune

    settings = config["settings"]
    torch.set_num_threads(max(1, int(settings.get("threads", 1))))

    def emit(payload: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(payload, checkpoint=checkpoint)

    PackRunner(settings, emit, _restore()).run(packs[config["pack_id"]])


# --- the driver's other doors into workers (the orchestrator imports nothing else here) ---


def convert_trusted_checkpoint(input_path: str, output_path: str) -> str:
    """One-time conversion of a trusted pickled checkpoint to a weights-only file; its sha256."""
    from workers.models import convert_trusted_checkpoint as convert

    return convert(input_path, output_path)


def er_math() -> Any:
    """The effective-robustness formulas (pure numpy) for driver-side fits and back-fills."""
    from workers import metrics

    return metrics
