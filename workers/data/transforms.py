"""Image transforms: pixel conversion, resize, and the train/test transform recipes (utrera, renofeation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from workers.data.imageset import ImageSet


def to_float(x: Tensor) -> Tensor:
    """Images as float in [0,1] (uint8 pixels are divided by 255)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def resize(x: Tensor, size: int) -> Tensor:
    """Images resized to size×size (antialiased, clamped to [0,1]) on x's device; unchanged when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    from torchvision.transforms.v2 import functional as TF

    resized: Tensor = TF.resize(x, [size, size], antialias=True).clamp_(0, 1)
    return resized


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """REFERENCE C train transform after the resize, drawn per image: RandomCrop(pad 4),
    horizontal flip, ColorJitter(0.25, 0.25, 0.25) in a random order, RandomRotation(2°).

    Runs on x's device. Every random draw comes from the CPU `generator` in a fixed order and only the
    small draw tensors move to the device, so a device batch uses exactly the random numbers of the
    CPU batch (and CPU results are those of the all-CPU version, bit for bit)."""
    b, c, h, w = x.shape
    device = x.device

    # RandomCrop(size, padding=4): zero padding, per-image offset in [0, 8].
    padded = F.pad(x, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (b,), generator=generator).to(device)
    ox = torch.randint(0, 9, (b,), generator=generator).to(device)
    rows = (oy[:, None] + torch.arange(h, device=device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=device))[:, None, :]
    x = padded[torch.arange(b, device=device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)

    flip = (torch.rand(b, generator=generator) < 0.5).to(device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)

    factors = (0.75 + 0.5 * torch.rand(3, b, 1, 1, 1, generator=generator)).to(device)
    for op in torch.randperm(3, generator=generator).tolist():
        f = factors[op]
        if op == 0:  # brightness
            x = (x * f).clamp(0, 1)
        elif op == 1:  # contrast: blend with the mean grey level
            grey = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (f * x + (1 - f) * grey).clamp(0, 1)
        elif c == 3:  # saturation (a no-op on greyscale, as in torchvision)
            x = (f * x + (1 - f) * _grey(x)).clamp(0, 1)

    # RandomRotation(2): nearest interpolation, zero fill, about the centre. The b×2×3 matrices are
    # computed on the CPU (as before), the sampling grid on the device.
    theta = (torch.rand(b, generator=generator) * 4 - 2) * math.pi / 180
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    matrix = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1).to(device)
    grid = F.affine_grid(matrix, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def random_resized_crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
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
            top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], generator)
            image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            if float(torch.rand((), generator=generator)) < 0.5:
                image = image.flip(-1)
        images.append(image.clamp(0, 1))
    return torch.stack(images)


def utrera_batch(ds: ImageSet, indices: Sequence[int], size: int, generator: torch.Generator | None) -> Tensor:
    """REFERENCE C: Resize(size) (the CenterCrop after it is a no-op); train (a generator): + augment_batch."""
    images = ds.batch(indices, size)
    return augment_batch(images, generator) if generator is not None else images


def resize_batch(ds: ImageSet, indices: Sequence[int], size: int, generator: torch.Generator | None) -> Tensor:
    """Resize(size) only, train and test alike."""
    return ds.batch(indices, size)


# The recipes whose batch is whole-tensor ops on an in-memory set (index, resize, augment_batch): for such a
# set they run on the training device (loaders.py). The others transform decoded images one at a time.
BATCHED_RECIPES: frozenset[str] = frozenset({"utrera", "none"})
# (images, indices, size, augmentation generator or None for the test transform) -> the batch
RecipeBatch = Callable[["ImageSet", Sequence[int], int, "torch.Generator | None"], Tensor]
# The one place a transform recipe (catalog.AUGMENT_RECIPES, the `augment` param) maps to its batch transform:
# utrera (REFERENCE C), renofeation (REFERENCE A), none (resize only).
RECIPES: Mapping[str, RecipeBatch] = MappingProxyType({
    "utrera": utrera_batch,
    "renofeation": renofeation_batch,
    "none": resize_batch,
})
