"""PGD / single-step / Gaussian noise, and the source-training kernel (real torch, tiny nets, embedded data)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from workers import data, models
from workers.attacks import gaussian_noise, pgd, pgd1
from workers.context import KernelContext
from workers.errors import KernelInputError
from workers.kernels import resolve_source_params, robust_eval_threat, run_source, spec_digest
from workers.kernels.source import DEFAULT_EVAL_EPS, DEFAULT_EVAL_NORM

INPUT = 16


@pytest.fixture(scope="module")
def batch() -> tuple[models.Classifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = models.build_model("tiny_resnet", 6).eval()
    ds = data.load_split("synthetic-source", False, params={"num_classes": 6})
    x = ds.batch(list(range(32)), INPUT)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own predictions: the clean loss is low, the attack has room
    return model, x, y


def losses(model: models.Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("random_start, use_best", [(False, True), (True, True), (True, False)])
def test_pgd_stays_in_the_ball_and_raises_the_loss(batch, norm: str, eps: float, random_start: bool,
                                                   use_best: bool) -> None:
    model, x, y = batch
    model.train()
    adv = pgd(model, x, y, norm=norm, eps=eps, step=2.5 * eps / 5, steps=5, random_start=random_start,
              use_best=use_best, generator=torch.Generator().manual_seed(1))
    assert model.training and all(m.training for m in model.modules())  # train mode restored
    model.eval()
    delta = (adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not adv.requires_grad
    assert losses(model, adv, y).mean() > losses(model, x, y).mean() + 0.1


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_every_iterate_stays_in_the_ball(batch, norm: str, eps: float) -> None:
    model, x, y = batch
    for steps in range(1, 5):  # the final iterate of k steps is the k-th iterate of a longer run
        adv = pgd(model, x, y, norm=norm, eps=eps, step=eps, steps=steps, random_start=True, use_best=False,
                  generator=torch.Generator().manual_seed(2))
        delta = (adv - x).flatten(1)
        size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5 and 0.0 <= float(adv.min()) and float(adv.max()) <= 1.0


def test_use_best_keeps_the_highest_loss_iterate(batch) -> None:
    model, x, y = batch
    kwargs: dict[str, Any] = {"norm": "linf", "eps": 8 / 255, "step": 6 / 255, "steps": 6, "random_start": True}
    best = pgd(model, x, y, use_best=True, generator=torch.Generator().manual_seed(3), **kwargs)
    final = pgd(model, x, y, use_best=False, generator=torch.Generator().manual_seed(3), **kwargs)
    assert bool((losses(model, best, y) >= losses(model, final, y) - 1e-5).all())


def test_single_step_is_fgsm(batch) -> None:
    model, x, y = batch
    eps = 4 / 255
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), [xg])
    fgsm = (x + eps * grad.sign()).clamp(0, 1)
    assert torch.allclose(pgd1(model, x, y, norm="linf", eps=eps), fgsm, atol=1e-6)
    assert torch.equal(pgd1(model, x, y, norm="l2", eps=0.5),
                       pgd(model, x, y, norm="l2", eps=0.5, step=0.5, steps=1, random_start=False, use_best=False))


def test_pgd_rejects_bad_arguments(batch) -> None:
    model, x, y = batch
    with pytest.raises(KernelInputError, match="unknown PGD norm"):
        pgd(model, x, y, norm="l1", eps=0.1, step=0.1, steps=1)
    with pytest.raises(KernelInputError, match="eps > 0"):
        pgd(model, x, y, norm="linf", eps=0.0, step=0.1, steps=1)


def test_gaussian_noise() -> None:
    x = torch.rand(4, 3, 8, 8)
    a = gaussian_noise(x, sigma=0.1, generator=torch.Generator().manual_seed(0))
    b = gaussian_noise(x, sigma=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert 0.05 < float((a - x).std()) < 0.12
    assert torch.equal(gaussian_noise(x, sigma=0.0), x)
    with pytest.raises(KernelInputError):
        gaussian_noise(x, sigma=-1.0)


# ---------------------------------------------------------------------------------------------- run_source


def source_spec(method: str, epochs: int = 3, seed: int = 3, **params: Any) -> dict[str, Any]:
    base = {"input_size": INPUT, "batch_size": 64, "lr": 0.05, "schedule": "constant", "eval_images": 100,
            "train_images": 200, "num_classes": 4, "robust_eval_steps": 2, "adv_eps": 8 / 255}
    base.update(params)
    return {"kind": "source", "arch": "tiny_resnet", "dataset": "synthetic-source", "method": method, "seed": seed,
            "epochs": epochs, "source": None, "source_checksum": None, "ood": None, "blocks": None,
            "subset_size": None, "params": base, "kernel_version": "1"}


def run(spec: dict[str, Any], tmp_path: Path, resume: dict | None = None):
    reports: list[tuple[int, dict[str, float]]] = []
    states: list[dict[str, Any]] = []

    def save(state: dict[str, Any]) -> None:
        buffer = io.BytesIO()  # the trainable writes states with torch.save and reads them weights_only
        torch.save(state, buffer)
        buffer.seek(0)
        states.append(torch.load(buffer, weights_only=True))

    ctx = KernelContext(artifacts_dir=str(tmp_path / "artifacts"), resume_state=resume, save_state=save)
    final = run_source(spec, ctx, lambda epoch, metrics: reports.append((epoch, dict(metrics))))
    return reports, final, states


def without_time(reports: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
    return [(epoch, {k: v for k, v in m.items() if k != "seconds"}) for epoch, m in reports]


def test_run_source_reports_checkpoints_and_resumes(tmp_path: Path) -> None:
    spec = source_spec("pgd-linf", adv_step=4 / 255, adv_steps=2, eval_epochs=[1])
    spec["ood"] = "noise-2"
    reports, final, states = run(spec, tmp_path / "a")
    assert [epoch for epoch, _ in reports] == [1, 3] and [s["epoch"] for s in states] == [1, 3]
    for _, metrics in reports:
        assert {"train_loss", "train_acc", "test_acc", "robust_acc", "ood_acc", "lr", "seconds"} <= metrics.keys()
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("train_acc", "test_acc", "robust_acc", "ood_acc"))
    assert final["test_acc"] == reports[-1][1]["test_acc"] and final["robust_acc"] == reports[-1][1]["robust_acc"]

    path = Path(final["checkpoint_path"])
    assert path.name == f"{spec_digest(spec)}.pt" and path.parent.name == "sources"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == final["checkpoint_sha256"]
    [artifact] = final["artifacts"]
    assert artifact["kind"] == "source_checkpoint" and artifact["uri"] == str(path)
    assert artifact["key_hash"] == spec_digest(spec)
    loaded = models.load_source_model("tiny_resnet", path)
    assert loaded.num_classes == 4 and models.load_checkpoint_meta(path)["method"] == "pgd-linf"

    # Resume from the epoch-1 state: epochs 2..3 only, and the same numbers as the uninterrupted run.
    resumed_reports, resumed_final, _ = run(spec, tmp_path / "b", resume=states[0])
    assert [epoch for epoch, _ in resumed_reports] == [3]
    assert without_time(resumed_reports) == without_time(reports[1:])
    # Same weights (not the same file bytes: torch.save names its zip folder after the random temp file).
    resumed = models.load_state_dict_file(resumed_final["checkpoint_path"])
    assert all(torch.equal(v, resumed[k]) for k, v in models.load_state_dict_file(path).items())


@pytest.mark.parametrize(("method", "params", "threat", "steps"), [
    # the training threat, robustness's eval convention: 20 steps of 2.5*eps/20
    ("pgd-linf", {"adv_step": 2 / 255, "adv_steps": 3}, ("linf", 8 / 255), 20),
    ("pgd-l2", {"adv_norm": "l2", "adv_eps": 0.5, "adv_step": 0.2, "adv_steps": 2}, ("l2", 0.5), 20),
    ("pgd1", {}, ("linf", 8 / 255), 20),
    ("natural", {"adv_eps": 0.0}, (DEFAULT_EVAL_NORM, DEFAULT_EVAL_EPS), 20),
])
def test_sources_report_robust_accuracy_by_default(tmp_path: Path, method: str, params: dict[str, Any],
                                                   threat: tuple[str, float], steps: int) -> None:
    spec = source_spec(method, epochs=1, train_images=100, eval_images=50, **params)
    del spec["params"]["robust_eval_steps"]
    resolved = resolve_source_params(spec)
    assert resolved["robust_eval_steps"] == steps and robust_eval_threat(resolved) == threat
    assert resolved["robust_eval_step"] == pytest.approx(2.5 * threat[1] / steps)
    if method == "natural":  # one real run: robust_acc at every eval epoch, reproducibly (seeded random starts)
        reports, final, _ = run(spec, tmp_path / "a")
        assert final["robust_acc"] == reports[-1][1]["robust_acc"] and 0.0 <= final["robust_acc"] <= 1.0
        assert run(spec, tmp_path / "b")[1]["robust_acc"] == final["robust_acc"]


def test_natural_source_without_robust_eval(tmp_path: Path) -> None:
    reports, final, _ = run(source_spec("natural", epochs=1, robust_eval_steps=0, train_images=100), tmp_path)
    assert "robust_acc" not in reports[0][1] and final["robust_acc"] is None and final["ood_acc"] is None


@pytest.mark.parametrize("method, params, message", [
    ("pgd-linf", {"adv_eps": 0.0, "adv_step": 0.01, "adv_steps": 3}, "adv_eps > 0"),
    ("pgd-l2", {"adv_norm": "linf", "adv_step": 0.1, "adv_steps": 3}, "l2 ball"),
    ("pgd1", {"adv_steps": 3}, "pgd1"),
    ("gaussian", {}, "noise_sigma > 0"),
    ("natural", {"adv_steps": 3, "adv_step": 0.01}, "not natural"),
    ("natural", {"noise_sigma": 0.1}, "is method gaussian"),
    ("mixup", {}, "unknown source method"),
])
def test_run_source_rejects_bad_specs(tmp_path: Path, method: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(KernelInputError, match=message) as info:
        run(source_spec(method, epochs=1, **params), tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_pgd_linf_source_is_more_robust_than_natural(tmp_path: Path) -> None:
    """Real training on synthetic-source: PGD training buys clearly higher PGD accuracy (~+25 pp here)."""
    common = {"train_images": 800, "num_classes": 4, "eval_images": 200, "robust_eval_steps": 5,
              "adv_eps": 16 / 255}
    natural = run(source_spec("natural", epochs=5, seed=0, **common), tmp_path / "natural")[1]
    robust_spec = source_spec("pgd-linf", epochs=5, seed=0, adv_step=8 / 255, adv_steps=3, **common)
    robust = run(robust_spec, tmp_path / "pgd")[1]
    assert robust["robust_acc"] >= natural["robust_acc"] + 0.15
    assert natural["test_acc"] > 0.6  # the natural model did learn the task: its low PGD accuracy is the attack
