"""Datasets by name: the one place a dataset name maps to its loader, and each dataset's transform recipe.

timm-style: workers.catalog names the datasets (DATASETS, DATASET_PATTERNS), LOADERS and PATTERN_LOADERS
construct them; tests/test_catalog.py asserts that both hold the same names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from workers import catalog
from workers.data.disk import TORCHVISION_LAYOUT, load_cifar101, load_imagefolder, load_torchvision
from workers.data.embedded import SYNTHETIC_FAMILIES, load_digits, load_synthetic
from workers.data.imageset import ImageSet
from workers.data.renofeation import RENOFEATION_SETS, load_renofeation
from workers.data.study_sets import STUDY_SETS, load_study_set

# (name, train, absolute data root or None, download, params) -> the split
SplitLoader = Callable[[str, bool, "str | None", bool, Mapping[str, Any]], ImageSet]
# Sets read from a data root: (name, train, root, download) -> the split; loaded once per process.
DiskReader = Callable[[str, bool, "str | None", bool], ImageSet]


def _synthetic(name: str, train: bool, root: str | None, download: bool, params: Mapping[str, Any]) -> ImageSet:
    num_classes, train_images = params.get("num_classes"), params.get("train_images")
    return load_synthetic(name, train, int(num_classes) if num_classes is not None else None,
                          int(train_images) if train_images is not None else None)


def _study(name: str, train: bool, root: str | None, download: bool, params: Mapping[str, Any]) -> ImageSet:
    amplitude, fraction = params.get("shortcut_amplitude"), params.get("shortcut_fraction")
    return load_study_set(name, train, float(amplitude) if amplitude is not None else None,
                          float(fraction) if fraction is not None else None)


def _digits(name: str, train: bool, root: str | None, download: bool, params: Mapping[str, Any]) -> ImageSet:
    return load_digits(train)


def _cifar101(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    return load_cifar101(train, root)


def _renofeation(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    return load_renofeation(name, train, root)


def _imagefolder(name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    return load_imagefolder(name, train, root)


@functools.lru_cache(maxsize=16)
def _cached(read: DiskReader, name: str, train: bool, root: str | None, download: bool) -> ImageSet:
    return read(name, train, root, download)


def _from_disk(read: DiskReader) -> SplitLoader:
    def load(name: str, train: bool, root: str | None, download: bool, params: Mapping[str, Any]) -> ImageSet:
        return _cached(read, name, train, root, download)

    return load


# name -> loader. The names come from each loader's own table (torchvision layouts, Renofeation folders,
# synthetic families): a catalog name without a loader, or a loader the catalog does not name, fails
# tests/test_catalog.py.
LOADERS: Mapping[str, SplitLoader] = MappingProxyType({
    **{name: _from_disk(load_torchvision) for name in TORCHVISION_LAYOUT},
    "cifar10.1": _from_disk(_cifar101),
    **{name: _from_disk(_renofeation) for name in RENOFEATION_SETS},
    "digits": _digits,
    **{name: _synthetic for name in SYNTHETIC_FAMILIES},
    **{name: _study for name in STUDY_SETS},
})
# catalog.DATASET_PATTERNS key -> loader of the names that pattern matches.
PATTERN_LOADERS: Mapping[str, SplitLoader] = MappingProxyType({
    "imagefolder:<path>": _from_disk(_imagefolder),
})
DATASET_NAMES: tuple[str, ...] = tuple(LOADERS)  # plus the patterns of PATTERN_LOADERS


def loader_of(name: str) -> SplitLoader:
    """The loader of dataset `name`; an unknown name fails with the catalog's one-line message."""
    if name in LOADERS:
        return LOADERS[name]
    for shown, pattern in catalog.DATASET_PATTERNS.items():
        if isinstance(name, str) and pattern.match(name):
            return PATTERN_LOADERS[shown]
    catalog.check_dataset(name)  # raises: unknown dataset, did you mean, known names
    raise catalog.CatalogError(f"dataset {name!r} is in the catalog but has no loader in workers.data")


def load_split(
    name: str,
    train: bool,
    data_root: str | None = None,
    download: bool = False,
    params: Mapping[str, Any] | None = None,
) -> ImageSet:
    """The train or test split of dataset `name`, loaded once per process."""
    root = os.path.abspath(os.path.expanduser(data_root)) if data_root else None
    return loader_of(name)(name, bool(train), root, bool(download), params or {})


def expected_location(name: str, data_root: str | None) -> Path | None:
    """Where dataset `name` must lie for its loader (checked by `rtgrid plan` before anything runs);
    None for a set that needs no files (embedded, generated). Without a data root, the path is relative."""
    root = Path(os.path.expanduser(data_root)) if data_root else Path(".")
    if name in TORCHVISION_LAYOUT:
        return TORCHVISION_LAYOUT[name](root, True)
    if name == "cifar10.1":
        return root / "cifar10.1"
    if name in RENOFEATION_SETS:
        return root / RENOFEATION_SETS[name]
    if name.startswith("imagefolder:"):
        base = Path(os.path.expanduser(name.split(":", 1)[1]))
        return base if base.is_absolute() or not (root / base).exists() else root / base
    return None


def transform_recipe(dataset: str, requested: str | None = None) -> str:
    """The spec's `augment` recipe, else the dataset's paper's: Renofeation's for its five targets
    (variable-size photos), Utrera's for everything else."""
    recipe = requested or ("renofeation" if dataset in catalog.RENOFEATION_DATASETS else "utrera")
    return catalog.check_augment(recipe)
