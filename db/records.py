"""What the repository's reads return: frozen records, one per kind of row.

Field names are the column names (db.models), so a record is built from a row by name and a
column the record does not know fails loudly (TypeError) instead of being dropped.
Timestamps are timezone-aware UTC on both backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


@dataclass(frozen=True)
class ExperimentRecord:
    id: int
    name: str
    grid: str
    grid_json: str | None
    created_at: datetime
    notes: str | None


@dataclass(frozen=True)
class TrialRecord:
    """One `trials` row: the spec's identity, its lifecycle, its key fields and final metrics."""

    id: int
    spec_hash: str
    spec_json: str
    status: str
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    checkpoint_uri: str | None
    kind: str
    arch: str
    source: str | None
    dataset: str
    ood: str | None
    method: str
    blocks: int | None
    subset_size: int | None
    seed: int
    epochs: int
    test_acc: float | None
    ood_acc: float | None
    asr: float | None
    adv_acc: float | None
    clean_acc: float | None
    er: float | None
    er_baseline_id: int | None
    robust_acc: float | None
    duration_s: float | None
    worker: str | None
    claimed_by: str | None
    claim_host: str | None
    claim_pid: int | None
    claim_pid_start: int | None
    init: str


@dataclass(frozen=True)
class EpochRecord:
    """One `epoch_metrics` row with its trial's id, spec_hash, status and key columns."""

    trial_id: int
    spec_hash: str
    status: str
    kind: str
    arch: str
    source: str | None
    dataset: str
    ood: str | None
    method: str
    blocks: int | None
    subset_size: int | None
    seed: int
    epochs: int
    epoch: int
    train_loss: float | None
    train_acc: float | None
    test_acc: float | None
    ood_acc: float | None
    er: float | None
    lr: float | None
    seconds: float | None
    robust_acc: float | None
    recorded_at: datetime


@dataclass(frozen=True)
class ArtifactRecord:
    id: int
    key_hash: str
    kind: str
    uri: str
    created_at: datetime
    meta: Mapping[str, Any] = field(default_factory=dict)  # meta_json, parsed


@dataclass(frozen=True)
class BaselineRecord:
    """A stored effective-robustness fit: (ID, OOD, evaluation protocol, testbed)."""

    id: int
    id_dataset: str
    ood_dataset: str
    input_size: int | None
    protocol_json: str
    protocol_key: str
    transform: str
    slope: float
    intercept: float
    n_points: int
    r: float | None
    slope_ci_low: float | None
    slope_ci_high: float | None
    fitted_from: str
    testbed: str | None
    created_at: datetime


class EpochAccuracy(NamedTuple):
    trial_id: int
    epoch: int
    test_acc: float
    ood_acc: float


class TrialAccuracy(NamedTuple):
    trial_id: int
    test_acc: float
    ood_acc: float


class ErTarget(NamedTuple):
    """A trial whose ER a fit may fill: its spec (for the protocol), final and per-epoch accuracies."""

    trial_id: int
    spec_json: str
    test_acc: float | None  # final; None unless completed with both accuracies
    ood_acc: float | None
    epochs: tuple[EpochAccuracy, ...]


@dataclass(frozen=True)
class ClaimOwner:
    """The process that claims trials: a driver id, unique per run, and where that driver runs."""

    driver: str
    host: str
    pid: int
    pid_start: int | None  # the process's start time (clock ticks after boot); None = unknown


@dataclass(frozen=True)
class ClaimHolder:
    """Another driver holding some of the trials asked about: who, where, and its freshest heartbeat."""

    driver: str
    host: str | None
    pid: int | None
    pid_start: int | None
    trials: int
    last_heartbeat: datetime | None
