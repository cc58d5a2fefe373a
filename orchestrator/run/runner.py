"""Run a stage of specs as Ray Tune trials: packs, resources, and per-spec retries in rounds.

Tune never restarts a pack. When a pack's worker dies, the database says which of its specs
finished; the first unfinished one (specs run in pack order) is the one that was running and
takes a strike, and the rest go into the next round untouched. A spec with more strikes than
`max_failures` fails with the worker's error. Specs that were struck run alone afterwards, so
one bad spec cannot take its pack-mates down with it again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from db.models import FINISHED
from db.records import BaselineRecord
from db.repository import Repository
from orchestrator.errors import UserError, one_line
from orchestrator.plan.planner import Stage, pack
from orchestrator.plan.spec import TrialSpec
from orchestrator.results.er import key_of, protocol_of
from orchestrator.run.patience import patiently
from orchestrator.run.secrets import PASSWORD_ENV, remove_secret, without_password, write_secret
from workers.trainable import Baseline, Diagnostics, PackItem, WorkerSettings

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
# Test hook for a driver started as a subprocess (`python -m cli submit …`): Diagnostics as JSON.
# Nothing in production sets it; RunOptions.diagnostics, when given, wins.
DIAGNOSTICS_ENV = "RTGRID_DIAGNOSTICS"

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    address: str | None = None  # None: a fresh local Ray instance
    data_root: str | None = None
    artifacts: str = "rtgrid_artifacts"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 1  # retries per spec: after an exception, and after a lost worker
    pack_size: int | None = None  # None: chosen from the grid size and the cluster
    download: bool = False
    quiet: bool = False
    worker_logs: bool = False  # forward workers' stdout/stderr to this console (always in Ray's log files)
    checkpoint_interval_s: float = 300.0  # long trials checkpoint at eval epochs this often
    flush_interval_s: float = 0.25  # a worker sends the events of quick specs together, this often
    stale_after_s: float = 120.0  # a claim or running trial without a heartbeat this long is abandoned
    diagnostics: Diagnostics | None = None  # tests and benchmarks only (no-op kernel, fault injection)
    data_workers: int | None = None  # loader workers decoding photo sets per trial; None: the device's default
    decode_cache_mb: float | None = None  # each loader worker's decoded-image cache; None: the device's default

    def __post_init__(self) -> None:
        """Refuse values that would hang or misbehave (negative, NaN, infinite) before anything runs."""
        for name, option, low, strict, meaning in _LIMITS:
            value = getattr(self, name)
            if value is None:
                continue
            number = float(value)
            if not math.isfinite(number) or number < low or (strict and number == low):
                bound = f"> {low:g}" if strict else f">= {low:g}"
                raise UserError(f"{option} {value}: give a finite number {bound} ({meaning})")


# RunOptions field, its CLI option, the bound, whether the bound itself is refused, what it means.
_LIMITS: tuple[tuple[str, str, float, bool, str], ...] = (
    ("cpus_per_trial", "--cpus-per-trial", 0.0, True, "CPUs each trial reserves"),
    ("gpus_per_trial", "--gpus-per-trial", 0.0, False, "GPUs each trial reserves; 0 = CPU only"),
    ("max_concurrent", "--max-concurrent", 1.0, False, "trials running at once"),
    ("max_failures", "--max-failures", 0.0, False, "retries per spec"),
    ("pack_size", "--pack-size", 1.0, False, "specs per Tune trial"),
    ("data_workers", "--data-workers", 0.0, False, "loader workers per trial"),
    ("decode_cache_mb", "--decode-cache-mb", 0.0, False, "MiB of decoded images per loader worker"),
    ("stale_after_s", "--stale-after", 0.0, False,
     "seconds without a heartbeat before another driver's claim counts as abandoned; 0 = at once"),
    ("checkpoint_interval_s", "checkpoint_interval_s", 0.0, False, "seconds between resume checkpoints"),
    ("flush_interval_s", "flush_interval_s", 0.0, False, "seconds between a worker's reports"),
)
RAY_CONNECT_TIMEOUT_S = 5.0  # a cluster that does not accept a TCP connection in this long is not there
RAY_CLIENT_PORT = 10001  # Ray Client's default port (ray://HOST without a port)


@dataclass
class RunSummary:
    runnable: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    claimed_elsewhere: int = 0  # runnable specs another driver holds and had not finished at the end
    held_elsewhere: str = ""  # who holds them, and when (or how) they can be taken over
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageInputs:
    """What the workers need besides the specs, resolved on the driver from the database."""

    source_paths: Mapping[str, str] = field(default_factory=dict)  # source spec_hash -> checkpoint
    source_checksums: Mapping[str, str] = field(default_factory=dict)  # source spec_hash -> sha256
    # (dataset, ood, protocol key) -> the latest ER fit of that evaluation protocol
    baselines: Mapping[tuple[str, str, str], BaselineRecord] = field(default_factory=dict)
    source_files: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (file source, sha256) -> path


# A busy head can fail to start the per-client server a `ray://` connection needs (its start-up
# races the head's other work); the next connection usually gets one. Anything else fails at once.
# Both the proxier's own message and its crash while watching the new server start (psutil on a process
# that already exec'd or exited) arrive as an "Initialization failure from server".
CLIENT_SERVER_START_FAILED = ("Starting Ray client server failed", "Initialization failure from server")
CLIENT_CONNECT_ATTEMPTS = 3


def is_client_address(address: str | None) -> bool:
    return bool(address) and str(address).startswith("ray://")


def check_artifacts_location(artifacts: str) -> str:
    """The artifacts directory as an absolute path; URIs are refused with what to do instead."""
    if "://" in artifacts:
        raise UserError(f"--artifacts {artifacts!r} is a URI: give a directory every node can read "
                        "(mount the bucket, e.g. with s3fs or gcsfuse, or use an NFS/EFS volume)")
    return str(Path(artifacts).resolve())


def check_reachable(address: str | None) -> None:
    """A HOST:PORT or ray://HOST[:PORT] address must accept a TCP connection within seconds: Ray
    itself retries an address that is not there for minutes, silently."""
    if not address or address == "auto":
        return
    client = is_client_address(address)
    where = address.removeprefix("ray://").rstrip("/")
    host, _, port_text = where.rpartition(":") if ":" in where else (where, "", "")
    if not port_text and client:
        port_text = str(RAY_CLIENT_PORT)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"--address {address!r} is not HOST:PORT, ray://HOST[:PORT] or auto "
                        "(e.g. --address 10.0.0.5:6379, or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port_text)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        what = ("Ray Client server (ray start --head --ray-client-server-port" if client
                else "Ray head (ray start --head --port")
        raise UserError(f"cannot reach Ray at {address}: {reason}; start the {what} {port_text}) or fix "
                        "--address (without --address rtgrid starts a local Ray instance)") from None


def check_resources(options: RunOptions) -> None:
    """A trial must fit on the cluster, or Tune would wait for it forever without a word."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]  # Ray is unannotated
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if options.gpus_per_trial > gpus:
        raise UserError(f"--gpus-per-trial {options.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs: "
                        "use --gpus-per-trial 0 to train on CPUs, or --address a cluster with GPUs")
    if options.cpus_per_trial > cpus:
        raise UserError(f"--cpus-per-trial {options.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs: "
                        f"use --cpus-per-trial {max(1, int(cpus))} or less, or --address a bigger cluster")


