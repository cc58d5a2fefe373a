"""OOD evaluation sets: CIFAR-10.1 and the noise/blur/contrast corruptions of a test split."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from workers import catalog
from workers.data.imageset import ImageSet
from workers.data.registry import load_split
from workers.data.transforms import to_float

# corruption -> its parameter at each catalog severity (CORRUPTION_SEVERITIES): the catalog names the
# corruptions, this table implements them. Its order fixes each corruption's noise seed: append only.
_SEVERITY: dict[str, tuple[float, ...]] = {
    "noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # Gaussian noise std (CIFAR-10-C levels)
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # Gaussian blur sigma in pixels (CIFAR-10-C levels)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor (CIFAR-10-C levels)
    # largest background offset o; the foreground gain g is drawn from [1 - level, 1]: x -> o + g (1 - o) x
    "intensity": (0.15, 0.3, 0.45, 0.6, 0.75),
    # share of a random channel permutation mixed in per image: x -> (1 - s) x + s x[perm] (grey: no change)
    "recolour": (0.2, 0.4, 0.6, 0.8, 1.0),
}
CORRUPTIONS: tuple[str, ...] = tuple(_SEVERITY)


def load_ood(
    dataset: str,
    ood: str,
    data_root: str | None = None,
    download: bool = False,
    params: Mapping[str, Any] | None = None,
) -> ImageSet:
    """The OOD evaluation set `ood` of `dataset` (params: the synthetic sizes of the test split).

    The name is checked by catalog.check_ood: a natural shift (catalog.OOD_SETS: cifar10.1, of cifar10
    only) is its own test split; a corruption <kind>-<severity> corrupts the ID test split."""
    catalog.check_ood(ood, dataset)
    if ood in catalog.OOD_SETS:
        return load_split(ood, False, data_root, download, params)
    match = catalog.OOD_PATTERN.match(ood)
    assert match is not None  # check_ood accepted it
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
    elif kind == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * level + mean
    elif kind == "intensity":  # per image, a random background offset and a random foreground gain
        offset = level * torch.rand(x.shape[0], 1, 1, 1, generator=generator)
        gain = 1 - level * torch.rand(x.shape[0], 1, 1, 1, generator=generator)
        x = offset + gain * (1 - offset) * x
    else:  # recolour: per image, a random permutation of the colour channels, mixed in at `level`
        perms = torch.stack([torch.randperm(x.shape[1], generator=generator) for _ in range(x.shape[0])])
        permuted = torch.gather(x, 1, perms[:, :, None, None].expand_as(x))
        x = (1 - level) * x + level * permuted
    return x.clamp_(0, 1)


def _corrupt_uncached(test: ImageSet, kind: str, severity: int) -> ImageSet:
    level = _SEVERITY[kind][catalog.CORRUPTION_SEVERITIES.index(severity)]
    base_seed = 1000 * list(_SEVERITY).index(kind) + severity
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
        x = _corruption(to_float(test.data[start : start + 1024]), kind, level, generator)
        if test.data.dtype == torch.uint8:
            x = x.mul_(255).round_().to(torch.uint8)  # stored like CIFAR-10-C images
        chunks.append(x)
    return ImageSet(name, test.targets, test.num_classes, test.channels, data=torch.cat(chunks))
