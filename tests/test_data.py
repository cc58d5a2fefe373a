"""workers.data: subsets, embedded data, loaders, disk datasets, OOD sets (real torch, small)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers import data
from workers.context import KernelContext
from workers.errors import KernelInputError
from workers.kernels import run_source, run_transfer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("RTGRID_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")
MNIST_ROOT = SHARED_DATASETS / "mnist-binarized-10k"


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


def _photo(path: Path, value: int, size: tuple[int, int]) -> None:
    """A flat-grey JPEG (or PNG) whose grey level `value` encodes the label it belongs to."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def _grey_level(image: torch.Tensor) -> int:
    return round(float(image.mean()) * 255)


def _cub_tree(root: Path) -> tuple[list[int], list[int], int]:
    base = root / "CUB_200_2011"
    labels, is_train = [1, 2, 3, 1, 2, 3, 2], [1, 0, 1, 1, 0, 0, 1]  # 1-based classes, 1 = train
    lines = []
    for i, (label, _) in enumerate(zip(labels, is_train, strict=True), start=1):
        lines.append(f"{i} {label:03d}.Class_{label}/Bird_{i}.jpg")
        _photo(base / "images" / f"{label:03d}.Class_{label}" / f"Bird_{i}.jpg", 40 * label, (20 + i, 24))
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    (base / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, t in enumerate(is_train, start=1)))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(labels, start=1)))
    return [0, 2, 0, 1], [1, 1, 2], 3


def _flower_tree(root: Path) -> tuple[list[int], list[int], int]:
    from scipy.io import savemat

    base = root / "Flower_102"
    labels = [1, 2, 3, 1, 2, 3, 1, 2]  # image_00001 .. image_00008, 1-based classes
    for i, label in enumerate(labels, start=1):
        _photo(base / "jpg" / f"image_{i:05d}.jpg", 40 * label, (18, 26 + i))
    savemat(str(base / "imagelabels.mat"), {"labels": np.array([labels])})
    savemat(str(base / "setid.mat"), {"trnid": np.array([[2, 1]]), "valid": np.array([[7, 3]]),
                                      "tstid": np.array([[4, 5, 6, 8]])})
    return [1, 0, 0, 2], [0, 1, 2, 1], 3  # train = trnid then valid, in file order


def _dog_tree(root: Path) -> tuple[list[int], list[int], int]:
    from scipy.io import savemat

    base = root / "stanford_dog"
    splits = {"train": [("n01-beagle/b1.jpg", 1), ("n02-pug/p1.jpg", 2), ("n01-beagle/b2.jpg", 1)],
              "test": [("n02-pug/p2.jpg", 2), ("n01-beagle/b3.jpg", 1)]}
    for split, items in splits.items():
        for k, (name, label) in enumerate(items):
            _photo(base / "Images" / name, 40 * label, (22, 20 + k))
        cells = np.empty((len(items), 1), dtype=object)  # a MATLAB cell array, as in the real files
        for k, (name, _) in enumerate(items):
            cells[k, 0] = np.array([name])
        savemat(str(base / f"{split}_list.mat"),
                {"file_list": cells, "labels": np.array([[label] for _, label in items])})
    return [0, 1, 0], [1, 0], 2