def start_ray(options: RunOptions) -> None:
    """Start a local Ray instance or connect to options.address (once per process)."""
    import ray

    os.environ.update(TUNE_ENV)
    if ray.is_initialized():
        return
    check_reachable(options.address)

    # Settings for the workers, never credentials: the database stays with the driver.
    forwarded = {k: v for k, v in os.environ.items()
                 if k.startswith("RTGRID_") and k not in ("RTGRID_DB", PASSWORD_ENV)}
    runtime_env = {"env_vars": {**TUNE_ENV, **forwarded}}
    logger.info("connecting to Ray at %s", options.address or "a new local instance")
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            if options.address:
                ray.init(address=options.address, runtime_env=runtime_env, log_to_driver=options.worker_logs,
                         logging_level=logging.ERROR)
            else:
                ray.init(address="local", include_dashboard=False, runtime_env=runtime_env,
                         log_to_driver=options.worker_logs, logging_level=logging.ERROR,
                         num_cpus=os.cpu_count(), _node_ip_address=LOCAL_NODE_IP)
            return
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = options.address or "a local Ray instance"
            # Ray's messages span lines ("Initialization failure from server:\n<the reason>"): keep them all.
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:600]
            if attempt == CLIENT_CONNECT_ATTEMPTS or not any(m in reason for m in CLIENT_SERVER_START_FAILED):
                raise UserError(f"cannot connect to Ray at {where}: {reason}") from None
            delay = 5.0 * attempt
            logger.warning("Ray at %s could not start this client's server (attempt %d of %d); retrying in %.0f s",
                           where, attempt, CLIENT_CONNECT_ATTEMPTS, delay)
            ray.shutdown()
            time.sleep(delay)


