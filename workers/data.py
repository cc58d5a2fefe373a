"""Datasets from a data root, embedded datasets, subsets, loaders with augmentation, OOD sets.

Every dataset is an `ImageSet`: items are (float C×H×W tensor in [0,1] at native size, int label).
The Renofeation targets (bird, flower, dog, action, indoor) are read from their published layouts
and decoded on demand; their transforms are REFERENCE A's (RECIPES, chosen per spec by `augment`).
In-memory sets keep one uint8/float tensor so that loaders fetch and augment whole batches at once
(the same augmentation family as REFERENCE C, drawn per image, vectorised per batch).
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from workers.errors import KernelInputError

TORCHVISION_SETS = ("cifar10", "cifar100", "svhn", "fmnist", "kmnist", "mnist")
SYNTHETIC_SETS = ("synthetic-source", "synthetic-target-a", "synthetic-target-b")
EMBEDDED_SETS = ("digits", *SYNTHETIC_SETS)
# The Renofeation targets (REFERENCE A): dataset name -> folder under the data root.
RENOFEATION_SETS: dict[str, str] = {
    "bird": "CUB_200_2011",
    "flower": "Flower_102",
    "dog": "stanford_dog",
    "action": "stanford_40",
    "indoor": "MIT_67",
}
DATASET_NAMES = (*TORCHVISION_SETS, "cifar10.1", *RENOFEATION_SETS, *EMBEDDED_SETS)  # plus "imagefolder:<path>"
CORRUPTIONS = ("noise", "blur", "contrast")
# Train/test transform families: utrera (REFERENCE C), renofeation (REFERENCE A), none (resize only).
RECIPES = ("utrera", "renofeation", "none")


class ImageSet(Dataset):
    """A labelled image set; `data` (N×C×H×W, uint8 or float in [0,1]) when held in memory."""

    def __init__(
        self,
        name: str,
        targets: Sequence[int],
        num_classes: int,
        channels: int,
        data: Tensor | None = None,
        load_image: Callable[[int], Tensor] | None = None,
    ) -> None:
        if (data is None) == (load_image is None):
            raise ValueError("ImageSet needs exactly one of data / load_image")
        self.name = name
        self.targets: list[int] = [int(t) for t in targets]
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.data = data
        self._load_image = load_image

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.data is not None:
            return _to_float(self.data[index]), self.targets[index]
        assert self._load_image is not None
        return self._load_image(index), self.targets[index]

    def batch(self, indices: Sequence[int], input_size: int) -> Tensor:
        """Images `indices` as one float B×C×S×S batch, resized to input_size (REFERENCE C Resize)."""
        if self.data is not None:
            return _resize(_to_float(self.data[torch.as_tensor(list(indices), dtype=torch.long)]), input_size)
        return torch.stack([_resize(self[i][0], input_size) for i in indices])

    def __repr__(self) -> str:
        return f"ImageSet({self.name!r}, {len(self)} images, {self.num_classes} classes, {self.channels} ch)"


def _to_float(x: Tensor) -> Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(x, [size, size], antialias=True).clamp_(0, 1)


# ---------------------------------------------------------------- loading by name


def load_split(
    name: str,
    train: bool,
    data_root: str | None = None,
    download: bool = False,
    params: Mapping[str, Any] | None = None,
) -> ImageSet:
    """The train or test split of dataset `name`, loaded once per process."""
    params = params or {}
    root = os.path.abspath(os.path.expanduser(data_root)) if data_root else None
    if name in SYNTHETIC_SETS:
        num_classes = params.get("num_classes")
        train_images = params.get("train_images")
        return _load_synthetic(
            name,
            bool(train),
            int(num_classes) if num_classes is not None else None,
            int(train_images) if train_images is not None else None,
        )
    if name == "digits":
        return _load_digits(bool(train))
    return _load_from_disk(name, bool(train), root, bool(download))


@functools.lru_cache(maxsize=16)
def _load_from_disk(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    if name.startswith("imagefolder:"):
        return _load_imagefolder(name, train, root)
    if name == "cifar10.1":
        return _load_cifar101(train, root)
    if name in RENOFEATION_SETS:
        return _load_renofeation(name, train, root)
    if name not in TORCHVISION_SETS:
        known = ", ".join((*DATASET_NAMES, "imagefolder:<path>"))
        raise KernelInputError(f"unknown dataset {name!r} (known: {known})")
    return _load_torchvision(name, train, root, download)


def _expected_path(name: str, train: bool, root: str) -> Path:
    base = Path(root)
    return {
        "cifar10": base / "cifar-10-batches-py",
        "cifar100": base / "cifar-100-python",
        "svhn": base / ("train_32x32.mat" if train else "test_32x32.mat"),
        "mnist": base / "MNIST" / "raw",
        "fmnist": base / "FashionMNIST" / "raw",
        "kmnist": base / "KMNIST" / "raw",
    }[name]


def _load_torchvision(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    import torchvision.datasets as tvd

    if root is None:
        raise KernelInputError(f"dataset {name} needs a data root (--data-root or RTGRID_DATA)")
    expected = _expected_path(name, train, root)
    if not download and not expected.exists():
        raise KernelInputError(f"dataset {name} not found: expected {expected} (or run with --download)")
    split = "train" if train else "test"
    try:
        if name == "svhn":
            ds: Any = tvd.SVHN(root, split=split, download=download)  # train split only, no "extra"
        else:
            cls = {
                "cifar10": tvd.CIFAR10,
                "cifar100": tvd.CIFAR100,
                "mnist": tvd.MNIST,
                "fmnist": tvd.FashionMNIST,
                "kmnist": tvd.KMNIST,
            }[name]
            ds = cls(root, train=train, download=download)
    except (RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KernelInputError(f"dataset {name} not readable at {expected}: {reason}") from None
    if name in ("cifar10", "cifar100"):
        data = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        targets = list(ds.targets)
        num_classes = len(ds.classes)
    elif name == "svhn":
        data = torch.from_numpy(np.ascontiguousarray(ds.data))  # already N×3×32×32
        targets = [int(t) for t in ds.labels]
        num_classes = 10
    else:
        data = ds.data.unsqueeze(1).contiguous()  # N×1×28×28 uint8
        targets = ds.targets.tolist()
        num_classes = len(ds.classes)
    return ImageSet(name, targets, num_classes, data.shape[1], data=data)


def _load_cifar101(train: bool, root: str | None) -> ImageSet:
    if train:
        raise KernelInputError("dataset cifar10.1 is a test set only (use it as an OOD set of cifar10)")
    if root is None:
        raise KernelInputError("dataset cifar10.1 needs a data root (--data-root or RTGRID_DATA)")
    folder = Path(root) / "cifar10.1"
    images, labels = folder / "cifar10.1_v6_data.npy", folder / "cifar10.1_v6_labels.npy"
    if not images.exists() or not labels.exists():
        raise KernelInputError(f"dataset cifar10.1 not found: expected {images} and {labels.name} beside it")
    array = np.load(images, allow_pickle=False)
    data = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()
    targets = np.load(labels, allow_pickle=False).astype(np.int64).tolist()
    return ImageSet("cifar10.1", targets, 10, 3, data=data)


def _load_imagefolder(name: str, train: bool, root: str | None) -> ImageSet:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2 import functional as TF

    raw = name.split(":", 1)[1]
    base = Path(os.path.expanduser(raw))
    if not base.is_absolute() and root is not None and (Path(root) / base).exists():
        base = Path(root) / base
    folder = base / ("train" if train else "test")
    if not folder.is_dir():
        raise KernelInputError(f"dataset {name} not found: expected an ImageFolder at {folder}")
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise KernelInputError(f"dataset {name} not readable at {folder}: {exc}") from None
    paths = [path for path, _ in ds.samples]

    def load_image(index: int) -> Tensor:
        with Image.open(paths[index]) as img:
            return TF.pil_to_tensor(img.convert("RGB")).float().div_(255)

    return ImageSet(name, ds.targets, len(ds.classes), 3, load_image=load_image)


def _lazy_rgb_set(name: str, paths: Sequence[Path], targets: Sequence[int], num_classes: int) -> ImageSet:
    """Images read from disk on demand (native size, RGB in [0,1]); the first file is checked now."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    if paths and not paths[0].is_file():
        raise KernelInputError(f"dataset {name} images not found: expected {paths[0]}")
    files = [str(path) for path in paths]

    def load_image(index: int) -> Tensor:
        with Image.open(files[index]) as img:
            return TF.pil_to_tensor(img.convert("RGB")).float().div_(255)

    return ImageSet(name, targets, num_classes, 3, load_image=load_image)


