"""Datasets read from a data root: the torchvision sets, CIFAR-10.1 and ImageFolder trees."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workers.data.imageset import ImageSet
from workers.errors import KernelInputError

# torchvision sets: name -> where its split lies under the data root (the registry's torchvision loader
# reads each; the catalog's TORCHVISION_DATASETS names them).
TORCHVISION_LAYOUT: dict[str, Callable[[Path, bool], Path]] = {
    "cifar10": lambda base, train: base / "cifar-10-batches-py",
    "cifar100": lambda base, train: base / "cifar-100-python",
    "svhn": lambda base, train: base / ("train_32x32.mat" if train else "test_32x32.mat"),
    "mnist": lambda base, train: base / "MNIST" / "raw",
    "fmnist": lambda base, train: base / "FashionMNIST" / "raw",
    "kmnist": lambda base, train: base / "KMNIST" / "raw",
}


def _expected_path(name: str, train: bool, root: str) -> Path:
    return TORCHVISION_LAYOUT[name](Path(root), train)


def load_torchvision(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    """A torchvision set (TORCHVISION_LAYOUT) held in memory as uint8."""
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


def load_cifar101(train: bool, root: str | None) -> ImageSet:
    """CIFAR-10.1 v6 (a test set only) from <root>/cifar10.1."""
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


def load_imagefolder(name: str, train: bool, root: str | None) -> ImageSet:
    """imagefolder:<path>: the train/ or test/ ImageFolder under <path>, decoded on demand."""
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
            image: Tensor = TF.pil_to_tensor(img.convert("RGB")).float().div_(255)
            return image

    return ImageSet(name, ds.targets, len(ds.classes), 3, load_image=load_image)
