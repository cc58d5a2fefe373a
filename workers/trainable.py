"""The one Ray Tune entry point: a pack of specs in, one kernel run per spec, reports out.

A Tune trial carries a *pack* of specs (e.g. the seeds of one grid cell) so that a
14,400-spec grid costs a few hundred Tune trials, while every spec still gets its own
reports, status and retries. Every report names its spec; the driver's recorder turns
them into database rows. Nothing here touches the database.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workers import catalog
from workers.catalog import (
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
from workers.diagnostics import Diagnostics, KernelOverride, KillWorker, log_kernel_start, maybe_kill_worker, run_noop
from workers.errors import KernelInputError
from workers.io import save_atomically, sha256_file
from workers.metrics import (
    PUBLISHED_BASELINES,
    PUBLISHED_PAIRS,
    Baseline,
    binned_er,
    effective_robustness,
    fit_baseline,
    load_testbed_csv,
)
from workers.protocol import (
    Checkpoint,
    Epoch,
    Event,
    Failed,
    Final,
    PackItem,
    ProducedArtifact,
    ProtocolError,
    Retrying,
    Started,
    WorkerSettings,
    batch_payload,
    event_from_payload,
    events_of_report,
)
from workers.sources import resolve_source_path, verify_checksum

# What the orchestrator may use besides the trainable (it reaches workers through this module only).
__all__ = [
    # the catalog (names, method traits, the parameter schema): torch-free, like this module at import
    "KERNEL_VERSION", "METHODS", "PARAMS", "SCRATCH", "SOURCE_SCHEMES", "CatalogError", "MethodTraits",
    "Param", "catalog",
    # file identity
    "sha256_file",
    # the protocol: pack items, settings, events
    "Checkpoint", "Epoch", "Event", "Failed", "Final", "PackItem", "ProducedArtifact", "ProtocolError", "Retrying",
    "Started", "WorkerSettings", "batch_payload", "event_from_payload", "events_of_report",
    # test and benchmark hooks (never set in production)
    "Diagnostics", "KernelOverride", "KillWorker",
    # effective robustness (pure numpy) for driver-side fits and back-fills
    "PUBLISHED_BASELINES", "PUBLISHED_PAIRS", "Baseline", "binned_er", "effective_robustness", "fit_baseline",
    "load_testbed_csv",
    # running kernels
    "KernelContext", "KernelInputError", "PackRunner", "convert_trusted_checkpoint", "execute",
    "resume_checkpoint_path", "tune_entry",
    # `rtgrid plan`'s preflight on the driver: where datasets and published weights must lie
    "dataset_location", "resolve_source_path",
]

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]  # sends one Tune report (a plain dict)


def dataset_location(name: str, data_root: str | None) -> Path | None:
    """Where dataset `name` must lie for its loader (None: built in); workers.data imports torch, lazily here."""
    from workers.data.registry import expected_location

    return expected_location(name, data_root)


def kernel_for(spec: Mapping[str, Any], override: KernelOverride | None) -> Callable[..., dict[str, Any]]:
    if override == "noop":
        return run_noop
    if spec["kind"] == "source":
        from workers.kernels import run_source

        return run_source
    from workers.kernels import run_transfer

    return run_transfer


def execute(spec: dict[str, Any], ctx: KernelContext, report: Report, kernel_override: KernelOverride | None = None,
            source_checksum: str | None = None) -> dict[str, Any]:
    """Run one spec's kernel (resolving and checking its source first). Usable without Ray.

    `source_checksum` is the sha256 the driver recorded for a grid-trained source checkpoint; the
    file is checked against it (and against the spec's own checksum for file sources).
    """
    if spec["kind"] == "transfer" and kernel_override is None:
        path = resolve_source_path(spec["source"], ctx.data_root, ctx.source_path)
        if path is not None:
            verify_checksum(path, spec.get("source_checksum"))
            verify_checksum(path, source_checksum)
        ctx.source_path = path
    return kernel_for(spec, kernel_override)(spec, ctx, report)


def with_er(metrics: dict[str, Any], baseline: Baseline | None) -> dict[str, Any]:
    """Add effective robustness (and the stored baseline that produced it, er_baseline_id) when the
    spec's evaluation protocol has a baseline fit; else leave it empty."""
    test_acc, ood_acc = metrics.get("test_acc"), metrics.get("ood_acc")
    if baseline is None or test_acc is None or ood_acc is None:
        return metrics
    return {**metrics, "er": effective_robustness(test_acc, ood_acc, baseline), "er_baseline_id": baseline.id}


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
        state: dict[str, Any] = torch.load(path, weights_only=True)
        return state
    except Exception:  # noqa: BLE001 - a torn or unreadable file: start the spec afresh
        logger.warning("unreadable resume checkpoint %s: the spec starts afresh", path, exc_info=True)
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class PackRunner:
    """Runs the specs of one pack in order; `emit` sends a batch of events to the driver.

    A spec's failure is its own: a bad input fails it at once, any other exception retries it
    in-process from its last resume checkpoint. A lost worker (the process dies) is handled by
    the driver, which runs the pack's unfinished specs again in a later round.
    """

    def __init__(self, settings: WorkerSettings, emit: Emit) -> None:
        self.settings = settings
        self.diagnostics = settings.diagnostics or Diagnostics()
        self._emit = emit
        # Events of quick specs travel together: one Tune report per flush, not per event.
        self.flush_interval_s = settings.flush_interval_s
        self.buffer: list[dict[str, Any]] = []
        self.last_flush = float("-inf")  # the first event goes out at once
        self.node = _node_id()

    def emit(self, event: Event, *, now: bool = False) -> None:
        """Queue an event; send the queue if asked, or if the last send was flush_interval_s ago."""
        self.buffer.append(event.to_payload())
        if now or time.monotonic() - self.last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            events, self.buffer = self.buffer, []
            self._emit(batch_payload(events))
        self.last_flush = time.monotonic()

    def run(self, items: Sequence[PackItem]) -> None:
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

    def _run_spec(self, item: PackItem) -> None:
        spec_hash = item.spec_hash
        settings, diagnostics = self.settings, self.diagnostics
        artifacts = settings.artifacts_dir
        max_retries = settings.max_retries
        # Only long trials checkpoint: at an evaluation epoch once this much time has passed since
        # the last checkpoint (short trials simply run again after a crash).
        interval = settings.checkpoint_interval_s
        checkpoint = resume_checkpoint_path(artifacts, spec_hash)
        baseline = item.er_baseline
        for attempt in range(1, max_retries + 2):
            state = _load_resume_state(checkpoint)
            resume_epoch = int(state.get("epoch", 0)) if state else None
            if diagnostics.kernel_starts_log:
                log_kernel_start(diagnostics.kernel_starts_log, spec_hash, attempt, self.node)
            maybe_kill_worker(diagnostics.kill_worker, spec_hash)
            self.emit(Started(spec_hash, attempt, self.node, resume_epoch))
            if diagnostics.kernel_delay_s:
                time.sleep(diagnostics.kernel_delay_s)
            last_save = time.monotonic()

            def report(epoch: int, metrics: dict[str, float], _hash: str = spec_hash) -> None:
                self.emit(Epoch(_hash, int(epoch), with_er(metrics, baseline)))

            def save_state(kernel_state: dict[str, Any], _hash: str = spec_hash) -> None:
                nonlocal last_save
                if time.monotonic() - last_save < interval:
                    return
                last_save = time.monotonic()
                save_atomically(kernel_state, checkpoint)
                self.emit(Checkpoint(_hash, int(kernel_state.get("epoch", 0)), str(checkpoint)), now=True)
                maybe_kill_worker(diagnostics.kill_worker, _hash, int(kernel_state.get("epoch", 0)))

            ctx = KernelContext(
                data_root=settings.data_root,
                artifacts_dir=artifacts,
                device=settings.device,
                download=settings.download,
                source_path=item.source_path,
                resume_state=state,
                save_state=save_state,
                data_workers=settings.data_workers,
                decode_cache_mb=settings.decode_cache_mb,
            )
            started = time.time()
            try:
                result = execute(dict(item.spec), ctx, report, diagnostics.kernel_override, item.source_checksum)
            except KernelInputError as exc:  # bad input fails the same way every time: no retry
                self.emit(Failed(spec_hash, _one_line(exc)), now=True)
                return
            except Exception as exc:  # noqa: BLE001 - any kernel failure is recorded on its spec
                if attempt == max_retries + 1:
                    self.emit(Failed(spec_hash, _one_line(exc), traceback.format_exc(limit=3)), now=True)
                    return
                self.emit(Retrying(spec_hash, _one_line(exc)), now=True)
                continue
            self.emit(Final.of_kernel(spec_hash, time.time() - started, with_er(dict(result), baseline)))
            checkpoint.unlink(missing_ok=True)  # the result is recorded; the resume state is spent
            return


def tune_entry(config: dict[str, Any], packs: Mapping[str, Sequence[PackItem]], settings: WorkerSettings) -> None:
    """The Ray Tune function trainable: one pack of specs, reported event batch by batch. The packs
    and settings travel once through the object store; the config holds only the pack id."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, settings.threads))
    PackRunner(settings, tune.report).run(packs[config["pack_id"]])


# --- the driver's other doors into workers (the orchestrator imports nothing else here) ---


def convert_trusted_checkpoint(input_path: str, output_path: str) -> str:
    """One-time conversion of a trusted pickled checkpoint to a weights-only file; its sha256."""
    from workers.models import convert_trusted_checkpoint as convert

    return convert(input_path, output_path)
