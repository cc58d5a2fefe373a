"""Build and run the Ray Tune Tuner for a planned grid: stages, packs, resources, retries."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.repository import Repository  # noqa: F401
from orchestrator.errors import UserError
from orchestrator.planner import Stage, pack
from orchestrator.recorder import ReportRecorder
from orchestrator.spec import TrialSpec

# Tune's own CSV/JSON/TensorBoard loggers are off: the database is the record.
TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_DISABLE_AUTO_INIT": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000000",
    "RAY_DEDUP_LOGS": "1",
}
MAX_PACK_SIZE = 64
# A local instance talks over loopback only. Ray rewrites "127.0.0.1" to the host's outward IP,
# but not another loopback address.
LOCAL_NODE_IP = "127.0.0.2"


@dataclass
class RunOptions:
    address: str | None = None  # None: a fresh local Ray instance
    data_root: str | None = None
    artifacts: str = "rtgrid_artifacts"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 1  # retries per spec, and per Tune trial for lost workers
    pack_size: int | None = None  # None: chosen from the grid size and the cluster
    download: bool = False
    quiet: bool = False
    kernel: str | None = None  # "noop" for scheduling benchmarks
    checkpoint_interval_s: float = 300.0  # long trials checkpoint at eval epochs this often
    stale_after_s: float = 120.0  # the recorder heartbeats running specs every 30 s
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    runnable: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


def _start_ray(options: RunOptions) -> None:
    import ray

    os.environ.update(TUNE_ENV)
    if ray.is_initialized():
        return

    runtime_env = {"env_vars": {**TUNE_ENV, **{k: v for k, v in os.environ.items() if k.startswith("RTGRID_")}}}
    try:
        if options.address:
            ray.init(address=options.address, runtime_env=runtime_env, log_to_driver=not options.quiet,
                     logging_level="ERROR")
        else:
            ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, log_to_driver=not options.quiet,
                     logging_level="ERROR", num_cpus=os.cpu_count(), _node_ip_address=LOCAL_NODE_IP)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or "a local Ray instance"
        raise UserError(f"cannot connect to Ray at {where}: {str(exc).splitlines()[0]}") from None


def cluster_slots(options: RunOptions) -> int:
    import ray

    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) / max(options.cpus_per_trial, 1e-9)
    if options.gpus_per_trial > 0:
        slots = min(slots, resources.get("GPU", 0) / options.gpus_per_trial)
    return max(1, int(slots))


def choose_pack_size(n_specs: int, slots: int, requested: int | None) -> int:
    """Enough packs to keep every slot busy ~4 times over; never more than MAX_PACK_SIZE specs."""
    if requested:
        return max(1, requested)
    return max(1, min(MAX_PACK_SIZE, math.ceil(n_specs / (4 * slots))))


def _pack_items(specs: Sequence[TrialSpec], source_paths: Mapping[str, str], baselines: Mapping[tuple, Any]
                ) -> list[dict[str, Any]]:
    items = []
    for spec in specs:
        item: dict[str, Any] = {"spec_hash": spec.spec_hash, "spec": spec.to_dict()}
        if spec.source and spec.source.startswith("spec:"):
            item["source_path"] = source_paths.get(spec.source.removeprefix("spec:"))
        baseline = baselines.get((spec.dataset, spec.ood))
        if baseline is not None:
            item["er_baseline"] = baseline
        items.append(item)
    return items


def run_stage(repo: Repository, stage: Stage, experiment: str, options: RunOptions,
              source_paths: Mapping[str, str], baselines: Mapping[tuple, Any],
              progress: Callable[[str, str], None] | None) -> ReportRecorder:
    from ray import tune

    from orchestrator.tune_hooks import CancelStopper, RecorderCallback
    from workers.trainable import tune_entry

    slots = cluster_slots(options)
    if options.max_concurrent:
        slots = min(slots, options.max_concurrent)
    size = choose_pack_size(len(stage.specs), slots, options.pack_size)
    packs = pack(stage.specs, size)
    pack_ids = {f"p{i:05d}": [s.spec_hash for s in members] for i, members in enumerate(packs)}
    artifacts = str(Path(options.artifacts).resolve())
    settings = {
        "data_root": options.data_root,
        "artifacts_dir": artifacts,
        "download": options.download,
        "threads": max(1, int(options.cpus_per_trial)),
        "device": "cuda" if options.gpus_per_trial > 0 else "cpu",
        "max_retries": options.max_failures,
        "checkpoint_interval_s": options.checkpoint_interval_s,
        "kernel": options.kernel,
        **options.extra,
    }
    # Pack contents travel once through the object store (with_parameters); a trial's config holds
    # only its pack id, because Tune copies and flattens the config into every single report.
    contents = {pid: _pack_items(members, source_paths, baselines)
                for pid, members in zip(pack_ids, packs, strict=True)}
    recorder = ReportRecorder(repo, progress=progress)
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(2, slots))
    resources = {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}
    stopper = CancelStopper(repo, [s.spec_hash for s in stage.specs])
    callback = RecorderCallback(recorder, pack_ids)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_entry, packs=contents), resources),
        param_space={"pack_id": tune.grid_search(list(pack_ids)), "settings": settings},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True,
                                    trial_dirname_creator=lambda trial: trial.trial_id,
                                    trial_name_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name=f"{experiment}-{stage.name}-{uuid.uuid4().hex[:8]}",
            storage_path=str(Path(artifacts, "ray_results")),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            stop=stopper,
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    finally:
        stopper.release()
        callback.release()
    return recorder