def _need(name: str, path: Path) -> Path:
    if not path.exists():
        raise KernelInputError(f"dataset {name} not found: expected {path}")
    return path


def _id_pairs(name: str, path: Path) -> list[tuple[int, str]]:
    """'<int id> <value>' lines of a CUB metadata file."""
    pairs = []
    for line in _need(name, path).read_text().splitlines():
        if line.strip():
            key, value = line.split(maxsplit=1)
            pairs.append((int(key), value.strip()))
    return pairs


def _mat_strings(array: Any) -> list[str]:
    """A MATLAB cell array of strings (scipy.io.loadmat: nested object arrays) as Python strings."""
    out = []
    for item in np.asarray(array, dtype=object).ravel():
        while isinstance(item, np.ndarray):
            item = item.ravel()[0]
        out.append(str(item))
    return out


def _loadmat(name: str, path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(_need(name, path)))
    except (ValueError, OSError, TypeError) as exc:
        raise KernelInputError(f"dataset {name}: {path} is not a readable .mat file ({exc})") from None


def _cub(name: str, base: Path, train: bool) -> tuple[list[Path], list[int], int]:
    paths = dict(_id_pairs(name, base / "images.txt"))
    split = _id_pairs(name, base / "train_test_split.txt")
    labels = {i: int(v) - 1 for i, v in _id_pairs(name, base / "image_class_labels.txt")}  # 1-based in the file
    ids = [i for i, flag in split if int(flag) == int(train)]
    return [base / "images" / paths[i] for i in ids], [labels[i] for i in ids], max(labels.values()) + 1


