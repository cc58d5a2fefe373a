"""Which images a trial sees (subsets, evaluation indices) and the loaders that batch them."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from workers import catalog
from workers.data.imageset import ImageSet
from workers.data.transforms import BATCHED_RECIPES, RECIPES
from workers.errors import KernelInputError


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


class _BatchPlan(Sampler[tuple[int | None, list[int]]]):
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


class _BatchFetcher(Dataset[tuple[Tensor, Tensor]]):
    """Turns a planned batch into (images B×C×S×S in [0,1], labels) with optional augmentation, on the
    device that holds the source's data (labels too)."""

    def __init__(self, source: ImageSet, input_size: int, augment: bool, recipe: str = "utrera") -> None:
        transform = RECIPES.get(catalog.check_augment(recipe))
        if transform is None:
            raise KernelInputError(f"augment recipe {recipe!r} is in the catalog but has no transform in workers.data")
        self.transform = transform
        self.source = source
        self.input_size = input_size
        self.augment = augment
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int | None, list[int]]) -> tuple[Tensor, Tensor]:
        aug_seed, indices = item
        # The generator stays on the CPU whatever the device: device batches use the CPU's random numbers.
        generator = torch.Generator().manual_seed(aug_seed) if self.augment and aug_seed is not None else None
        images = self.transform(self.source, indices, self.input_size, generator)
        labels = torch.tensor([self.source.targets[i] for i in indices], dtype=torch.long).to(images.device)
        return images.contiguous(), labels


@dataclass(frozen=True)
class _LoaderSetup:
    fetcher: _BatchFetcher
    num_workers: int
    pin_memory: bool


def _setup(ds: ImageSet, input_size: int, augment: bool, recipe: str, device: str | torch.device, num_workers: int,
           decode_cache_mb: float) -> _LoaderSetup:
    """Where a loader's batches are made. An in-memory set with a batched recipe on an accelerator: held on
    it (ImageSet.on) and fetched, resized and augmented there, in this process. Anything else: on the CPU
    in `num_workers` workers (decoded sets through a per-worker cache), pinned for a CUDA device."""
    device = torch.device(device)
    if device.type != "cpu" and ds.data is not None and recipe in BATCHED_RECIPES:
        return _LoaderSetup(_BatchFetcher(ds.on(device), input_size, augment, recipe), 0, False)
    source = ds.with_decode_cache(decode_cache_mb)
    return _LoaderSetup(_BatchFetcher(source, input_size, augment, recipe), num_workers, device.type == "cuda")


def make_train_loader(
    ds: ImageSet,
    indices: Sequence[int],
    batch_size: int,
    input_size: int,
    seed: int,
    augment: bool = True,
    num_workers: int = 0,
    recipe: str = "utrera",
    device: str | torch.device = "cpu",
    decode_cache_mb: float = 0,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """Shuffled batches of `indices` (a fresh permutation per pass), deterministic given seed.

    Each iteration over the loader is one epoch; iterating again continues the same random stream,
    so an endlessly cycled loader is reproducible too (`loader.sampler.generator` holds the state).
    recipe: the transform family (RECIPES); augment=False gives its test transform.
    device: the training device (_setup: whether batches are made there); num_workers and
    decode_cache_mb apply to batches made on the CPU.
    """
    plan = _BatchPlan(indices, batch_size, shuffle=True, seed=seed)
    setup = _setup(ds, input_size, augment, recipe, device, num_workers, decode_cache_mb)
    return DataLoader(
        setup.fetcher,
        sampler=plan,
        batch_size=None,
        num_workers=setup.num_workers,
        pin_memory=setup.pin_memory,
        persistent_workers=setup.num_workers > 0,
    )


def make_eval_loader(
    ds: ImageSet,
    indices: Sequence[int],
    batch_size: int,
    input_size: int,
    num_workers: int = 0,
    recipe: str = "utrera",
    device: str | torch.device = "cpu",
    decode_cache_mb: float = 0,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """Batches of `indices` in order with the recipe's test transform: Resize(input_size) (utrera,
    none) or Resize(input_size·256/224) → CenterCrop(input_size) (renofeation). device, num_workers,
    decode_cache_mb: as make_train_loader."""
    plan = _BatchPlan(indices, batch_size, shuffle=False, seed=None)
    setup = _setup(ds, input_size, False, recipe, device, num_workers, decode_cache_mb)
    return DataLoader(
        setup.fetcher,
        sampler=plan,
        batch_size=None,
        num_workers=setup.num_workers,
        pin_memory=setup.pin_memory,
        persistent_workers=setup.num_workers > 0,  # evaluated every eval epoch: workers keep their caches
    )
