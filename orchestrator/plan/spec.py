"""TrialSpec: everything that determines one trial's result, and its seed hash.

The spec is the unit of deduplication: two specs with the same canonical JSON are the
same trial, whichever grid or experiment produced them. Nothing that does not change the
result (experiment name, resources, data root, paths) belongs here.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal

from orchestrator.errors import UserError
from orchestrator.plan.sources import SourceRef
from workers.trainable import catalog

# The kernel version, the names and the parameter schema are the catalog's (workers.catalog): written
# down once, derived here.
KERNEL_VERSION: str = catalog.KERNEL_VERSION

Kind = Literal["source", "transfer"]
KINDS: tuple[str, ...] = tuple(catalog.KINDS)

SOURCE_METHODS: tuple[str, ...] = catalog.methods("source")
TRANSFER_METHODS: tuple[str, ...] = catalog.methods("transfer")

# Hyper-parameters a spec may carry in `params`, with their types. Values are coerced to
# these types before hashing so that `lr: 1` and `lr: 1.0` are the same trial.
PARAM_TYPES: dict[str, type] = catalog.param_types()

_SPEC_FIELDS = (
    "kind",
    "arch",
    "dataset",
    "method",
    "seed",
    "epochs",
    "source",
    "source_checksum",
    "ood",
    "blocks",
    "subset_size",
    "params",
    "kernel_version",
)


class SpecError(UserError):
    """A spec field is missing, unknown or of the wrong type (one-line message)."""


def _normalise_float(value: float, name: str = "spec") -> float:
    if not math.isfinite(value):
        raise SpecError(f"param {name!r} must be a finite number, got {value!r}")
    # 12 significant digits absorb spelling and arithmetic noise (0.1 vs 1e-1 vs 0.1000000000001).
    normalised = float(f"{value:.12g}")
    return 0.0 if normalised == 0 else normalised


def _coerce(name: str, value: Any, expected: type) -> Any:
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"param {name!r} must be a number, got {value!r}")
        return _normalise_float(float(value), name)
    if expected is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise SpecError(f"param {name!r} must be an integer, got {value!r}")
        return int(value)
    if expected is str:
        if not isinstance(value, str):
            raise SpecError(f"param {name!r} must be a string, got {value!r}")
        return value
    if expected is list:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise SpecError(f"param {name!r} must be a list of integers, got {value!r}")
        return tuple(sorted(set(int(v) for v in value)))
    raise SpecError(f"param {name!r} has unsupported type {expected!r}")  # pragma: no cover


def normalise_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and coerce hyper-parameters; unknown names are errors, not silently hashed."""
    if not isinstance(params, Mapping):
        raise SpecError(f"field 'params' must be a mapping of name: value, got {params!r}")
    out: dict[str, Any] = {}
    for name, value in params.items():
        try:
            schema = catalog.check_param(name)
        except catalog.CatalogError as exc:
            raise SpecError(str(exc)) from None
        if value is None:
            continue  # None means "not set": it must hash like an absent key
        out[name] = _coerce(name, value, schema.type)
        if schema.choices and out[name] not in schema.choices:
            raise SpecError(_unknown_choice(name, out[name], schema.choices))
    return out


def _unknown_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {name} {value!r}{hint} (known: {', '.join(choices)})"


# The DB columns: seed is BIGINT, blocks / subset_size / epochs are INTEGER. Checking the ranges
# here turns an out-of-range value into a one-line SpecError instead of a driver overflow.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1


def _optional_int(name: str, value: Any, low: int = 0, high: int = INT32_MAX) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise SpecError(f"field {name!r} must be an integer, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise SpecError(f"field {name!r} must be between {low} and {high}, got {number}")
    return number


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise SpecError(f"field {name!r} must be a non-empty string or null, got {value!r}")
    return value


@dataclass(frozen=True, eq=False)
class TrialSpec:
    kind: Kind
    arch: str
    dataset: str
    method: str
    seed: int
    epochs: int
    # transfer: where the pre-trained weights come from. "scratch" (random init),
    # "torchvision:<arch>", "robustness:<name>", "file:<name>", or "spec:<spec_hash>" for a
    # source model trained by a source trial of the same grid.
    source: str | None = None
    source_checksum: str | None = None  # sha256 of the source file, when it is a file
    ood: str | None = None  # OOD evaluation set: "cifar10.1", "noise-3", "blur-2", …
    blocks: int | None = None  # residual blocks fine-tuned besides the head
    subset_size: int | None = None  # None = the full training split
    params: Mapping[str, Any] = field(default_factory=dict)
    kernel_version: str = KERNEL_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("method", "arch", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SpecError(f"field {name!r} must be a non-empty string")
        for name in ("source", "source_checksum", "ood"):
            _optional_str(name, getattr(self, name))
        if not isinstance(self.kernel_version, str) or not self.kernel_version:
            raise SpecError(f"field 'kernel_version' must be a non-empty string, got {self.kernel_version!r}")
        for name, low, high in (("seed", INT64_MIN, INT64_MAX), ("epochs", 1, INT32_MAX)):
            if getattr(self, name) is None:
                raise SpecError(f"field {name!r} is required (an integer)")
            object.__setattr__(self, name, _optional_int(name, getattr(self, name), low, high))
        object.__setattr__(self, "blocks", _optional_int("blocks", self.blocks))
        # subset_size None = the full training split; an explicit size is at least one image
        object.__setattr__(self, "subset_size", _optional_int("subset_size", self.subset_size, low=1))
        if self.kind == "transfer" and not self.source:
            raise SpecError("a transfer spec needs a 'source'")
        # Frozen all the way down: params cannot change after hashing.
        object.__setattr__(self, "params", MappingProxyType(normalise_params(self.params)))
        self._check_names()

    def _check_names(self) -> None:
        """Every name the spec uses is one the catalog knows: a typo fails at plan time, in one line.
        Validation only: nothing is rewritten, so the canonical JSON (and the hash) stays as given."""
        try:
            catalog.method(self.method, self.kind)
            catalog.check_arch(self.arch)
            catalog.check_dataset(self.dataset)
            if self.ood is not None:
                catalog.check_ood(self.ood, self.dataset)
            if self.source is not None:
                ref = SourceRef.parse(self.source)
                if ref.scheme == "torchvision":
                    catalog.check_arch(ref.name)
        except catalog.CatalogError as exc:
            raise SpecError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _SPEC_FIELDS}
        data["params"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @cached_property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrialSpec) and other.spec_hash == self.spec_hash

    def __hash__(self) -> int:
        return hash(self.spec_hash)

    @property
    def source_ref(self) -> SourceRef | None:
        """The parsed `source` (None for source trials)."""
        return None if self.source is None else SourceRef.parse(self.source)

    def source_hash(self) -> str | None:
        """The spec_hash of the grid-trained source trial this transfer needs (source spec:<hash>), else None."""
        ref = self.source_ref
        return ref.name if ref is not None and ref.scheme == "spec" else None

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialSpec:
        unknown = set(data) - set(_SPEC_FIELDS)
        if unknown:
            raise SpecError(f"unknown spec field(s): {', '.join(sorted(unknown))}")
        missing = {"kind", "arch", "dataset", "method", "seed", "epochs"} - set(data)
        if missing:
            raise SpecError(f"missing spec field(s): {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> TrialSpec:
        return cls.from_dict(json.loads(text))


def spec_hash_of(data: Mapping[str, Any]) -> str:
    return TrialSpec.from_dict(data).spec_hash
