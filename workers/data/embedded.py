"""The sets that need no data root: procedurally generated shapes and sklearn's digits."""

from __future__ import annotations

import functools
import math
import random
import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from workers.catalog import SYNTHETIC_DEFAULT_CLASSES, SYNTHETIC_DEFAULT_TEST, SYNTHETIC_DEFAULT_TRAIN
from workers.data.imageset import ImageSet
from workers.errors import KernelInputError


@functools.lru_cache(maxsize=4)
def load_digits(train: bool) -> ImageSet:
    """sklearn's 8×8 digits, a fixed stratified 70/30 train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0  # 8×8, values 0..16
    index = np.arange(len(images))
    # Fixed stratified 70/30 split: the same for every process and caller.
    train_idx, test_idx = train_test_split(index, test_size=0.3, random_state=0, stratify=digits.target)
    chosen = train_idx if train else test_idx
    data = torch.from_numpy(images[chosen]).unsqueeze(1).contiguous()
    return ImageSet("digits", digits.target[chosen].tolist(), 10, 1, data=data)


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
def load_synthetic(name: str, train: bool, num_classes: int | None, train_images: int | None) -> ImageSet:
    """A split of a generated set (a SYNTHETIC_FAMILIES name); None sizes take the defaults."""
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
