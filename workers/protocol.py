"""What travels between the driver and a worker: pack items, worker settings, and events.

The driver builds `PackItem`s and one `WorkerSettings` per round; a worker's `PackRunner`
sends one event per thing that happened to a spec. Tune reports must be plain dicts, so an event
crosses the Tune boundary as `to_payload()` and is rebuilt with `event_from_payload()`; several
events travel in one report as a batch (`batch_payload`, `events_of_report`). An unknown event
kind is a `ProtocolError`, never skipped. Which metric names are allowed is the schema's business
(db.models): the recorder checks them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from workers.diagnostics import Diagnostics

if TYPE_CHECKING:
    from workers.metrics import Baseline

Metrics = Mapping[str, "float | None"]


class ProtocolError(ValueError):
    """A report the driver cannot read: unknown event kind, missing field, unknown metric."""


@dataclass(frozen=True)
class PackItem:
    """One spec of a pack, with what the driver resolved for it from the database."""

    spec_hash: str
    spec: Mapping[str, Any]  # TrialSpec.to_dict()
    source_path: str | None = None  # checkpoint of the spec's source (grid-trained or file source)
    source_checksum: str | None = None  # sha256 recorded for a grid-trained source checkpoint
    er_baseline: Baseline | None = None  # the (ID, OOD) fit, when the pair has one


@dataclass(frozen=True)
class WorkerSettings:
    """Settings of every spec of a round (one per Tuner.fit)."""

    artifacts_dir: str = "rtgrid_artifacts"
    data_root: str | None = None
    device: str = "cpu"
    download: bool = False
    threads: int = 1
    max_retries: int = 1  # in-process retries after an exception
    checkpoint_interval_s: float = 300.0  # long trials checkpoint at eval epochs this often
    flush_interval_s: float = 0.25  # events of quick specs travel together, one report per interval
    diagnostics: Diagnostics | None = None  # tests and benchmarks only; None in production
    data_workers: int | None = None  # KernelContext.data_workers (None: the device's default)
    decode_cache_mb: float | None = None  # KernelContext.decode_cache_mb (None: the device's default)


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    kind: ClassVar[str] = "started"
    spec_hash: str
    attempt: int
    node: str = ""
    resume_epoch: int | None = None

    def to_payload(self) -> dict[str, Any]:
        return {"event": self.kind, "spec_hash": self.spec_hash, "attempt": self.attempt, "node": self.node,
                "resume_epoch": self.resume_epoch}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Started:
        resume = payload.get("resume_epoch")
        return cls(str(payload["spec_hash"]), int(payload["attempt"]), str(payload.get("node") or ""),
                   None if resume is None else int(resume))


@dataclass(frozen=True)
class Epoch:
    kind: ClassVar[str] = "epoch"
    spec_hash: str
    epoch: int
    metrics: Metrics = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"event": self.kind, "spec_hash": self.spec_hash, "epoch": self.epoch, **self.metrics}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Epoch:
        metrics = {k: v for k, v in payload.items() if k not in ("event", "spec_hash", "epoch")}
        return cls(str(payload["spec_hash"]), int(payload["epoch"]), metrics)


@dataclass(frozen=True)
class Checkpoint:
    kind: ClassVar[str] = "checkpoint"
    spec_hash: str
    epoch: int
    uri: str

    def to_payload(self) -> dict[str, Any]:
        return {"event": self.kind, "spec_hash": self.spec_hash, "epoch": self.epoch, "uri": self.uri}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Checkpoint:
        return cls(str(payload["spec_hash"]), int(payload["epoch"]), str(payload["uri"]))


@dataclass(frozen=True)
class _SpecError:
    """What Retrying and Failed share: the spec, its one-line error and a short traceback."""

    kind: ClassVar[str]
    default_error: ClassVar[str] = ""
    spec_hash: str
    error: str
    detail: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {"event": self.kind, "spec_hash": self.spec_hash, "error": self.error, "detail": self.detail}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        return cls(str(payload["spec_hash"]), str(payload.get("error") or cls.default_error),
                   str(payload.get("detail") or ""))


@dataclass(frozen=True)
class Retrying(_SpecError):
    """The kernel raised; the spec runs again in-process (from its last resume checkpoint)."""

    kind: ClassVar[str] = "retrying"


@dataclass(frozen=True)
class Failed(_SpecError):
    """The spec failed for good (bad input, or its last retry raised)."""

    kind: ClassVar[str] = "failed"
    default_error: ClassVar[str] = "failed"


@dataclass(frozen=True)
class ProducedArtifact:
    """A shared file a kernel made (e.g. a source checkpoint), recorded in `artifacts`."""

    key_hash: str
    kind: str
    uri: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Final:
    kind: ClassVar[str] = "final"
    spec_hash: str
    duration_s: float
    metrics: Metrics = field(default_factory=dict)
    artifacts: tuple[ProducedArtifact, ...] = ()
    checkpoint_path: str | None = None  # a source keeps its model file; a transfer keeps none
    checkpoint_sha256: str | None = None

    # Payload keys that are not metrics.
    FIELDS: ClassVar[tuple[str, ...]] = ("event", "spec_hash", "duration_s", "artifacts_json", "checkpoint_path",
                                         "checkpoint_sha256")

    @classmethod
    def of_kernel(cls, spec_hash: str, duration_s: float, result: Mapping[str, Any]) -> Final:
        """From a kernel's return value: its metrics, plus `artifacts` and a source's checkpoint."""
        values = dict(result)
        artifacts = tuple(ProducedArtifact(a["key_hash"], a["kind"], a["uri"], a.get("meta") or {})
                          for a in values.pop("artifacts", None) or [])
        path, sha256 = values.pop("checkpoint_path", None), values.pop("checkpoint_sha256", None)
        return cls(spec_hash, duration_s, values, artifacts, path, sha256)

    def to_payload(self) -> dict[str, Any]:
        artifacts = [{"key_hash": a.key_hash, "kind": a.kind, "uri": a.uri, "meta": dict(a.meta)}
                     for a in self.artifacts]
        return {"event": self.kind, "spec_hash": self.spec_hash, "duration_s": self.duration_s,
                "artifacts_json": json.dumps(artifacts), "checkpoint_path": self.checkpoint_path,
                "checkpoint_sha256": self.checkpoint_sha256, **self.metrics}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Final:
        artifacts = tuple(ProducedArtifact(a["key_hash"], a["kind"], a["uri"], a.get("meta") or {})
                          for a in json.loads(payload.get("artifacts_json") or "[]"))
        metrics = {k: v for k, v in payload.items() if k not in cls.FIELDS}
        return cls(str(payload["spec_hash"]), float(payload["duration_s"]), metrics, artifacts,
                   payload.get("checkpoint_path") or None, payload.get("checkpoint_sha256") or None)


Event = Started | Epoch | Checkpoint | Retrying | Failed | Final
EVENT_TYPES: dict[str, type[Event]] = {t.kind: t for t in (Started, Epoch, Checkpoint, Retrying, Failed, Final)}
BATCH = "batch"


def event_from_payload(payload: Mapping[str, Any]) -> Event:
    kind = payload.get("event")
    event_type = EVENT_TYPES.get(str(kind))
    if event_type is None:
        raise ProtocolError(f"unknown event kind {kind!r} (known: {', '.join(EVENT_TYPES)})")
    try:
        return event_type.from_payload(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {kind} event: {type(exc).__name__}: {exc}") from None


def batch_payload(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One Tune report carrying several event payloads, in order."""
    return {"event": BATCH, "events": list(events)}


def events_of_report(report: Mapping[str, Any]) -> list[Event]:
    """The events of one Tune report (always a batch: Tune adds its own keys to a report, so an
    event never travels as the report itself). A report without an `event` key carries none."""
    if "event" not in report:
        return []
    if report["event"] != BATCH:
        raise ProtocolError(f"a report carries a batch of events, not a bare {report['event']!r} event")
    return [event_from_payload(payload) for payload in report.get("events") or []]