def _flower(name: str, base: Path, train: bool) -> tuple[list[Path], list[int], int]:
    labels = _loadmat(name, base / "imagelabels.mat")["labels"].ravel().astype(np.int64)  # 1-based
    sets = _loadmat(name, base / "setid.mat")
    ids = np.concatenate([sets["trnid"].ravel(), sets["valid"].ravel()]) if train else sets["tstid"].ravel()
    ids = ids.astype(np.int64)  # 1-based image numbers
    return ([base / "jpg" / f"image_{i:05d}.jpg" for i in ids], [int(labels[i - 1]) - 1 for i in ids],
            int(labels.max()))


def _dog(name: str, base: Path, train: bool) -> tuple[list[Path], list[int], int]:
    lists = {split: _loadmat(name, base / f"{split}_list.mat") for split in ("train", "test")}
    chosen = lists["train" if train else "test"]
    labels = [int(v) - 1 for v in chosen["labels"].ravel()]  # 1-based in the file
    num_classes = max(int(m["labels"].max()) for m in lists.values())
    return [base / "Images" / f for f in _mat_strings(chosen["file_list"])], labels, num_classes


def _action(name: str, base: Path, train: bool) -> tuple[list[Path], list[int], int]:
    splits = base / "ImageSplits"
    lines = _need(name, splits / "actions.txt").read_text().splitlines()[1:]  # a header line first
    classes = [line.split("\t")[0].strip() for line in lines if line.strip()]
    paths, targets = [], []
    for label, cls in enumerate(classes):  # the label is the line order
        listing = _need(name, splits / f"{cls}_{'train' if train else 'test'}.txt")
        for line in listing.read_text().splitlines():
            if line.strip():
                paths.append(base / "JPEGImages" / line.strip())
                targets.append(label)
    return paths, targets, len(classes)


def _indoor(name: str, base: Path, train: bool) -> tuple[list[Path], list[int], int]:
    images = _need(name, base / "Images")
    # The reference labels by an unsorted glob of Images/* (filesystem order): sorted here, so reproducible.
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    index = {cls: i for i, cls in enumerate(classes)}
    listing = _need(name, base / ("TrainImages.txt" if train else "TestImages.txt"))
    paths, targets = [], []
    for line in listing.read_text().splitlines():
        entry = line.strip()
        if not entry:
            continue
        cls = entry.split("/")[-2] if "/" in entry else ""
        if cls not in index:
            raise KernelInputError(f"dataset {name}: {listing.name} names {entry!r}, not under a class in {images}")
        paths.append(images / entry)
        targets.append(index[cls])
    return paths, targets, len(classes)


