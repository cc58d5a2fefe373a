"""The penultimate-layer attack, ASR and the adversarial-set cache (real torch, tiny nets, embedded data)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from workers import data, models
from workers.attacks import (
    adversarial_set_path,
    attack_key,
    attack_success_rate,
    cached_adversarial_set,
    clean_digest,
    evaluate_asr,
    penultimate_attack,
    penultimate_objective,
)
from workers.context import KernelContext
from workers.errors import KernelInputError
from workers.kernels import transfer_asr

INPUT = 16
PARAMS = {"eps": 0.1, "step": 0.01, "steps": 5, "m": 1000.0, "clamp": 2.2, "input_size": INPUT}


def identity(path: Path) -> tuple[int, int]:
    """(inode, mtime_ns) of a cached set: a rebuild replaces the file atomically, so both change."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def source() -> models.Classifier:
    torch.manual_seed(0)
    return models.build_model("tiny_resnet", 6).eval()


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    ds = data.load_split("synthetic-source", False, params={"num_classes": 6})
    return ds.batch(list(range(48)), INPUT)  # images in [0,1]


def test_objective_is_the_reference_form() -> None:
    f = torch.tensor([[3.0, 1.0, 2.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    # (f0 - m)^2 + 0.1 * mean_{j>=1} f_j^2
    expected = torch.tensor([(3 - 10) ** 2 + 0.1 * (1 + 4 + 0) / 3, 0.0])
    assert torch.allclose(penultimate_objective(f, 10.0), expected)


@pytest.mark.parametrize("m", [1000.0, 5.0])
def test_attack_drives_features_towards_target(source: models.Classifier, clean: torch.Tensor, m: float) -> None:
    x = source.normalize(clean)
    source.train()  # the attack must run in eval mode and restore the caller's mode
    adv = penultimate_attack(source, x, eps=0.1, step=0.01, steps=20, m=m, clamp=2.2,
                             generator=torch.Generator().manual_seed(0))
    assert source.training
    source.eval()
    with torch.no_grad():
        f_clean, f_adv = source.features(x, normalized=True), source.features(adv, normalized=True)
    before = penultimate_objective(f_clean, m).mean()
    after = penultimate_objective(f_adv, m).mean()
    # Every sample's f_0 climbs towards m (on average to more than twice its clean value, i.e. by
    # ~3 clean feature standard deviations), and the objective drops with it.
    assert bool((f_adv[:, 0] > f_clean[:, 0]).all())
    assert f_adv[:, 0].mean() > 1.8 * f_clean[:, 0].mean() and (f_adv[:, 0] - f_clean[:, 0]).mean() > 2 * f_clean.std()
    assert after < before - 1000.0 if m == 1000.0 else after < 0.6 * before

    # Budget and box: |δ| <= ε wherever the clean value lies in the box; x+δ always in the box.
    delta = adv - x
    inside = x.abs() <= 2.2
    assert float(delta[inside].abs().max()) <= 0.1 + 1e-5
    assert float(adv.abs().max()) <= 2.2 + 1e-6
    # Everywhere: adv = clamp(x + d) with |d| <= ε (advertorch applies the box clamp last, so a clean
    # value outside the box lands within ε of it or on its edge).
    assert bool(((x - 0.1).clamp(-2.2, 2.2) - 1e-5 <= adv).all() and (adv <= (x + 0.1).clamp(-2.2, 2.2) + 1e-5).all())


@pytest.mark.parametrize("eps, step", [(0.0, 0.01), (-0.1, 0.01), (0.1, 0.0)])
def test_attack_budget_must_be_positive(source: models.Classifier, clean: torch.Tensor, eps: float,
                                        step: float) -> None:
    with pytest.raises(KernelInputError, match="attack budget must be > 0") as info:
        penultimate_attack(source, source.normalize(clean[:2]), eps=eps, step=step, steps=3)
    assert "\n" not in str(info.value)


def test_asr_formula_on_hand_made_predictions() -> None:
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    clean = [0, 1, 2, 3, 4, 5, 0, 0, 0, 0]  # 6 clean-correct
    adv = [0, 9, 9, 3, 9, 5, 6, 0, 0, 0]  # of those, 1, 2, 4 flipped; image 6 is fixed by the attack
    result = attack_success_rate(labels, clean, adv)
    assert result["n_clean_correct"] == 6
    assert result["asr"] == pytest.approx(3 / 6)
    assert result["clean_acc"] == pytest.approx(0.6) and result["adv_acc"] == pytest.approx(0.4)

    # All-wrong clean: ASR is undefined and stored as None (NaN is not storable).
    none_right = attack_success_rate(torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0]), torch.tensor([1, 0, 0]))
    assert none_right == {"asr": None, "clean_acc": 0.0, "adv_acc": pytest.approx(1 / 3), "n_clean_correct": 0}
    assert attack_success_rate([1, 2], [1, 2], [1, 2])["asr"] == 0.0
    with pytest.raises(KernelInputError):
        attack_success_rate([1, 2], [1], [1, 2])


def test_evaluate_asr_uses_normalised_images(source: models.Classifier, clean: torch.Tensor) -> None:
    x = source.normalize(clean)
    with torch.no_grad():
        labels = source(clean).argmax(1)  # the source is right on every clean image by construction
    result = evaluate_asr(source, x, x, labels)
    assert result["clean_acc"] == 1.0 and result["asr"] == 0.0 and result["n_clean_correct"] == len(labels)


def test_adversarial_set_is_computed_once_per_key(source: models.Classifier, clean: torch.Tensor,
                                                  tmp_path: Path) -> None:
    x = source.normalize(clean)
    indices = list(range(len(x)))
    digest = clean_digest(x)
    key = attack_key("a" * 64, "synthetic-source", indices, PARAMS, digest)
    path = adversarial_set_path(tmp_path, key)
    first = cached_adversarial_set(source, "a" * 64, "synthetic-source", indices, x, PARAMS, tmp_path).adv
    assert path.is_file()
    built = identity(path)
    assert not list((tmp_path / "adv").glob("*.tmp"))  # the atomic write left no partial file
    second = cached_adversarial_set(source, "a" * 64, "synthetic-source", indices, x, PARAMS, tmp_path).adv
    assert identity(path) == built and torch.equal(first, second)  # read back, not rebuilt

    # Another source checkpoint, another evaluation subset or other params: a new set.
    other = cached_adversarial_set(source, "b" * 64, "synthetic-source", indices, x, PARAMS, tmp_path).adv
    assert adversarial_set_path(tmp_path, attack_key("b" * 64, "synthetic-source", indices, PARAMS, digest)).is_file()
    assert attack_key("b" * 64, "synthetic-source", indices, PARAMS, digest) != key
    assert not torch.equal(other, first)  # the random start is seeded from the key
    fewer = cached_adversarial_set(source, "a" * 64, "synthetic-source", indices[:8], x[:8], PARAMS, tmp_path).adv
    assert fewer.shape[0] == 8
    assert adversarial_set_path(
        tmp_path, attack_key("a" * 64, "synthetic-source", indices[:8], PARAMS, clean_digest(x[:8]))
    ).is_file()
    assert len(list((tmp_path / "adv").glob("*.pt"))) == 3  # one file per key
    # A loader of [0,1] batches gives the same set as the normalised tensor (and hits the cache).
    ds = data.load_split("synthetic-source", False, params={"num_classes": 6})
    loader = data.make_eval_loader(ds, indices, 16, INPUT)
    from_loader = cached_adversarial_set(source, "a" * 64, "synthetic-source", indices, loader, PARAMS, tmp_path)
    assert torch.equal(from_loader.adv, first)
    assert identity(path) == built
    with pytest.raises(KernelInputError, match="budget"):
        cached_adversarial_set(source, "c" * 64, "synthetic-source", indices, x, {**PARAMS, "eps": 0.0}, tmp_path)


def test_transfer_asr_caches_the_source_attack(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = models.build_model("tiny_resnet", 6).eval()
    path = tmp_path / "source.pt"
    models.save_source_checkpoint(src, path, {})
    test_ds = data.load_split("synthetic-target-a", False)
    indices = data.eval_indices(len(test_ds), 40)
    # A student that inherits the source features and reads only f_0: class 0 iff f_0 is above every
    # clean value, else class 1. Labelled all 1, every clean image is right, and exactly those images
    # whose attacked f_0 rises past the threshold flip: the attack's mechanism, with a known answer.
    student = copy.deepcopy(src)
    models.replace_head(student, test_ds.num_classes, init="default")
    with torch.no_grad():
        threshold = float(student.features(test_ds.batch(indices, INPUT))[:, 0].max()) + 1e-4
        student.head.weight.zero_()
        student.head.bias.zero_()
        student.head.weight[0, 0] = 100.0
        student.head.bias[0] = -100.0 * threshold
    all_ones = data.ImageSet(test_ds.name, [1] * len(test_ds), test_ds.num_classes, 3, data=test_ds.data)
    params = {"attack_eps": 0.1, "attack_step": 0.01, "attack_steps": 3, "attack_m": 1000.0, "attack_clamp": 2.2,
              "attack_images": 40, "input_size": INPUT}
    spec = {"dataset": "synthetic-target-a"}
    ctx = KernelContext(artifacts_dir=str(tmp_path / "artifacts"), source_path=str(path))
    result = transfer_asr(spec, ctx, params, src, student, all_ones, torch.device("cpu"))
    [artifact] = result["artifacts"]
    assert artifact["kind"] == "adversarial_set" and Path(artifact["uri"]).is_file()
    built = identity(Path(artifact["uri"]))
    again = transfer_asr(spec, ctx, params, src, student, all_ones, torch.device("cpu"))
    assert identity(Path(artifact["uri"])) == built  # the second call read the set, it did not rebuild it
    assert [p.name for p in (tmp_path / "artifacts" / "adv").iterdir()] == [Path(artifact["uri"]).name]
    assert result == again
    assert artifact["meta"]["images"] == 40
    adv = torch.load(artifact["uri"], weights_only=True)["adv"]
    with torch.no_grad():
        flipped = int((student.features(adv, normalized=True)[:, 0] > threshold).sum())
    assert result["clean_acc"] == 1.0 and result["asr"] == flipped / 40 and result["adv_acc"] == 1 - flipped / 40
    assert 0 < flipped < 40  # 3 steps move some, not all, f_0 past every clean value
