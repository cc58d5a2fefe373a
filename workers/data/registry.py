"""Datasets by name: the known names, loading a split by name, and each dataset's transform recipe."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

from workers.data.disk import TORCHVISION_SETS, load_cifar101, load_imagefolder, load_torchvision
from workers.data.embedded import EMBEDDED_SETS, SYNTHETIC_SETS, load_digits, load_synthetic
from workers.data.imageset import ImageSet
from workers.data.renofeation import RENOFEATION_SETS, load_renofeation
from workers.data.transforms import RECIPES
from workers.errors import KernelInputError

DATASET_NAMES = (*TORCHVISION_SETS, "cifar10.1", *RENOFEATION_SETS, *EMBEDDED_SETS)  # plus "imagefolder:<path>"


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
        return load_synthetic(
            name,
            bool(train),
            int(num_classes) if num_classes is not None else None,
            int(train_images) if train_images is not None else None,
        )
    if name == "digits":
        return load_digits(bool(train))
    return _load_from_disk(name, bool(train), root, bool(download))


@functools.lru_cache(maxsize=16)
def _load_from_disk(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    if name.startswith("imagefolder:"):
        return load_imagefolder(name, train, root)
    if name == "cifar10.1":
        return load_cifar101(train, root)
    if name in RENOFEATION_SETS:
        return load_renofeation(name, train, root)
    if name not in TORCHVISION_SETS:
        known = ", ".join((*DATASET_NAMES, "imagefolder:<path>"))
        raise KernelInputError(f"unknown dataset {name!r} (known: {known})")
    return load_torchvision(name, train, root, download)


def transform_recipe(dataset: str, requested: str | None = None) -> str:
    """The spec's `augment` recipe, else the dataset's paper's: Renofeation's for its five targets
    (variable-size photos), Utrera's for everything else."""
    recipe = requested or ("renofeation" if dataset in RENOFEATION_SETS else "utrera")
    if recipe not in RECIPES:
        raise KernelInputError(f"unknown augment {recipe!r} (known: {', '.join(RECIPES)})")
    return recipe