_RENOFEATION_READERS = {"bird": _cub, "flower": _flower, "dog": _dog, "action": _action, "indoor": _indoor}


def _load_renofeation(name: str, train: bool, root: str | None) -> ImageSet:
    """The Renofeation target `name` in its published layout under <root>/<folder> (REFERENCE A)."""
    if root is None:
        raise KernelInputError(f"dataset {name} needs a data root (--data-root or RTGRID_DATA)")
    base = _need(name, Path(root) / RENOFEATION_SETS[name])
    paths, targets, num_classes = _RENOFEATION_READERS[name](name, base, train)
    if not paths:
        raise KernelInputError(f"dataset {name}: the {'train' if train else 'test'} split under {base} is empty")
    return _lazy_rgb_set(name, paths, targets, num_classes)


@functools.lru_cache(maxsize=4)
def _load_digits(train: bool) -> ImageSet:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 8×8, values 0..16
    index = np.arange(len(images))
    # Fixed stratified 70/30 split: the same for every process and caller.
    train_idx, test_idx = train_test_split(index, test_size=0.3, random_state=0, stratify=digits.target)
    chosen = train_idx if train else test_idx
    data = torch.from_numpy(images[chosen]).unsqueeze(1).contiguous()
    return ImageSet("digits", digits.target[chosen].tolist(), 10, 1, data=data)


# ---------------------------------------------------------------- synthetic images


def _sdf_shapes() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    # u, v: coordinates in units of the shape radius, centred on the shape; returns a bool mask.
    def disk(u: Tensor, v: Tensor) -> Tensor:
        return u * u + v * v <= 1.0

    def square(u: Tensor, v: Tensor) -> Tensor:
        return torch.maximum(u.abs(), v.abs()) <= 0.8

    def triangle(u: Tensor, v: Tensor) -> Tensor:
        return (v <= 0.75) & (v >= 1.75 * u.abs() - 1.0)

    def cross(u: Tensor, v: Tensor) -> Tensor:
        return (torch.minimum(u.abs(), v.abs()) <= 0.3) & (torch.maximum(u.abs(), v.abs()) <= 1.0)

    def ring(u: Tensor, v: Tensor) -> Tensor:
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)

    def diamond(u: Tensor, v: Tensor) -> Tensor:
        return u.abs() + v.abs() <= 1.05

    def ellipse(u: Tensor, v: Tensor) -> Tensor:
        return u * u + 4.0 * v * v <= 1.0

    def xshape(u: Tensor, v: Tensor) -> Tensor:
        return ((u.abs() - v.abs()).abs() <= 0.3) & (torch.maximum(u.abs(), v.abs()) <= 0.9)

    def halfdisk(u: Tensor, v: Tensor) -> Tensor:
        return (u * u + v * v <= 1.0) & (v >= -0.1)

    def frame(u: Tensor, v: Tensor) -> Tensor:
        m = torch.maximum(u.abs(), v.abs())
        return (m <= 0.9) & (m >= 0.5)

    return {f.__name__: f for f in (disk, square, triangle, cross, ring, diamond, ellipse, xshape, halfdisk, frame)}


SHAPES = _sdf_shapes()

# Textures in [0,1], in shape coordinates (they scale with the shape); phase is per image.
TEXTURES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "solid": lambda u, v, p: torch.ones_like(u),
    "hstripes": lambda u, v, p: (torch.sin(2 * math.pi * v + p) > 0).float(),
    "vstripes": lambda u, v, p: (torch.sin(2 * math.pi * u + p) > 0).float(),
    "checker": lambda u, v, p: ((torch.sin(2 * math.pi * u + p) * torch.sin(2 * math.pi * v + p)) > 0).float(),
    "gradient": lambda u, v, p: ((u + 1) / 2).clamp(0, 1),
    "radial": lambda u, v, p: 0.5 + 0.5 * torch.cos(2 * math.pi * torch.sqrt(u * u + v * v) / 0.8),
    "diagonal": lambda u, v, p: (torch.sin(2 * math.pi * (u + v) / 1.2 + p) > 0).float(),
}

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.3, 0.95),
    "yellow": (0.95, 0.9, 0.2),
    "magenta": (0.9, 0.2, 0.85),
    "cyan": (0.2, 0.9, 0.9),
    "orange": (1.0, 0.55, 0.1),
    "purple": (0.55, 0.2, 0.8),
    "white": (0.95, 0.95, 0.95),
    "pink": (1.0, 0.6, 0.7),
    "teal": (0.1, 0.55, 0.5),
    "lime": (0.6, 0.95, 0.2),
}

