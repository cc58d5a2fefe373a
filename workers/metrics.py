"""Accuracy, the logit / probit baseline fit and effective robustness (REFERENCE D). Pure numpy.

All accuracies and ER are fractions. ER(f) = acc_OOD(f) − T⁻¹(a·T(acc_ID(f)) + b), with (a, b) an
OLS fit of T(OOD) on T(ID) over a testbed and T = logit (Taori et al.) or probit (Miller et al.).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from workers.errors import KernelInputError

CLIP = 1e-6  # transforms clip fractions to [CLIP, 1 − CLIP] so that 0 and 1 stay finite
TRANSFORMS = ("logit", "probit")
_NORMAL = NormalDist()

ArrayLike = float | Sequence[float] | np.ndarray


def accuracy(logits_or_preds: object, labels: object) -> float:
    """Top-1 accuracy (fraction). Accepts logits (N×C) or predicted labels (N), torch or numpy."""
    preds = np.asarray(_to_numpy(logits_or_preds))
    truth = np.asarray(_to_numpy(labels)).reshape(-1)
    if preds.ndim == 2:
        preds = preds.argmax(axis=1)
    preds = preds.reshape(-1)
    if preds.shape != truth.shape:
        raise KernelInputError(f"accuracy: {preds.shape[0]} predictions for {truth.shape[0]} labels")
    if truth.size == 0:
        raise KernelInputError("accuracy of an empty set")
    return float((preds == truth).mean())


def _to_numpy(value: object) -> object:
    detach = getattr(value, "detach", None)  # torch tensors, without importing torch here
    return detach().cpu().numpy() if callable(detach) else value


# ---------------------------------------------------------------------------------------------- transforms


def _clipped(p: ArrayLike) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), CLIP, 1 - CLIP)


def logit(p: ArrayLike) -> np.ndarray:
    q = _clipped(p)
    z: np.ndarray = np.log(q / (1 - q))
    return z


def inverse_logit(z: ArrayLike) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
    return p


def probit(p: ArrayLike) -> np.ndarray:
    z: np.ndarray = np.vectorize(_NORMAL.inv_cdf, otypes=[np.float64])(_clipped(p))
    return z


def inverse_probit(z: ArrayLike) -> np.ndarray:
    p: np.ndarray = np.vectorize(_NORMAL.cdf, otypes=[np.float64])(np.asarray(z, dtype=np.float64))
    return p


def forward_transform(p: ArrayLike, name: str) -> np.ndarray:
    if name == "logit":
        return logit(p)
    if name == "probit":
        return probit(p)
    raise KernelInputError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")


def inverse_transform(z: ArrayLike, name: str) -> np.ndarray:
    if name == "logit":
        return inverse_logit(z)
    if name == "probit":
        return inverse_probit(z)
    raise KernelInputError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")


# ---------------------------------------------------------------------------------------------- baseline


CONFIDENCE = 0.95  # the slope's confidence interval


@dataclass(frozen=True)
class Baseline:
    """T(OOD) ≈ slope·T(ID) + intercept; n_points, r (Pearson, in T space) and the slope's 95% CI
    (slope_ci_low, slope_ci_high; None when unknown, e.g. published coefficients) describe the fit.
    id is the stored `er_baselines` row that holds it (None before it is stored): every ER value
    computed from it records it."""

    slope: float
    intercept: float
    transform: str = "logit"
    n_points: int = 0
    r: float | None = None
    slope_ci_low: float | None = None
    slope_ci_high: float | None = None
    id: int | None = None

    def predict(self, id_acc: ArrayLike) -> np.ndarray:
        z = self.slope * forward_transform(id_acc, self.transform) + self.intercept
        return inverse_transform(z, self.transform)


def _fractions(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)) or np.any(array <= 0) or np.any(array >= 1):
        raise KernelInputError(f"{what} accuracies must be fractions strictly inside (0, 1)")
    return array


def fit_baseline(id_acc: Sequence[float] | np.ndarray, ood_acc: Sequence[float] | np.ndarray,
                 transform: str = "logit") -> Baseline:
    """OLS of T(OOD) on T(ID). Needs ≥ 3 points, accuracies strictly inside (0,1) (a 0 or 1 would be
    a clipped, ±13.8-logit leverage point that dominates the fit), and more than one ID value."""
    if transform not in TRANSFORMS:
        raise KernelInputError(f"unknown transform {transform!r} (known: {', '.join(TRANSFORMS)})")
    ids, oods = _fractions(id_acc, "ID"), _fractions(ood_acc, "OOD")
    if ids.shape != oods.shape:
        raise KernelInputError(f"baseline fit: {ids.size} ID but {oods.size} OOD accuracies")
    if ids.size < 3:
        raise KernelInputError(f"a baseline fit needs at least 3 (ID, OOD) points, got {ids.size}")
    x, y = forward_transform(ids, transform), forward_transform(oods, transform)
    if np.ptp(x) == 0:
        raise KernelInputError("a baseline fit needs more than one distinct ID accuracy")
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else None
    low, high = slope_ci(x, y, float(slope), float(intercept))
    return Baseline(float(slope), float(intercept), transform, int(ids.size), r, low, high)


def slope_ci(x: np.ndarray, y: np.ndarray, slope: float, intercept: float, confidence: float = CONFIDENCE
             ) -> tuple[float, float]:
    """The OLS slope's confidence interval in transformed space: slope ± t(1 − α/2, n − 2) · SE, with
    SE = sqrt( Σ residual² / (n − 2) / Σ (x − x̄)² ) (the classical standard error of the slope under
    OLS with homoscedastic normal errors). n ≥ 3, so n − 2 ≥ 1 degree of freedom."""
    from scipy.special import stdtrit  # scipy.special: no scipy.stats import cost

    n = x.size
    residuals = y - (slope * x + intercept)
    sxx = float(np.sum((x - x.mean()) ** 2))
    stderr = math.sqrt(float(np.sum(residuals ** 2)) / (n - 2) / sxx)
    half = float(stdtrit(n - 2, 1 - (1 - confidence) / 2)) * stderr
    return slope - half, slope + half


def effective_robustness(id_acc: float, ood_acc: float, baseline: Baseline) -> float:
    """ood − T⁻¹(a·T(id) + b), a fraction (× 100 for pp)."""
    if not (0 <= id_acc <= 1 and 0 <= ood_acc <= 1):
        raise KernelInputError(f"accuracies must be fractions in [0, 1], got id={id_acc}, ood={ood_acc}")
    return float(ood_acc - baseline.predict(id_acc))


# ImageNet → ImageNetV2 (matched frequency), fitted on Taori et al.'s 85 standard models (REFERENCE D).
# The (ID, OOD) pair each published fit was made on: `rtgrid er fit --published` refuses another pair
# unless forced.
PUBLISHED_PAIRS: dict[str, tuple[str, str]] = {"imagenet-v2": ("imagenet", "imagenet-v2")}
PUBLISHED_BASELINES: dict[str, dict[str, Baseline]] = {
    "imagenet-v2": {
        "logit": Baseline(slope=0.9232, intercept=-0.4977, transform="logit", n_points=85, r=0.998),
        "probit": Baseline(slope=0.9617, intercept=-0.3247, transform="probit", n_points=85, r=None),
    },
}


# ---------------------------------------------------------------------------------------------- testbed files


MAX_TESTBED_CSV_BYTES = 16 * 1024 * 1024


def load_testbed_csv(path: str | Path) -> tuple[list[float], list[float]]:
    """(ID, OOD) accuracies from a CSV with columns id_acc, ood_acc: fractions strictly in (0,1),
    at least 3 rows. Percentages are refused rather than guessed."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_TESTBED_CSV_BYTES:
            raise KernelInputError(f"testbed CSV {file} is {file.stat().st_size:,} bytes, over the "
                                   f"{MAX_TESTBED_CSV_BYTES:,} a testbed of accuracies needs; is it the right file?")
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            columns = set(rows[0]) if rows else set()
    except OSError as exc:
        raise KernelInputError(f"cannot read testbed CSV {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise KernelInputError(f"testbed CSV {file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                               f"offset {exc.start}); give a CSV with columns id_acc, ood_acc") from None
    except csv.Error as exc:  # NUL bytes, a field over the csv module's limit, a broken quote
        raise KernelInputError(f"testbed CSV {file} is not a readable CSV ({exc}); give a CSV with columns "
                               "id_acc, ood_acc") from None
    if not {"id_acc", "ood_acc"} <= columns:
        raise KernelInputError(f"testbed CSV {file} needs columns id_acc, ood_acc and at least one row")
    ids: list[float] = []
    oods: list[float] = []
    for number, row in enumerate(rows, start=2):
        try:
            id_value, ood_value = float(row["id_acc"]), float(row["ood_acc"])
        except (TypeError, ValueError):
            raise KernelInputError(f"testbed CSV {file} line {number}: id_acc/ood_acc are not numbers") from None
        if not (0 < id_value < 1 and 0 < ood_value < 1) or math.isnan(id_value + ood_value):
            raise KernelInputError(
                f"testbed CSV {file} line {number}: accuracies must be fractions in (0, 1), "
                f"got {row['id_acc']!r:.40}, {row['ood_acc']!r:.40}"
            )
        ids.append(id_value)
        oods.append(ood_value)
    if len(ids) < 3:
        raise KernelInputError(f"testbed CSV {file} has {len(ids)} rows; a baseline needs at least 3")
    return ids, oods


def binned_er(id_acc: Sequence[float] | np.ndarray, er: Sequence[float] | np.ndarray, bins: int = 100
              ) -> list[tuple[float, float, float, int]]:
    """Mean ER per equal-width ID-accuracy bin over [0, 1] (the last bin includes 1.0); non-empty
    bins only, as (bin_low, bin_high, mean_er, count), in increasing ID order (REFERENCE D)."""
    if bins < 1:
        raise KernelInputError(f"bins must be >= 1, got {bins}")
    ids = np.asarray(id_acc, dtype=np.float64).reshape(-1)
    values = np.asarray(er, dtype=np.float64).reshape(-1)
    if ids.shape != values.shape:
        raise KernelInputError(f"binned ER: {ids.size} ID accuracies but {values.size} ER values")
    if ids.size and (np.any(ids < 0) or np.any(ids > 1) or not np.all(np.isfinite(values))):
        raise KernelInputError("binned ER needs ID accuracies in [0, 1] and finite ER values")
    # the tiny offset keeps edge values (0.29 · 100 = 28.999…) in the bin they name
    index = np.minimum(np.floor(ids * bins + 1e-9).astype(np.int64), bins - 1)
    out = []
    for b in np.unique(index):
        chosen = values[index == b]
        out.append((float(b) / bins, float(b + 1) / bins, float(chosen.mean()), int(chosen.size)))
    return out