def cluster_slots(options: RunOptions) -> int:
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]  # Ray is unannotated
    slots = resources.get("CPU", 1) / max(options.cpus_per_trial, 1e-9)
    if options.gpus_per_trial > 0:
        slots = min(slots, resources.get("GPU", 0) / options.gpus_per_trial)
    return max(1, int(slots))


def choose_pack_size(n_specs: int, slots: int, requested: int | None) -> int:
    """Enough packs to keep every slot busy ~4 times over; never more than MAX_PACK_SIZE specs."""
    if requested:
        return max(1, requested)
    return max(1, min(MAX_PACK_SIZE, math.ceil(n_specs / (4 * slots))))


def _baseline(record: BaselineRecord | None) -> Baseline | None:
    if record is None:
        return None
    return Baseline(slope=record.slope, intercept=record.intercept, transform=record.transform,
                    n_points=record.n_points, r=record.r, slope_ci_low=record.slope_ci_low,
                    slope_ci_high=record.slope_ci_high, id=record.id)


def pack_items(specs: Sequence[TrialSpec], inputs: StageInputs) -> list[PackItem]:
    items = []
    for spec in specs:
        source_path = source_checksum = None
        source_hash = spec.source_hash()
        if source_hash is not None:
            source_path = inputs.source_paths.get(source_hash)
            source_checksum = inputs.source_checksums.get(source_hash)
        elif spec.source_ref is not None and spec.source_ref.scheme == "file":
            source_path = inputs.source_files.get((str(spec.source), spec.source_checksum or ""))
        baseline = (inputs.baselines.get((spec.dataset, spec.ood, key_of(protocol_of(spec.params))))
                    if spec.ood else None)
        items.append(PackItem(spec_hash=spec.spec_hash, spec=spec.to_dict(), source_path=source_path,
                              source_checksum=source_checksum, er_baseline=_baseline(baseline)))
    return items


def diagnostics_of(options: RunOptions) -> Diagnostics | None:
    """The options' diagnostics, else those of RTGRID_DIAGNOSTICS (tests), else None (production)."""
    if options.diagnostics is not None:
        return options.diagnostics
    text = os.environ.get(DIAGNOSTICS_ENV)
    return Diagnostics.from_json(text) if text else None


def worker_settings(options: RunOptions, artifacts: str) -> WorkerSettings:
    return WorkerSettings(
        artifacts_dir=artifacts,
        data_root=options.data_root,
        device="cuda" if options.gpus_per_trial > 0 else "cpu",
        download=options.download,
        threads=max(1, int(options.cpus_per_trial)),
        max_retries=options.max_failures,
        checkpoint_interval_s=options.checkpoint_interval_s,
        flush_interval_s=options.flush_interval_s,
        diagnostics=diagnostics_of(options),
        data_workers=options.data_workers,
        decode_cache_mb=options.decode_cache_mb,
    )