# Source: six shapes × four textures × six colours. Target A: new shapes, source textures and
# colours. Target B: source shapes, new textures and colours. Related, not identical, tasks.
SYNTHETIC_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "synthetic-source": (
        ("disk", "square", "triangle", "cross", "ring", "diamond"),
        ("solid", "hstripes", "vstripes", "checker"),
        ("red", "green", "blue", "yellow", "magenta", "cyan"),
    ),
    "synthetic-target-a": (
        ("ellipse", "xshape", "halfdisk", "frame"),
        ("solid", "hstripes", "checker"),
        ("red", "green", "blue", "yellow", "magenta", "cyan"),
    ),
    "synthetic-target-b": (
        ("disk", "square", "triangle", "cross", "ring", "diamond"),
        ("solid", "gradient", "radial", "diagonal"),
        ("orange", "purple", "white", "pink", "teal", "lime"),
    ),
}
SYNTHETIC_DEFAULT_CLASSES = {"synthetic-source": 20, "synthetic-target-a": 10, "synthetic-target-b": 10}
SYNTHETIC_DEFAULT_TRAIN = 2000
SYNTHETIC_DEFAULT_TEST = 1000
SYNTHETIC_SIZE = 32


def synthetic_classes(name: str, num_classes: int) -> list[tuple[str, str, str]]:
    """The (shape, texture, colour) of each class: a fixed, spread-out order; any prefix is valid."""
    shapes, textures, colours = SYNTHETIC_FAMILIES[name]
    combos = [(s, t, c) for s in shapes for t in textures for c in colours]
    if not 1 <= num_classes <= len(combos):
        raise KernelInputError(f"{name} has 1..{len(combos)} classes, got num_classes={num_classes}")
    random.Random(zlib.crc32(name.encode())).shuffle(combos)
    # Greedy max-min Hamming distance: each new class differs from all earlier ones in as many
    # attributes as possible, so a few classes are never "same shape and colour, other stripes".
    chosen = [combos.pop(0)]
    while len(chosen) < num_classes:
        best = max(
            range(len(combos)),
            key=lambda i: min(sum(a != b for a, b in zip(combos[i], c, strict=True)) for c in chosen),
        )
        chosen.append(combos.pop(best))
    return chosen


