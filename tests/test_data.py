"""workers.data: subsets, embedded data, loaders, disk datasets, OOD sets (real torch, small)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers import data
from workers.errors import KernelInputError
from workers.models import build_model

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist-binarized-10k"


def _utrera_reference(targets: list[int], subset_size: int, seed: int) -> list[int]:
    """The paper-era code path, literally: global random seeded, shuffle, walk."""
    state = random.getstate()
    try:
        random.seed(seed)
        order = list(range(len(targets)))
        random.shuffle(order)
    finally:
        random.setstate(state)
    num_classes = len(set(targets))
    seen: set[int] = set()
    out: list[int] = []
    budget = subset_size
    for i in order:
        if budget == 0:
            break
        if budget > num_classes - len(seen) or targets[i] not in seen:
            out.append(i)
            seen.add(targets[i])
            budget -= 1
    return out


# ---------------------------------------------------------------- subsets


def _skewed_targets() -> list[int]:
    rng = random.Random(7)
    # Class 9 is rare (3 images) so that coverage is actually exercised.
    return [rng.randrange(9) for _ in range(997)] + [9, 9, 9]


@pytest.mark.parametrize("subset_size", [10, 11, 100, 400])
def test_subset_size_and_coverage(subset_size: int) -> None:
    targets = _skewed_targets()
    for seed in (0, 20_000_000, 20_100_000):
        chosen = data.subset_indices(targets, subset_size, seed)
        assert len(chosen) == subset_size
        assert len(set(chosen)) == subset_size
        assert {targets[i] for i in chosen} == set(range(10))
        assert chosen == _utrera_reference(targets, subset_size, seed)


def test_subset_exactly_one_per_class_at_minimum() -> None:
    targets = _skewed_targets()
    chosen = data.subset_indices(targets, 10, 3)
    assert sorted(targets[i] for i in chosen) == list(range(10))


def test_subset_deterministic_and_paired() -> None:
    targets = _skewed_targets()
    first = data.subset_indices(targets, 100, 5)
    # Same (targets, size, seed) from another caller, another container type, after other RNG use.
    random.seed(123)
    torch.manual_seed(456)
    assert data.subset_indices(tuple(targets), 100, 5) == first
    assert data.subset_indices(torch.tensor(targets).tolist(), 100, 5) == first
    assert data.subset_indices(targets, 100, 6) != first
    # The global random state is untouched by the sampler.
    random.seed(1)
    expected_next = random.random()
    random.seed(1)
    data.subset_indices(targets, 100, 5)
    assert random.random() == expected_next


def test_subset_full_and_errors() -> None:
    targets = _skewed_targets()
    assert data.subset_indices(targets, None, 0) == list(range(len(targets)))
    with pytest.raises(KernelInputError, match="larger than the dataset"):
        data.subset_indices(targets, len(targets) + 1, 0)
    with pytest.raises(KernelInputError, match="smaller than the number of classes"):
        data.subset_indices(targets, 9, 0)


def test_eval_indices_fixed_and_nested() -> None:
    assert data.eval_indices(50, 0) == list(range(50))
    assert data.eval_indices(50, 80) == list(range(50))
    small, large = data.eval_indices(1000, 100), data.eval_indices(1000, 300)
    assert len(small) == 100 and small == sorted(small) and set(small) <= set(large)
    assert data.eval_indices(1000, 100) == small


# ---------------------------------------------------------------- embedded datasets


def test_digits_split() -> None:
    train, test = data.load_split("digits", True), data.load_split("digits", False)
    assert (len(train), len(test)) == (1257, 540)
    assert train.num_classes == test.num_classes == 10 and train.channels == 1
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and isinstance(label, int)
    assert float(train.data.min()) == 0.0 and float(train.data.max()) == 1.0
    # Stratified: every class is in the test split in proportion.
    counts = np.bincount(test.targets, minlength=10)
    assert counts.min() >= 50
    assert data.load_split("digits", True) is train  # loaded once per process


def test_synthetic_deterministic_sized_and_split() -> None:
    params = {"num_classes": 7, "train_images": 350}
    train = data.load_split("synthetic-target-a", True, params=params)
    test = data.load_split("synthetic-target-a", False, params=params)
    assert (len(train), train.num_classes, train.channels) == (350, 7, 3)
    assert train.data.shape == (350, 3, 32, 32)
    assert np.bincount(train.targets).tolist() == [50] * 7
    assert 0.0 <= float(train.data.min()) and float(train.data.max()) <= 1.0
    again, labels = data.generate_synthetic("synthetic-target-a", 7, 350, seed=123)
    same, same_labels = data.generate_synthetic("synthetic-target-a", 7, 350, seed=123)
    other, _ = data.generate_synthetic("synthetic-target-a", 7, 350, seed=124)
    assert torch.equal(again, same) and labels == same_labels and not torch.equal(again, other)
    assert not torch.equal(train.data[:50], test.data[:50])
    defaults = data.load_split("synthetic-source", True)
    assert (len(defaults), defaults.num_classes) == (2000, 20)


def test_synthetic_class_families() -> None:
    source = data.synthetic_classes("synthetic-source", 20)
    target_a = data.synthetic_classes("synthetic-target-a", 10)
    target_b = data.synthetic_classes("synthetic-target-b", 10)
    assert len(set(source)) == 20 and len(set(target_a)) == 10
    assert data.synthetic_classes("synthetic-source", 5) == source[:5]  # prefixes are stable
    # Related but different: target A has new shapes, target B new textures and colours.
    assert not {s for s, _, _ in target_a} & {s for s, _, _ in source}
    assert not {c for _, _, c in target_b} & {c for _, _, c in source}
    with pytest.raises(KernelInputError, match="num_classes"):
        data.synthetic_classes("synthetic-target-a", 1000)


# ---------------------------------------------------------------- loaders


def _batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_train_loader_deterministic_and_covers_subset() -> None:
    ds = data.load_split("synthetic-target-b", True, params={"num_classes": 5, "train_images": 100})
    indices = data.subset_indices(ds.targets, 37, 1)
    loader = data.make_train_loader(ds, indices, batch_size=8, input_size=20, seed=3)
    first = _batches(loader)
    assert len(loader) == len(first) == 5
    assert all(x.shape[1:] == (3, 20, 20) and x.dtype == torch.float32 for x, _ in first)
    assert all(0.0 <= float(x.min()) and float(x.max()) <= 1.0 for x, _ in first)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(ds.targets[i] for i in indices)
    second_epoch = _batches(loader)
    assert not torch.equal(first[0][0], second_epoch[0][0])  # a fresh order and augmentation per pass
    again = _batches(data.make_train_loader(ds, indices, batch_size=8, input_size=20, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    other = _batches(data.make_train_loader(ds, indices, batch_size=8, input_size=20, seed=4))
    assert not torch.equal(first[0][0], other[0][0])


def test_train_loader_same_with_workers() -> None:
    ds = data.load_split("digits", True)
    indices = list(range(64))
    serial = _batches(data.make_train_loader(ds, indices, 16, 12, seed=9))
    parallel = _batches(data.make_train_loader(ds, indices, 16, 12, seed=9, num_workers=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, parallel, strict=True))


def test_eval_loader_is_plain_resize_in_order() -> None:
    ds = data.load_split("digits", False)
    indices = [5, 1, 7, 3]
    (x, y), = list(data.make_eval_loader(ds, indices, batch_size=10, input_size=8))
    assert x.shape == (4, 1, 8, 8)  # greyscale stays one channel
    assert torch.equal(x, ds.data[indices]) and y.tolist() == [ds.targets[i] for i in indices]
    (big, _), = list(data.make_eval_loader(ds, indices, batch_size=10, input_size=16))
    assert big.shape == (4, 1, 16, 16)


def test_augmentation_keeps_shape_and_range() -> None:
    x = torch.rand(6, 3, 16, 16)
    out = data.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, x)
    grey = data.augment_batch(torch.rand(6, 1, 16, 16), torch.Generator().manual_seed(0))
    assert grey.shape == (6, 1, 16, 16)


# ---------------------------------------------------------------- datasets on disk and errors


def test_missing_data_root_names_expected_path(tmp_path: Path) -> None:
    with pytest.raises(KernelInputError) as info:
        data.load_split("cifar10", True, str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-batches-py") in message
    with pytest.raises(KernelInputError, match=r"MNIST/raw"):
        data.load_split("mnist", False, str(tmp_path))
    with pytest.raises(KernelInputError, match="needs a data root"):
        data.load_split("svhn", True, None)
    with pytest.raises(KernelInputError, match="unknown dataset"):
        data.load_split("imagenet-22k", True, str(tmp_path))


def test_cifar101_and_imagefolder_from_disk(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "cifar10.1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "cifar10.1_v6_data.npy", rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "cifar10.1_v6_labels.npy", np.arange(20) % 10)
    ood = data.load_ood("cifar10", "cifar10.1", str(tmp_path))
    assert (len(ood), ood.channels, ood.num_classes) == (20, 3, 10) and ood[3][1] == 3
    with pytest.raises(KernelInputError, match="test set only"):
        data.load_split("cifar10.1", True, str(tmp_path))
    with pytest.raises(KernelInputError, match="cifar10 only"):
        data.load_ood("digits", "cifar10.1", str(tmp_path))

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (12 + i, 10, 3), dtype=np.uint8)).save(
                    tmp_path / "pets" / split / cls / f"{i}.png"
                )
    pets = data.load_split(f"imagefolder:{tmp_path / 'pets'}", True)
    assert (len(pets), pets.num_classes, pets.targets) == (4, 2, [0, 0, 1, 1])
    assert pets[1][0].shape == (3, 13, 10)
    (x, _), = list(data.make_eval_loader(pets, range(4), 4, 8))
    assert x.shape == (4, 3, 8, 8)
    with pytest.raises(KernelInputError, match=str(tmp_path / "nowhere" / "train")):
        data.load_split(f"imagefolder:{tmp_path / 'nowhere'}", True)


def test_ood_corruptions() -> None:
    test = data.load_split("digits", False)
    noise1, noise5 = data.load_ood("digits", "noise-1", None), data.load_ood("digits", "noise-5", None)
    assert noise1.data.shape == test.data.shape and noise1.targets == test.targets
    assert torch.equal(noise1.data, data.load_ood("digits", "noise-1", None).data)
    assert (noise1.data - test.data).abs().mean() < (noise5.data - test.data).abs().mean()
    for name in ("blur-3", "contrast-2"):
        shifted = data.load_ood("digits", name, None)
        assert shifted.data.shape == test.data.shape and not torch.equal(shifted.data, test.data)
    with pytest.raises(KernelInputError, match="noise-1..5"):
        data.load_ood("digits", "noise-6", None)
    with pytest.raises(KernelInputError, match="valid"):
        data.load_ood("digits", "snow-1", None)


# ---------------------------------------------------------------- learning end to end


def _train_and_test(train: data.ImageSet, test: data.ImageSet, input_size: int, seed: int = 0) -> float:
    """A minimal local loop: 3 epochs of Adam on 400 images, then top-1 on up to 1000 test images."""
    torch.manual_seed(seed)
    model = build_model("tiny_resnet", train.num_classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    indices = data.subset_indices(train.targets, 400, seed)
    loader = data.make_train_loader(train, indices, 16, input_size, seed, augment=False)
    model.train()
    for _ in range(3):
        for x, y in loader:
            optimiser.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.eval()
    correct = 0
    chosen = data.eval_indices(len(test), 1000)
    with torch.no_grad():
        for x, y in data.make_eval_loader(test, chosen, 250, input_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(chosen)


def test_digits_small_finetune_learns() -> None:
    accuracy = _train_and_test(data.load_split("digits", True), data.load_split("digits", False), 16)
    assert accuracy > 0.8


@pytest.mark.skipif(not MNIST_ROOT.is_dir(), reason="shared MNIST copy absent")
def test_mnist_via_torchvision_loader() -> None:
    train = data.load_split("mnist", True, str(MNIST_ROOT))
    test = data.load_split("mnist", False, str(MNIST_ROOT))
    assert (len(train), len(test), train.channels, train.num_classes) == (8000, 2000, 1, 10)
    assert np.bincount(train.targets).tolist() == [784, 882, 805, 828, 789, 679, 811, 882, 755, 785]
    assert np.bincount(test.targets).tolist() == [217, 245, 186, 204, 191, 184, 203, 188, 189, 193]
    image, _ = train[0]
    assert image.shape == (1, 28, 28) and set(torch.unique(image).tolist()) <= {0.0, 1.0}


@pytest.mark.skipif(not MNIST_ROOT.is_dir(), reason="shared MNIST copy absent")
def test_mnist_small_finetune_learns() -> None:
    train = data.load_split("mnist", True, str(MNIST_ROOT))
    test = data.load_split("mnist", False, str(MNIST_ROOT))
    lit = float((train.data > 0).float().sum(dim=(1, 2, 3)).mean())
    if lit < 30:  # real digits light ~100-150 of 784 pixels
        pytest.skip(f"shared MNIST copy is degenerate: {lit:.1f} lit pixels per image on average")
    assert _train_and_test(train, test, 16) > 0.8
