"""What a grid costs before it runs: image-steps per trial and GPU-hours from a throughput table.

The one owner of a trial's image-steps: `rtgrid plan` totals them, `rtgrid status` weights its ETA by them.

An image-step is one image through the model once:
- training: images per epoch (the subset, the training split, or iterations_per_epoch x batch_size) x epochs
  (+ SWA epochs), x (1 + adv_steps) for PGD training, a source's or delta-adv's (each PGD step is one more
  forward-backward pass);
- evaluation: at each evaluation epoch (eval_epochs, always the last) the test and OOD sets (capped by
  eval_images), for an adversarially trained source also robust_eval_steps PGD passes over the test set, and
  for a transfer with an ASR attack the student's clean and adversarial pass over attack_images test images
  (the adversarial set itself is built once per source and cached: not counted per trial).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.plan.spec import TrialSpec
from workers.trainable import catalog

ANY_BLOCKS = "*"
THROUGHPUT_COLUMNS = ("arch", "input_size", "blocks", "train_images_per_s", "eval_images_per_s", "device", "source")


@dataclass(frozen=True)
class ImageSteps:
    train: int
    eval: int

    @property
    def total(self) -> int:
        return self.train + self.eval


def _resolved(spec: TrialSpec, name: str) -> Any:
    """A param as the kernel uses it: the spec's value, else the catalog's default for the method."""
    value = spec.param(name)
    if value is not None:
        return value
    default = catalog.param_default(name, spec.method)
    if isinstance(default, catalog.Derived):
        if name == "swa_epochs":  # the kernel's rule (workers/kernels/transfer.py): max(1, epochs // 3)
            return max(1, spec.epochs // 3)
        return None
    return default


def _evaluations(spec: TrialSpec, total_epochs: int) -> int:
    """Evaluation epochs, as workers/training.py eval_epochs_of counts them: the requested ones plus the last."""
    requested = _resolved(spec, "eval_epochs") or range(1, total_epochs + 1)
    return len({e for e in requested if 1 <= e <= total_epochs} | {total_epochs})


def _capped(size: int, limit: int) -> int:
    return size if limit <= 0 else min(size, limit)


def image_steps(spec: TrialSpec) -> ImageSteps | None:
    """A trial's training and evaluation image-steps; None where a split's size is unknown before loading."""
    params = spec.params
    train_split = catalog.split_size(spec.dataset, True, params)
    test_split = catalog.split_size(spec.dataset, False, params)
    if test_split is None:
        return None
    per_epoch_iterations = int(_resolved(spec, "iterations_per_epoch") or 0)
    if per_epoch_iterations:
        per_epoch = per_epoch_iterations * int(_resolved(spec, "batch_size"))
    elif spec.subset_size is not None:
        per_epoch = spec.subset_size if train_split is None else min(spec.subset_size, train_split)
    elif train_split is not None:
        per_epoch = train_split
    else:
        return None
    swa = int(_resolved(spec, "swa_epochs") or 0) if spec.kind == "transfer" else 0
    total_epochs = spec.epochs + swa
    adv_passes = 1 + int(_resolved(spec, "adv_steps") or 0)
    train = per_epoch * total_epochs * adv_passes

    cap = int(_resolved(spec, "eval_images") or 0)
    ood = 0
    if spec.ood is not None:
        ood_size = catalog.split_size(spec.ood, False, params) if spec.ood in catalog.SPLIT_SIZES else test_split
        ood = _capped(ood_size or test_split, cap)
    per_evaluation = _capped(test_split, cap) + ood
    traits = catalog.method(spec.method, spec.kind)
    if spec.kind == "source" and traits.adversarial:
        per_evaluation += _capped(test_split, cap) * int(_resolved(spec, "robust_eval_steps") or 0)
    evaluation = per_evaluation * _evaluations(spec, total_epochs)
    if spec.kind == "transfer" and int(_resolved(spec, "attack_steps") or 0) > 0:
        evaluation += 2 * _capped(test_split, int(_resolved(spec, "attack_images") or 0))
    return ImageSteps(train, evaluation)


# --- throughput ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    arch: str
    input_size: int
    blocks: str  # a number, or ANY_BLOCKS
    train_images_per_s: float
    eval_images_per_s: float
    device: str
    source: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.arch, self.input_size, self.blocks)


SHIPPED_TABLE = "throughput.csv"


def read_throughput(path: str | Path | None = None) -> dict[tuple[str, int, str], Throughput]:
    """The shipped table (orchestrator/plan/throughput.csv), with the rows of `path` (same columns) on top."""
    shipped = resources.files("orchestrator.plan").joinpath(SHIPPED_TABLE).read_text(encoding="utf-8")
    table = {row.key: row for row in _parse_rows(shipped.splitlines(), SHIPPED_TABLE)}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read throughput file {path}: {exc.strerror}") from None
        table.update({row.key: row for row in _parse_rows(text.splitlines(), str(path))})
    return table


def _parse_rows(lines: Iterable[str], where: str) -> list[Throughput]:
    rows = []
    reader = csv.DictReader(line for line in lines if line.strip() and not line.startswith("#"))
    missing = set(THROUGHPUT_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(sorted(missing))} "
                        f"(need: {', '.join(THROUGHPUT_COLUMNS)})")
    for number, row in enumerate(reader, start=2):
        try:
            entry = Throughput(
                arch=catalog.check_arch(row["arch"]), input_size=int(row["input_size"]),
                blocks=row["blocks"].strip() if row["blocks"].strip() == ANY_BLOCKS else str(int(row["blocks"])),
                train_images_per_s=float(row["train_images_per_s"]), eval_images_per_s=float(row["eval_images_per_s"]),
                device=row["device"], source=row["source"])
        except (ValueError, TypeError, catalog.CatalogError) as exc:
            raise UserError(f"{where}: data row {number - 1}: {exc}") from None
        if not (entry.train_images_per_s > 0 and entry.eval_images_per_s > 0):
            raise UserError(f"{where}: data row {number - 1}: images/s must be positive")
        rows.append(entry)
    return rows


def throughput_key(spec: TrialSpec) -> tuple[str, int, str]:
    """(arch, input size as the kernel uses it, blocks or ANY_BLOCKS): the row a spec is priced by."""
    return (spec.arch, int(_resolved(spec, "input_size")), ANY_BLOCKS if spec.blocks is None else str(spec.blocks))


def throughput_of(spec: TrialSpec, table: Mapping[tuple[str, int, str], Throughput]) -> Throughput | None:
    arch, size, blocks = throughput_key(spec)
    return table.get((arch, size, blocks)) or table.get((arch, size, ANY_BLOCKS))


def gpu_seconds(steps: ImageSteps, rate: Throughput) -> float:
    return steps.train / rate.train_images_per_s + steps.eval / rate.eval_images_per_s


def human_count(value: float) -> str:
    """1234567 -> 1.23e6 style for big numbers, plain below a million."""
    if value < 1e6:
        return f"{value:,.0f}"
    exponent = int(math.floor(math.log10(value)))
    return f"{value / 10 ** exponent:.2f}e{exponent}"
