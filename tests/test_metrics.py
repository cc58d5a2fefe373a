"""Baseline fits, effective robustness, testbed CSVs and binned ER (pure numpy, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.errors import KernelInputError
from workers.metrics import (
    PUBLISHED_BASELINES,
    Baseline,
    accuracy,
    binned_er,
    effective_robustness,
    fit_baseline,
    forward_transform,
    inverse_transform,
    load_testbed_csv,
    logit,
    probit,
)


def test_accuracy_from_logits_and_predictions() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 3, 0], [0, 5, 1]])
    assert accuracy(logits, labels) == 0.75
    assert accuracy(np.array([0, 1, 1, 1]), [0, 1, 2, 1]) == 0.75
    with pytest.raises(KernelInputError):
        accuracy([0, 1], [0, 1, 2])


@pytest.mark.parametrize("name", ["logit", "probit"])
def test_transforms_invert_and_clip(name: str) -> None:
    p = np.array([0.01, 0.3, 0.5, 0.9])
    assert np.allclose(inverse_transform(forward_transform(p, name), name), p)
    assert np.all(np.isfinite(forward_transform([0.0, 1.0], name)))  # clipped to [1e-6, 1-1e-6]
    assert logit(0.5) == pytest.approx(0.0) and probit(0.5) == pytest.approx(0.0)
    assert float(logit(1.0)) == pytest.approx(np.log((1 - 1e-6) / 1e-6))


@pytest.mark.parametrize("name, a, b", [("logit", 0.9, -0.4), ("probit", 1.2, 0.3)])
def test_fit_recovers_known_line_and_er_is_zero_on_it(name: str, a: float, b: float) -> None:
    ids = np.linspace(0.2, 0.95, 12)
    oods = inverse_transform(a * forward_transform(ids, name) + b, name)
    fit = fit_baseline(ids, oods, transform=name)
    assert fit.slope == pytest.approx(a, abs=1e-9) and fit.intercept == pytest.approx(b, abs=1e-9)
    assert fit.transform == name and fit.n_points == 12 and fit.r == pytest.approx(1.0)
    for id_acc, ood_acc in zip(ids, oods, strict=True):
        assert effective_robustness(float(id_acc), float(ood_acc), fit) == pytest.approx(0.0, abs=1e-9)
    # A model 5 pp above the line has ER +0.05.
    assert effective_robustness(0.6, float(fit.predict(0.6)) + 0.05, fit) == pytest.approx(0.05)


def test_fit_with_noise_is_close() -> None:
    rng = np.random.default_rng(0)
    ids = rng.uniform(0.3, 0.9, 200)
    oods = inverse_transform(0.8 * logit(ids) - 0.2 + rng.normal(0, 0.01, 200), "logit")
    fit = fit_baseline(ids, oods)
    assert fit.slope == pytest.approx(0.8, abs=0.02) and fit.intercept == pytest.approx(-0.2, abs=0.02)


def test_published_imagenet_v2_coefficients() -> None:
    logit_fit = PUBLISHED_BASELINES["imagenet-v2"]["logit"]
    assert (logit_fit.slope, logit_fit.intercept) == (0.9232, -0.4977)
    # REFERENCE D: ResNet-50 76.13 -> predicted 63.95; it scores 63.21, so ER ≈ -0.74 pp.
    assert float(logit_fit.predict(0.7613)) == pytest.approx(0.6395, abs=5e-5)
    assert effective_robustness(0.7613, 0.6321, logit_fit) == pytest.approx(-0.0074, abs=5e-5)
    probit_fit = PUBLISHED_BASELINES["imagenet-v2"]["probit"]
    assert (probit_fit.slope, probit_fit.intercept, probit_fit.transform) == (0.9617, -0.3247, "probit")
    assert float(probit_fit.predict(0.7613)) == pytest.approx(0.64, abs=0.005)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(KernelInputError, match="at least 3"):
        fit_baseline([0.5, 0.6], [0.4, 0.5])
    with pytest.raises(KernelInputError, match=r"inside \(0, 1\)"):
        fit_baseline([0.5, 0.6, 76.0], [0.4, 0.5, 0.6])
    with pytest.raises(KernelInputError, match=r"inside \(0, 1\)"):
        fit_baseline([0.5, 0.6, 1.0], [0.4, 0.5, 0.6])
    with pytest.raises(KernelInputError, match="distinct"):
        fit_baseline([0.5, 0.5, 0.5], [0.4, 0.5, 0.6])
    with pytest.raises(KernelInputError, match="unknown transform"):
        fit_baseline([0.5, 0.6, 0.7], [0.4, 0.5, 0.6], transform="linear")
    with pytest.raises(KernelInputError):
        effective_robustness(76.0, 0.6, Baseline(1.0, 0.0))


def test_testbed_csv(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("model,id_acc,ood_acc\na,0.7,0.6\nb,0.8,0.7\nc,0.9,0.85\n")
    assert load_testbed_csv(good) == ([0.7, 0.8, 0.9], [0.6, 0.7, 0.85])
    cases = {
        "short.csv": ("id_acc,ood_acc\n0.7,0.6\n0.8,0.7\n", "at least 3"),
        "percent.csv": ("id_acc,ood_acc\n70,60\n80,70\n90,85\n", r"fractions in \(0, 1\)"),
        "columns.csv": ("top1,ood\n0.7,0.6\n0.8,0.7\n0.9,0.8\n", "needs columns"),
        "text.csv": ("id_acc,ood_acc\n0.7,0.6\nx,0.7\n0.9,0.8\n", "not numbers"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(KernelInputError, match=message) as info:
            load_testbed_csv(path)
        assert "\n" not in str(info.value)
    with pytest.raises(KernelInputError, match="cannot read"):
        load_testbed_csv(tmp_path / "missing.csv")


def test_binned_er() -> None:
    ids = [0.101, 0.105, 0.29, 0.5, 1.0, 0.999]
    ers = [0.01, 0.03, -0.02, 0.0, 0.05, 0.07]
    bins = binned_er(ids, ers, bins=100)
    assert [(round(lo, 2), round(hi, 2), count) for lo, hi, _, count in bins] == [
        (0.10, 0.11, 2), (0.29, 0.30, 1), (0.50, 0.51, 1), (0.99, 1.00, 2)
    ]
    assert bins[0][2] == pytest.approx(0.02) and bins[-1][2] == pytest.approx(0.06)
    assert binned_er([], []) == []
    assert [b[3] for b in binned_er(ids, ers, bins=2)] == [3, 3]
    with pytest.raises(KernelInputError):
        binned_er([0.5, 1.5], [0.0, 0.0])