def generate_synthetic(
    name: str, num_classes: int, count: int, seed: int, size: int = SYNTHETIC_SIZE
) -> tuple[Tensor, list[int]]:
    """`count` images (count×3×size×size float in [0,1]) and balanced labels, deterministic in seed."""
    classes = synthetic_classes(name, num_classes)
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=g)]

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    # Per-image nuisance: position, scale, rotation, colour, background, noise.
    cx, cy = uniform(0.3, 0.7, count), uniform(0.3, 0.7, count)
    radius = uniform(0.2, 0.34, count)
    angle = uniform(-0.35, 0.35, count)  # about ±20°
    phase = uniform(0, 2 * math.pi, count)
    background = uniform(0.0, 0.35, count, 3)
    slope = uniform(-0.15, 0.15, count, 2)
    tint = uniform(0.75, 1.05, count)
    colour_noise = 0.06 * torch.randn(count, 3, generator=g)
    pixel_noise = 0.05 * torch.randn(count, 3, size, size, generator=g)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # size×size
    dx = (x[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (y[None] - cy[:, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy

    mask = torch.zeros(count, size, size)
    texture = torch.ones(count, size, size)
    colour = torch.zeros(count, 3)
    for label, (shape, tex, col) in enumerate(classes):
        sel = labels == label
        if not bool(sel.any()):
            continue
        mask[sel] = SHAPES[shape](u[sel], v[sel]).float()
        texture[sel] = TEXTURES[tex](u[sel], v[sel], phase[sel][:, None, None])
        colour[sel] = torch.tensor(COLOURS[col])
    colour = (colour * tint[:, None] + colour_noise).clamp(0, 1)

    bg = background[:, :, None, None] + slope[:, 0, None, None, None] * (x - 0.5) + slope[
        :, 1, None, None, None
    ] * (y - 0.5)
    fg = colour[:, :, None, None] * (0.3 + 0.7 * texture[:, None])
    images = torch.where(mask[:, None] > 0, fg, bg) + pixel_noise
    return images.clamp_(0, 1), labels.tolist()


@functools.lru_cache(maxsize=16)
def _load_synthetic(name: str, train: bool, num_classes: int | None, train_images: int | None) -> ImageSet:
    classes = num_classes if num_classes is not None else SYNTHETIC_DEFAULT_CLASSES[name]
    if train:
        count = train_images if train_images is not None else SYNTHETIC_DEFAULT_TRAIN
    else:
        count = max(SYNTHETIC_DEFAULT_TEST, 50 * classes)
    if count < classes:
        raise KernelInputError(f"{name}: train_images={count} is fewer than num_classes={classes}")
    # Train and test are independent draws from different seeds.
    seed = zlib.crc32(f"{name}:{'train' if train else 'test'}".encode())
    images, labels = generate_synthetic(name, classes, count, seed)
    return ImageSet(name, labels, classes, 3, data=images)


# ---------------------------------------------------------------- subsets


def subset_indices(targets: Sequence[int], subset_size: int | None, seed: int) -> list[int]:
    """Utrera's subset (REFERENCE C): shuffle with Python's random(seed), walk, keep ≥ 1 per class.

    Depends only on (targets, subset_size, seed), so every source and block setting of one seed
    sees the same images: comparisons are paired.
    """
    labels = [int(t) for t in targets]
    if subset_size is None:
        return list(range(len(labels)))
    num_classes = len(set(labels))
    if subset_size > len(labels):
        raise KernelInputError(f"subset_size={subset_size} is larger than the dataset ({len(labels)} images)")
    if subset_size < num_classes:
        raise KernelInputError(f"subset_size={subset_size} is smaller than the number of classes ({num_classes})")
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    covered: set[int] = set()
    budget = subset_size
    chosen: list[int] = []
    for index in order:
        if budget == 0:
            break
        label = labels[index]
        if budget > num_classes - len(covered) or label not in covered:
            chosen.append(index)
            covered.add(label)
            budget -= 1
    return chosen


def eval_indices(size: int, limit: int) -> list[int]:
    """A fixed (seed 0) random `limit` of `size` test images, sorted; all when limit is 0 or ≥ size.

    Smaller limits are subsets of larger ones.
    """
    if limit <= 0 or limit >= size:
        return list(range(size))
    order = list(range(size))
    random.Random(0).shuffle(order)
    return sorted(order[:limit])


# ---------------------------------------------------------------- augmentation and loaders


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """REFERENCE C train transform after the resize, drawn per image: RandomCrop(pad 4),
    horizontal flip, ColorJitter(0.25, 0.25, 0.25) in a random order, RandomRotation(2°)."""
    b, c, h, w = x.shape

    # RandomCrop(size, padding=4): zero padding, per-image offset in [0, 8].
    padded = F.pad(x, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (b,), generator=generator)
    ox = torch.randint(0, 9, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    x = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)

    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)

    factors = 0.75 + 0.5 * torch.rand(3, b, 1, 1, 1, generator=generator)
    for op in torch.randperm(3, generator=generator).tolist():
        f = factors[op]
        if op == 0:  # brightness
            x = (x * f).clamp(0, 1)
        elif op == 1:  # contrast: blend with the mean grey level
            grey = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (f * x + (1 - f) * grey).clamp(0, 1)
        elif c == 3:  # saturation (a no-op on greyscale, as in torchvision)
            x = (f * x + (1 - f) * _grey(x)).clamp(0, 1)

    # RandomRotation(2): nearest interpolation, zero fill, about the centre.
    theta = (torch.rand(b, generator=generator) * 4 - 2) * math.pi / 180
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    matrix = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(matrix, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def transform_recipe(dataset: str, requested: str | None = None) -> str:
    """The spec's `augment` recipe, else the dataset's paper's: Renofeation's for its five targets
    (variable-size photos), Utrera's for everything else."""
    recipe = requested or ("renofeation" if dataset in RENOFEATION_SETS else "utrera")
    if recipe not in RECIPES:
        raise KernelInputError(f"unknown augment {recipe!r} (known: {', '.join(RECIPES)})")
    return recipe


def _random_resized_crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3), drawn from `generator`."""
    area = height * width
    log_low, log_high = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (0.08 + 0.92 * draws[0])
        ratio = math.exp(log_low + (log_high - log_low) * draws[1])
        w = int(round(math.sqrt(target_area * ratio)))
        h = int(round(math.sqrt(target_area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop, as torchvision
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        h, w = height, int(round(height * (4 / 3)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def renofeation_batch(ds: ImageSet, indices: Sequence[int], size: int, generator: torch.Generator | None) -> Tensor:
    """REFERENCE A transforms per image at native size. Train (a generator): RandomResizedCrop(size) +
    horizontal flip. Test (None): Resize(shorter side to size·256/224) -> CenterCrop(size)."""
    from torchvision.transforms.v2 import functional as TF

    images = []
    for index in indices:
        image = ds[index][0]
        if generator is None:
            image = TF.center_crop(TF.resize(image, [round(size * 256 / 224)], antialias=True), [size, size])
        else:
            top, left, h, w = _random_resized_crop_box(image.shape[-2], image.shape[-1], generator)
            image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            if float(torch.rand((), generator=generator)) < 0.5:
                image = image.flip(-1)
        images.append(image.clamp(0, 1))
    return torch.stack(images)


class _BatchPlan(Sampler):
    """Yields (augmentation seed, batch indices). Seeds come from the sampler's generator in the
    main process, so batches and augmentation are reproducible for any num_workers."""

    def __init__(self, indices: Sequence[int], batch_size: int, shuffle: bool, seed: int | None) -> None:
        self.indices = list(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[int | None, list[int]]]:
        if self.shuffle:
            assert self.generator is not None
            order = torch.randperm(len(self.indices), generator=self.generator).tolist()
        else:
            order = list(range(len(self.indices)))
        for start in range(0, len(order), self.batch_size):
            batch = [self.indices[i] for i in order[start : start + self.batch_size]]
            aug_seed = (
                int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
                if self.generator is not None
                else None
            )
            yield aug_seed, batch


class _BatchFetcher(Dataset):
    """Turns a planned batch into (images B×C×S×S in [0,1], labels) with optional augmentation."""

    def __init__(self, source: ImageSet, input_size: int, augment: bool, recipe: str = "utrera") -> None:
        if recipe not in RECIPES:
            raise KernelInputError(f"unknown augment {recipe!r} (known: {', '.join(RECIPES)})")
        self.source = source
        self.input_size = input_size
        self.augment = augment
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int | None, list[int]]) -> tuple[Tensor, Tensor]:
        aug_seed, indices = item
        generator = torch.Generator().manual_seed(aug_seed) if self.augment and aug_seed is not None else None
        if self.recipe == "renofeation":
            images = renofeation_batch(self.source, indices, self.input_size, generator)
        else:
            images = self.source.batch(indices, self.input_size)  # Resize (and CenterCrop: a no-op after it)
            if generator is not None and self.recipe == "utrera":
                images = augment_batch(images, generator)
        labels = torch.tensor([self.source.targets[i] for i in indices], dtype=torch.long)
        return images.contiguous(), labels


def make_train_loader(
    ds: ImageSet,
    indices: Sequence[int],
    batch_size: int,
    input_size: int,
    seed: int,
    augment: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    recipe: str = "utrera",
) -> DataLoader:
    """Shuffled batches of `indices` (a fresh permutation per pass), deterministic given seed.

    Each iteration over the loader is one epoch; iterating again continues the same random stream,
    so an endlessly cycled loader is reproducible too (`loader.sampler.generator` holds the state).
    recipe: the transform family (RECIPES); augment=False gives its test transform.
    """
    plan = _BatchPlan(indices, batch_size, shuffle=True, seed=seed)
    return DataLoader(
        _BatchFetcher(ds, input_size, augment, recipe),
        sampler=plan,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def make_eval_loader(
    ds: ImageSet,
    indices: Sequence[int],
    batch_size: int,
    input_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    recipe: str = "utrera",
) -> DataLoader:
    """Batches of `indices` in order with the recipe's test transform: Resize(input_size) (utrera,
    none) or Resize(input_size·256/224) → CenterCrop(input_size) (renofeation)."""
    plan = _BatchPlan(indices, batch_size, shuffle=False, seed=None)
    return DataLoader(
        _BatchFetcher(ds, input_size, augment=False, recipe=recipe),
        sampler=plan,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


# ---------------------------------------------------------------- OOD sets

_SEVERITY = {
    "noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # Gaussian noise std (CIFAR-10-C levels)
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # Gaussian blur sigma in pixels (CIFAR-10-C levels)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor (CIFAR-10-C levels)
}
_OOD_PATTERN = re.compile(r"^(noise|blur|contrast)-([1-5])$")
OOD_CHOICES = "cifar10.1 (cifar10 only), noise-1..5, blur-1..5, contrast-1..5"


def load_ood(
    dataset: str,
    ood: str,
    data_root: str | None = None,
    download: bool = False,
    params: Mapping[str, Any] | None = None,
) -> ImageSet:
    """The OOD evaluation set `ood` of `dataset` (params: the synthetic sizes of the test split)."""
    if ood == "cifar10.1":
        if dataset != "cifar10":
            raise KernelInputError(f"OOD set cifar10.1 applies to cifar10 only, not {dataset!r}")
        return load_split("cifar10.1", False, data_root)
    match = _OOD_PATTERN.match(ood or "")
    if not match:
        raise KernelInputError(f"unknown OOD set {ood!r} for {dataset!r} (valid: {OOD_CHOICES})")
    test = load_split(dataset, False, data_root, download, params)
    return _corrupt(test, match.group(1), int(match.group(2)))


@functools.lru_cache(maxsize=8)
def _corrupt_cached(test: ImageSet, kind: str, severity: int) -> ImageSet:
    return _corrupt_uncached(test, kind, severity)


def _corrupt(test: ImageSet, kind: str, severity: int) -> ImageSet:
    return _corrupt_cached(test, kind, severity)  # ImageSets hash by identity: cached per loaded split


def _corruption(x: Tensor, kind: str, level: float, generator: torch.Generator) -> Tensor:
    """One corruption of a batch of [0,1] images at one severity level; clamped to [0,1]."""
    from torchvision.transforms.v2 import functional as TF

    if kind == "noise":
        x = x + level * torch.randn(x.shape, generator=generator)
    elif kind == "blur":
        radius = max(1, math.ceil(3 * level))
        x = TF.gaussian_blur(x, [2 * radius + 1] * 2, [level, level])
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * level + mean
    return x.clamp_(0, 1)


def _corrupt_uncached(test: ImageSet, kind: str, severity: int) -> ImageSet:
    level = _SEVERITY[kind][severity - 1]
    base_seed = 1000 * CORRUPTIONS.index(kind) + severity
    name = f"{test.name}/{kind}-{severity}"
    if test.data is None:
        # Images of any size read on demand: corrupted one at a time, at native size, with noise
        # drawn from (corruption, index), so any image comes out the same whatever the order.
        def load_image(index: int) -> Tensor:
            generator = torch.Generator().manual_seed(base_seed * 1_000_003 + index)
            return _corruption(test[index][0].unsqueeze(0), kind, level, generator)[0]

        return ImageSet(name, test.targets, test.num_classes, test.channels, load_image=load_image)
    generator = torch.Generator().manual_seed(base_seed)
    chunks = []
    for start in range(0, len(test), 1024):
        x = _corruption(_to_float(test.data[start : start + 1024]), kind, level, generator)
        if test.data.dtype == torch.uint8:
            x = x.mul_(255).round_().to(torch.uint8)  # stored like CIFAR-10-C images
        chunks.append(x)
    return ImageSet(name, test.targets, test.num_classes, test.channels, data=torch.cat(chunks))