def _action_tree(root: Path) -> tuple[list[int], list[int], int]:
    base = root / "stanford_40"
    # Not alphabetical: the label is the line order of actions.txt.
    (base / "ImageSplits").mkdir(parents=True)
    (base / "ImageSplits" / "actions.txt").write_text("action_name\tnumber_of_images\nwriting\t3\napplauding\t2\n")
    files = {("writing", "train"): ["writing_001.jpg", "writing_002.jpg"], ("writing", "test"): ["writing_003.jpg"],
             ("applauding", "train"): ["applauding_001.jpg"], ("applauding", "test"): ["applauding_002.jpg"]}
    for (cls, split), names in files.items():
        (base / "ImageSplits" / f"{cls}_{split}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            _photo(base / "JPEGImages" / name, 40 * (1 + ["writing", "applauding"].index(cls)), (30, 22 + k))
    return [0, 0, 1], [0, 1], 2


def _indoor_tree(root: Path) -> tuple[list[int], list[int], int]:
    base = root / "MIT_67"
    classes = ["airport", "bar", "kitchen"]  # sorted: the label order, whatever the filesystem says
    train, test = ["kitchen/k1.jpg", "airport/a1.jpg", "bar/b1.jpg", "kitchen/k2.jpg"], ["bar/b2.jpg", "airport/a2.jpg"]
    for k, entry in enumerate(train + test):
        _photo(base / "Images" / entry, 40 * (1 + classes.index(entry.split("/")[0])), (21, 27 + k))
    (base / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (base / "TestImages.txt").write_text("\n".join(test) + "\n")
    return [2, 0, 1, 2], [1, 0], 3


RENO_TREES = {"bird": _cub_tree, "flower": _flower_tree, "dog": _dog_tree, "action": _action_tree,
              "indoor": _indoor_tree}
# (dataset, metadata file whose absence must be named)
RENO_KEY_FILES = [("bird", "CUB_200_2011/images.txt"), ("flower", "Flower_102/setid.mat"),
                  ("dog", "stanford_dog/test_list.mat"), ("action", "stanford_40/ImageSplits/actions.txt"),
                  ("indoor", "MIT_67/TrainImages.txt")]


@pytest.mark.parametrize("name", list(RENO_TREES))
def test_renofeation_layouts_load_with_their_labels(tmp_path: Path, name: str) -> None:
    train_labels, test_labels, num_classes = RENO_TREES[name](tmp_path)
    train, test = data.load_split(name, True, str(tmp_path)), data.load_split(name, False, str(tmp_path))
    assert (train.targets, test.targets) == (train_labels, test_labels)
    assert train.num_classes == test.num_classes == num_classes and train.channels == 3
    for ds in (train, test):  # every image is the file of its label (its grey level encodes the label)
        for index, label in enumerate(ds.targets):
            image = ds[index][0]
            assert image.shape[0] == 3 and abs(_grey_level(image) - 40 * (label + 1)) <= 3
    sizes = {tuple(train[i][0].shape) for i in range(len(train))} | {tuple(test[i][0].shape) for i in range(len(test))}
    (x, y), = list(data.make_eval_loader(test, range(len(test)), 8, 16, recipe="renofeation"))
    assert x.shape == (len(test), 3, 16, 16) and y.tolist() == test_labels
    assert len(sizes) > 1  # native sizes vary; the transforms make them square


@pytest.mark.parametrize(("name", "key_file"), RENO_KEY_FILES)
def test_renofeation_missing_files_name_the_expected_path(tmp_path: Path, name: str, key_file: str) -> None:
    RENO_TREES[name](tmp_path)
    (tmp_path / key_file).unlink()
    with pytest.raises(KernelInputError) as info:
        data.load_split(name, True, str(tmp_path))
    assert "\n" not in str(info.value) and str(tmp_path / key_file) in str(info.value)
    with pytest.raises(KernelInputError, match=str(tmp_path / "nowhere" / data.RENOFEATION_SETS[name])):
        data.load_split(name, False, str(tmp_path / "nowhere"))
    with pytest.raises(KernelInputError, match="needs a data root"):
        data.load_split(name, False, None)


def test_renofeation_transforms(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    _flower_tree(tmp_path)
    test = data.load_split("flower", False, str(tmp_path))
    (x, _), = list(data.make_eval_loader(test, [0, 1], 2, 14, recipe="renofeation"))
    # REFERENCE A test transform: Resize(256) -> CenterCrop(224), scaled to the input size
    reference = v2.Compose([v2.Resize(round(14 * 256 / 224), antialias=True), v2.CenterCrop(14)])
    assert torch.allclose(x, torch.stack([reference(test[i][0]) for i in (0, 1)]).clamp(0, 1), atol=1e-6)

    train = data.load_split("flower", True, str(tmp_path))
    batches = [list(data.make_train_loader(train, range(4), 4, 14, seed=5, recipe="renofeation"))[0][0]
               for _ in range(2)]
    assert batches[0].shape == (4, 3, 14, 14) and torch.equal(batches[0], batches[1])  # seeded
    assert 0 <= float(batches[0].min()) and float(batches[0].max()) <= 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):  # RandomResizedCrop boxes: inside the image, 8-100% of its area, ratio 3/4..4/3
        top, left, h, w = data.random_resized_crop_box(30, 50, generator)
        assert 0 <= top <= 30 - h and 0 <= left <= 50 - w
        assert 0.07 <= h * w / 1500 <= 1.0 and 0.7 <= w / h <= 1.4

    assert data.transform_recipe("flower") == "renofeation" and data.transform_recipe("cifar10") == "utrera"
    assert data.transform_recipe("flower", "utrera") == "utrera"
    with pytest.raises(KernelInputError, match="unknown augment"):
        data.transform_recipe("cifar10", "autoaugment")


def test_corruption_of_images_read_from_disk_is_lazy_and_deterministic(tmp_path: Path) -> None:
    _indoor_tree(tmp_path)
    test = data.load_split("indoor", False, str(tmp_path))
    noisy = data.load_ood("indoor", "noise-3", str(tmp_path))
    assert noisy.data is None and noisy.targets == test.targets and len(noisy) == len(test)
    second_first = [noisy[1][0], noisy[0][0]]  # any order gives the same images
    assert torch.equal(second_first[1], data.load_ood("indoor", "noise-3", str(tmp_path))[0][0])
    for index, image in ((1, second_first[0]), (0, second_first[1])):
        clean = test[index][0]
        assert image.shape == clean.shape and not torch.equal(image, clean)
        assert 0.02 < float((image - clean).std()) < 0.2  # Gaussian noise at severity 3 (std 0.08)
    blurred = data.load_ood("indoor", "blur-2", str(tmp_path))[0][0]
    assert blurred.shape == test[0][0].shape


def test_ood_corruptions() -> None:
    test = data.load_split("digits", False)
    noise1, noise5 = data.load_ood("digits", "noise-1", None), data.load_ood("digits", "noise-5", None)
    assert noise1.data.shape == test.data.shape and noise1.targets == test.targets
    assert torch.equal(noise1.data, data.load_ood("digits", "noise-1", None).data)
    assert (noise1.data - test.data).abs().mean() < (noise5.data - test.data).abs().mean()
    for name in ("blur-3", "contrast-2", "intensity-3"):
        shifted = data.load_ood("digits", name, None)
        assert shifted.data.shape == test.data.shape and not torch.equal(shifted.data, test.data)
    # intensity: an offset lifts the black background, a gain dims the strokes
    intensity = data.load_ood("digits", "intensity-5", None).data
    assert intensity.amin(dim=(1, 2, 3)).mean() > test.data.amin(dim=(1, 2, 3)).mean() + 0.1
    # recolour permutes colour channels: nothing to permute in grey digits, a change in RGB shapes
    assert torch.equal(data.load_ood("digits", "recolour-5", None).data, test.data)
    shapes = data.load_split("shape-target", False)
    recoloured = data.load_ood("shape-target", "recolour-5", None)
    assert not torch.equal(recoloured.data, shapes.data)
    assert torch.allclose(recoloured.data.sum(dim=1), shapes.data.sum(dim=1), atol=1e-5)  # channels moved only
    with pytest.raises(KernelInputError, match="noise-1..5"):
        data.load_ood("digits", "noise-6", None)
    with pytest.raises(KernelInputError,
                       match="unknown OOD set 'snow-1'.*known: cifar10.1, shape-conflict, noise-1..5"):
        data.load_ood("digits", "snow-1", None)


def test_shortcut_source_carries_its_class_pattern_and_the_conflict_set_another() -> None:
    from workers.data.study_sets import generate_shortcut_source, shortcut_patterns

    patterns = shortcut_patterns(10)
    clean, labels = generate_shortcut_source(300, seed=5, amplitude=0.0)
    marked, same = generate_shortcut_source(300, seed=5, amplitude=0.04)
    conflict, conflict_labels = generate_shortcut_source(300, seed=5, amplitude=0.04, conflict=True)
    assert labels == same == conflict_labels
    inside = (clean > 0.05) & (clean < 0.95)  # away from the clamp

    def keyed_class(images: torch.Tensor) -> list[int]:
        diff = torch.where(inside, images - clean, torch.zeros(()))
        return (torch.einsum("nchw,kchw->nk", diff, patterns)).argmax(dim=1).tolist()

    assert keyed_class(marked) == labels  # every training image: its own class's pattern (fraction 1)
    assert all(k != y for k, y in zip(keyed_class(conflict), labels, strict=True))  # conflicts: another class's
    none, _ = generate_shortcut_source(300, seed=5, amplitude=0.04, fraction=0.0)
    assert torch.equal(none, clean)
    with pytest.raises(KernelInputError, match="fraction in"):
        generate_shortcut_source(10, seed=0, fraction=1.5)


def test_the_study_adversaries_can_erase_the_study_shortcut() -> None:
    """The study's sources carry a pattern that each adversarial source's training budget can remove from every
    image (else the robust sources could keep the shortcut), at the strongest such amplitude (0.01 steps)."""
    from orchestrator.plan.grids import study
    from workers.data.study_sets import generate_shortcut_source

    sources = {s.method: s for s in study().specs if s.kind == "source"}
    amplitude = sources["natural"].params["shortcut_amplitude"]
    assert {s.params["shortcut_amplitude"] for s in sources.values()} == {amplitude}
    clean, _ = generate_shortcut_source(200, seed=3, amplitude=0.0)
    marked, _ = generate_shortcut_source(200, seed=3, amplitude=amplitude)
    stronger, _ = generate_shortcut_source(200, seed=3, amplitude=amplitude + 0.01)
    budgets = [(s.params["adv_norm"], s.params["adv_eps"]) for s in sources.values() if "adv_norm" in s.params]
    assert sorted(norm for norm, _ in budgets) == ["l2", "linf"]

    def size(images: torch.Tensor, norm: str) -> torch.Tensor:
        flat = (images - clean).flatten(1)
        return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)

    for norm, eps in budgets:
        assert float(size(marked, norm).max()) <= eps + 1e-6, norm
    assert any(float(size(stronger, norm).max()) > eps for norm, eps in budgets)


# ---------------------------------------------------------------- learning end to end


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A natural tiny_resnet from the real source kernel on synthetic data (a couple of seconds)."""
    spec = {"kind": "source", "arch": "tiny_resnet", "dataset": "synthetic-source", "method": "natural", "seed": 0,
            "epochs": 2, "params": {"input_size": 16, "batch_size": 64, "lr": 0.05, "train_images": 1000,
                                    "eval_images": 100, "robust_eval_steps": 0}}
    ctx = KernelContext(artifacts_dir=str(tmp_path_factory.mktemp("source")))
    return str(run_source(spec, ctx, lambda epoch, metrics: None)["checkpoint_path"])


def _finetune_accuracy(dataset: str, source: str, data_root: Path | None, tmp_path: Path) -> float:
    """The transfer kernel's finetune: all blocks, 3 epochs on 400 training images, test top-1."""
    params: dict[str, Any] = {"input_size": 16, "batch_size": 16, "lr": 0.1, "schedule": "cosine",
                              "head_init": "default", "eval_images": 1000,
                              # Utrera's pad-4 crop and flips are too strong for 8-28 px digits in 3 epochs
                              "augment": "none"}
    spec = {"kind": "transfer", "arch": "tiny_resnet", "dataset": dataset, "method": "finetune", "seed": 0,
            "epochs": 3, "source": f"file:{source}", "ood": None, "blocks": None, "subset_size": 400,
            "params": params}
    ctx = KernelContext(data_root=str(data_root) if data_root else None, artifacts_dir=str(tmp_path),
                        source_path=source)
    return float(run_transfer(spec, ctx, lambda epoch, metrics: None)["test_acc"])


def test_transfer_on_a_renofeation_layout_reports_ood_and_asr(tiny_source: str, tmp_path: Path) -> None:
    _flower_tree(tmp_path / "data")
    spec = {"kind": "transfer", "arch": "tiny_resnet", "dataset": "flower", "method": "finetune", "seed": 0,
            "epochs": 2, "source": f"file:{tiny_source}", "ood": "noise-3", "blocks": 3, "subset_size": None,
            "params": {"input_size": 16, "batch_size": 2, "lr": 0.01, "head_init": "default",
                       "attack_steps": 2, "attack_images": 4}}
    reports: list[tuple[int, dict[str, float]]] = []
    ctx = KernelContext(data_root=str(tmp_path / "data"), artifacts_dir=str(tmp_path / "art"), source_path=tiny_source)
    final = run_transfer(spec, ctx, lambda epoch, metrics: reports.append((epoch, metrics)))
    assert [epoch for epoch, _ in reports] == [1, 2] and all("ood_acc" in m for _, m in reports)
    assert final["ood_acc"] is not None and final["clean_acc"] is not None
    [artifact] = final["artifacts"]
    assert artifact["meta"]["params"]["transform"] == "renofeation"  # the attack saw the Renofeation test transform


def test_digits_small_finetune_learns(tiny_source: str, tmp_path: Path) -> None:
    assert _finetune_accuracy("digits", tiny_source, None, tmp_path) > 0.8


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
def test_mnist_small_finetune_learns(tiny_source: str, tmp_path: Path) -> None:
    train = data.load_split("mnist", True, str(MNIST_ROOT))
    lit = float((train.data > 0).float().sum(dim=(1, 2, 3)).mean())
    if lit < 30:  # real digits light ~100-150 of 784 pixels
        pytest.skip(f"shared MNIST copy is degenerate: {lit:.1f} lit pixels per image on average")
    assert _finetune_accuracy("mnist", tiny_source, MNIST_ROOT, tmp_path) > 0.8
