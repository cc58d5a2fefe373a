"""The Renofeation targets (REFERENCE A) read from their published layouts, decoded on demand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from workers.data.imageset import ImageSet
from workers.errors import KernelInputError

# The Renofeation targets (REFERENCE A): dataset name -> folder under the data root.
RENOFEATION_SETS: dict[str, str] = {
    "bird": "CUB_200_2011",
    "flower": "Flower_102",
    "dog": "stanford_dog",
    "action": "stanford_40",
    "indoor": "MIT_67",
}


def _lazy_rgb_set(name: str, paths: Sequence[Path], targets: Sequence[int], num_classes: int) -> ImageSet:
    """Images read from disk on demand (native size, RGB in [0,1]); the first file is checked now."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    if paths and not paths[0].is_file():
        raise KernelInputError(f"dataset {name} images not found: expected {paths[0]}")
    files = [str(path) for path in paths]

    def load_image(index: int) -> Tensor:
        with Image.open(files[index]) as img:
            image: Tensor = TF.pil_to_tensor(img.convert("RGB")).float().div_(255)
            return image

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
        contents: dict[str, Any] = loadmat(str(_need(name, path)))
        return contents
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


def load_renofeation(name: str, train: bool, root: str | None) -> ImageSet:
    """The Renofeation target `name` in its published layout under <root>/<folder> (REFERENCE A)."""
    if root is None:
        raise KernelInputError(f"dataset {name} needs a data root (--data-root or RTGRID_DATA)")
    base = _need(name, Path(root) / RENOFEATION_SETS[name])
    paths, targets, num_classes = _RENOFEATION_READERS[name](name, base, train)
    if not paths:
        raise KernelInputError(f"dataset {name}: the {'train' if train else 'test'} split under {base} is empty")
    return _lazy_rgb_set(name, paths, targets, num_classes)