def run_round(repo: Repository, packs: list[list[TrialSpec]], name: str, options: RunOptions,
              inputs: StageInputs, driver: str | None = None) -> dict[int, str]:
    """One Tuner.fit over `packs`; returns {pack index: error} for the packs whose trial errored.
    With `driver`, only the trials it still holds are recorded (fenced claims)."""
    from ray import tune

    from orchestrator.run.tune_hooks import CancelStopper, RecorderCallback, register, release
    from workers.trainable import tune_entry

    artifacts = check_artifacts_location(options.artifacts)
    slots = cluster_slots(options)
    if options.max_concurrent:
        slots = min(slots, options.max_concurrent)
    pack_ids = [f"p{i:05d}" for i in range(len(packs))]
    # Pack contents travel once through the object store (with_parameters); a trial's config holds
    # only its pack id, because Tune copies and flattens the config into every single report.
    contents = {pid: pack_items(members, inputs) for pid, members in zip(pack_ids, packs, strict=True)}
    # Under Ray Client the hooks run on the head and must open the database themselves; otherwise
    # they find this process's repository and no URL is pickled into Tune's state. The password is
    # never pickled: the head reads it from its environment or a 0600 secret file (secrets.py).
    url, secret = "", None
    if is_client_address(options.address):
        url, password = without_password(repo.engine.url)
        secret = write_secret(artifacts, password) if password else None
    token = register(repo)
    saved_pending = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(2, slots))
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(tune_entry, packs=contents,
                                                     settings=worker_settings(options, artifacts)),
                                {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}),
            param_space={"pack_id": tune.grid_search(pack_ids)},
            tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: trial.trial_id,
                                        trial_name_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(
                name=f"{name}-{uuid.uuid4().hex[:8]}",
                storage_path=str(Path(artifacts, "ray_results")),
                callbacks=[RecorderCallback(token, url, driver, secret)],
                failure_config=tune.FailureConfig(max_failures=0),  # the driver retries per spec
                stop=CancelStopper(token, url, [s.spec_hash for members in packs for s in members],
                                   secret_file=secret),
                verbose=0,
            ),
        )
        results = tuner.fit()
    finally:
        release(token)
        remove_secret(secret)
        if saved_pending is None:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
        else:
            os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = saved_pending
    position = {pid: index for index, pid in enumerate(pack_ids)}
    # Ray's message ends with the worker's original error: keep that line
    errors = {position[result.config["pack_id"]]: one_line(result.error, last=True, typed=True)[:500]
              for result in (results[i] for i in range(len(results)))  # ResultGrid indexes, does not iterate
              if result.error is not None and result.config}
    for index, error in errors.items():
        logger.warning("pack %s of %s ended with an error: %s", pack_ids[index], name, error)
    return errors


def _still_mine(repo: Repository, driver: str | None, todo: list[TrialSpec]) -> list[TrialSpec]:
    """The specs this driver still holds; those another driver took over are dropped, said once."""
    if driver is None:
        return todo
    held = patiently(partial(repo.held_by, driver, [spec.spec_hash for spec in todo]), "checking claims")
    lost = [spec.spec_hash[:12] for spec in todo if spec.spec_hash not in held]
    if lost:
        logger.warning("%d trials were taken over by another driver (this driver's claim had expired "
                       "under that driver's --stale-after); not running them here: %s", len(lost), ", ".join(lost[:5]))
    return [spec for spec in todo if spec.spec_hash in held]


def run_stage(repo: Repository, stage: Stage, experiment: str, options: RunOptions, inputs: StageInputs,
              driver: str | None = None) -> None:
    """Run the stage's specs in rounds until every one is completed, failed or cancelled (or, with
    `driver`, taken over by another driver)."""
    order = {spec.spec_hash: position for position, spec in enumerate(stage.specs)}
    todo = list(stage.specs)
    strikes: Counter[str] = Counter()
    while True:
        # Specs finished meanwhile (`rtgrid cancel`, or a driver elsewhere) are not dispatched.
        statuses = patiently(partial(repo.statuses_of, [spec.spec_hash for spec in todo]), "reading statuses")
        todo = _still_mine(repo, driver, [spec for spec in todo if statuses.get(spec.spec_hash) not in FINISHED])
        if not todo:
            return
        slots = cluster_slots(options)
        size = choose_pack_size(len(todo), min(slots, options.max_concurrent or slots), options.pack_size)
        packs = pack(todo, size, alone=set(strikes))
        logger.info("stage %s: %d specs in %d packs on %d slots", stage.name, len(todo), len(packs), slots)
        errors = run_round(repo, packs, f"{experiment}-{stage.name}", options, inputs, driver)
        hashes = [spec.spec_hash for spec in todo]
        statuses = patiently(partial(repo.statuses_of, hashes), "reading statuses")
        held = set(hashes) if driver is None else patiently(partial(repo.held_by, driver, hashes), "checking claims")
        left: list[TrialSpec] = []
        for index, members in enumerate(packs):
            # Another driver's trials (taken over meanwhile) are neither struck nor run again here.
            unfinished = [s for s in members if statuses.get(s.spec_hash) not in FINISHED and s.spec_hash in held]
            if not unfinished:
                continue
            culprit = unfinished[0].spec_hash  # specs run in pack order: this one was running
            strikes[culprit] += 1
            logger.info("spec %s was running when its worker was lost (strike %d)", culprit[:12], strikes[culprit])
            if strikes[culprit] > options.max_failures:
                reason = errors.get(index) or "its Tune trial ended before the spec finished"
                error = f"worker lost {strikes[culprit]} times; last: {reason}"
                patiently(partial(repo.fail, culprit, error, driver), "recording a lost worker")
                unfinished = unfinished[1:]
            left += unfinished
        todo = sorted(left, key=lambda spec: order[spec.spec_hash])
