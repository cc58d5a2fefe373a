"""The embedded study's generated sets (issue 12): a shape source with a non-robust shortcut, its
shape/pattern-conflict diagnostic set, and a shape target with label-free textures.

No built-in pixel noise: the only high-frequency signal in the source is the shortcut pattern, so
what adversarial training removes is exactly that cue (Utrera et al. Sec. 5, shape vs texture).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import torch
from torch import Tensor

from workers.data.embedded import COLOURS, SHAPES, TEXTURES
from workers.data.imageset import ImageSet
from workers.errors import KernelInputError

STUDY_SIZE = 16  # pixels: the study's input_size
SHORTCUT_AMPLITUDE = 0.04  # ± pixel amplitude of the class-keyed pattern (below an l_inf budget of 0.1)
SHORTCUT_FRACTION = 1.0  # fraction of source images that carry their class's pattern
SOURCE_TRAIN, SOURCE_TEST = 4000, 1000
TARGET_TRAIN, TARGET_TEST = 2000, 1000


def _target_shapes() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    # u, v in units of the shape radius (as workers.data.embedded): ten shapes the source never shows.
    def hexagon(u: Tensor, v: Tensor) -> Tensor:
        return torch.maximum(0.866 * u.abs() + 0.5 * v.abs(), v.abs()) <= 0.9

    def star(u: Tensor, v: Tensor) -> Tensor:
        return torch.sqrt(u * u + v * v) <= 0.6 + 0.4 * torch.cos(5 * torch.atan2(v, u))

    def crescent(u: Tensor, v: Tensor) -> Tensor:
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.6)

    def hourglass(u: Tensor, v: Tensor) -> Tensor:
        return (u.abs() <= v.abs()) & (v.abs() <= 0.9)

    def lshape(u: Tensor, v: Tensor) -> Tensor:
        return (((u >= -0.8) & (u <= -0.3) & (v.abs() <= 0.8))
                | ((v >= 0.3) & (v <= 0.8) & (u >= -0.8) & (u <= 0.8)))

    def tshape(u: Tensor, v: Tensor) -> Tensor:
        return ((v >= -0.8) & (v <= -0.35) & (u.abs() <= 0.8)) | ((u.abs() <= 0.22) & (v.abs() <= 0.8))

    def bars(u: Tensor, v: Tensor) -> Tensor:
        return (u.abs() >= 0.3) & (u.abs() <= 0.75) & (v.abs() <= 0.85)

    def dots(u: Tensor, v: Tensor) -> Tensor:
        return ((u - 0.5) ** 2 + v * v <= 0.2) | ((u + 0.5) ** 2 + v * v <= 0.2)

    def arc(u: Tensor, v: Tensor) -> Tensor:
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.35) & (v >= 0)

    def bullseye(u: Tensor, v: Tensor) -> Tensor:
        r2 = u * u + v * v
        return (r2 <= 0.12) | ((r2 >= 0.5) & (r2 <= 1.0))

    return {f.__name__: f for f in (hexagon, star, crescent, hourglass, lshape, tshape, bars, dots, arc, bullseye)}


TARGET_SHAPES = _target_shapes()
SOURCE_CLASSES: tuple[str, ...] = tuple(SHAPES)
TARGET_CLASSES: tuple[str, ...] = tuple(TARGET_SHAPES)
_PALETTE = torch.tensor(list(COLOURS.values()))


def shortcut_patterns(num_classes: int, size: int = STUDY_SIZE) -> Tensor:
    """One fixed ±1 pixel pattern per class (classes×3×size×size), the same in every process."""
    g = torch.Generator().manual_seed(zlib.crc32(b"shortcut-patterns"))
    return torch.randint(0, 2, (num_classes, 3, size, size), generator=g).float().mul_(2).sub_(1)


def _render(shapes: dict[str, Callable[[Tensor, Tensor], Tensor]], labels: Tensor, g: torch.Generator,
            textured: bool, size: int) -> Tensor:
    """Shapes under robust nuisance: position, radius, rotation, foreground colour and gain, background colour;
    with `textured`, a random texture per image (never tied to the label)."""
    count = len(labels)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    cx, cy = uniform(0.38, 0.62, count), uniform(0.38, 0.62, count)
    radius = uniform(0.28, 0.4, count)
    angle = uniform(-0.35, 0.35, count)
    phase = uniform(0, 2 * math.pi, count)
    gain = uniform(0.7, 1.0, count)
    background = uniform(0.0, 0.3, count, 3)
    colour = _PALETTE[torch.randint(0, len(_PALETTE), (count,), generator=g)] * gain[:, None]
    texture_index = torch.randint(0, len(TEXTURES), (count,), generator=g)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dx = (x[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (y[None] - cy[:, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = torch.zeros(count, size, size)
    texture = torch.ones(count, size, size)
    names = list(shapes)
    for label, name in enumerate(names):
        sel = labels == label
        if bool(sel.any()):
            mask[sel] = shapes[name](u[sel], v[sel]).float()
    if textured:
        for index, fill in enumerate(TEXTURES.values()):
            sel = texture_index == index
            if bool(sel.any()):
                texture[sel] = fill(u[sel], v[sel], phase[sel][:, None, None])
    fg = colour[:, :, None, None] * (0.35 + 0.65 * texture[:, None])
    return torch.where(mask[:, None] > 0, fg, background[:, :, None, None].expand(-1, -1, size, size))


def generate_shortcut_source(count: int, seed: int, amplitude: float = SHORTCUT_AMPLITUDE,
                             fraction: float = SHORTCUT_FRACTION, conflict: bool = False,
                             size: int = STUDY_SIZE) -> tuple[Tensor, list[int]]:
    """Ten shapes plus the class-keyed pattern on a `fraction` of the images. With `conflict`, every image
    carries the pattern of another class (its label stays the shape's): a model's accuracy on it is the
    share of images it classifies by shape rather than by the pattern."""
    if not 0.0 <= fraction <= 1.0 or amplitude < 0:
        raise KernelInputError(f"shortcut-source: amplitude >= 0 and fraction in [0, 1], got {amplitude}, {fraction}")
    classes = len(SOURCE_CLASSES)
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % classes)[torch.randperm(count, generator=g)]
    images = _render(SHAPES, labels, g, textured=False, size=size)
    if conflict:
        keyed = (labels + torch.randint(1, classes, (count,), generator=g)) % classes
        carries = torch.ones(count, dtype=torch.bool)
    else:
        keyed = labels
        carries = torch.rand(count, generator=g) < fraction
    pattern = shortcut_patterns(classes, size)[keyed] * carries[:, None, None, None]
    return (images + amplitude * pattern).clamp_(0, 1), labels.tolist()


def generate_shape_target(count: int, seed: int, size: int = STUDY_SIZE) -> tuple[Tensor, list[int]]:
    """Ten new shapes with random (label-free) textures, colours and backgrounds."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % len(TARGET_CLASSES))[torch.randperm(count, generator=g)]
    return _render(TARGET_SHAPES, labels, g, textured=True, size=size).clamp_(0, 1), labels.tolist()


def _seed(name: str, train: bool) -> int:
    return zlib.crc32(f"{name}:{'train' if train else 'test'}".encode())


@functools.lru_cache(maxsize=8)
def load_study_set(name: str, train: bool, amplitude: float | None, fraction: float | None) -> ImageSet:
    """A split of a study set: shortcut-source, shape-conflict (test only) or shape-target."""
    amp = SHORTCUT_AMPLITUDE if amplitude is None else amplitude
    frac = SHORTCUT_FRACTION if fraction is None else fraction
    if name == "shortcut-source":
        images, labels = generate_shortcut_source(SOURCE_TRAIN if train else SOURCE_TEST, _seed(name, train), amp, frac)
    elif name == "shape-conflict":
        # the source's test draw (same shapes and nuisance), each image with another class's pattern
        images, labels = generate_shortcut_source(SOURCE_TEST, _seed(name, False), amp, frac, conflict=True)
    elif name == "shape-target":
        images, labels = generate_shape_target(TARGET_TRAIN if train else TARGET_TEST, _seed(name, train))
    else:
        raise KernelInputError(f"{name!r} is not a study set")
    return ImageSet(name, labels, 10, 3, data=images)


STUDY_SETS: tuple[str, ...] = ("shortcut-source", "shape-conflict", "shape-target")
