"""ImageSet: the one dataset type every loader, transform and OOD set works on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from workers.data.decode_cache import DecodedImageCache
from workers.data.transforms import resize, to_float


class ImageSet(Dataset[tuple[Tensor, int]]):
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
        self._on_device: dict[torch.device, ImageSet] = {}  # on(): the copies of `data` on other devices

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.data is not None:
            return to_float(self.data[index]), self.targets[index]
        assert self._load_image is not None
        return self._load_image(index), self.targets[index]

    def batch(self, indices: Sequence[int], input_size: int) -> Tensor:
        """Images `indices` as one float B×C×S×S batch, resized to input_size (REFERENCE C Resize), on the
        device that holds `data` (decoded images: the CPU)."""
        if self.data is not None:
            rows = torch.as_tensor(list(indices), dtype=torch.long, device=self.data.device)
            return resize(to_float(self.data[rows]), input_size)
        return torch.stack([resize(self[i][0], input_size) for i in indices])

    def on(self, device: str | torch.device) -> ImageSet:
        """This set with `data` held on `device` (moved once, then reused: the copy is kept per device).
        A set already there, or one decoded on demand, is returned as it is."""
        device = torch.device(device)
        if self.data is None or self.data.device == device:
            return self
        if device not in self._on_device:
            moved = self.data.to(device)
            self._on_device[device] = ImageSet(self.name, self.targets, self.num_classes, self.channels, data=moved)
        return self._on_device[device]

    def with_decode_cache(self, budget_mib: float) -> ImageSet:
        """This set with its decoded images kept in an LRU of `budget_mib` MiB (a set decoded on demand;
        an in-memory set, or a budget of 0, is returned as it is). Each process that unpickles or forks
        the result (a DataLoader worker) fills its own cache."""
        if self._load_image is None or budget_mib <= 0 or isinstance(self._load_image, DecodedImageCache):
            return self
        cache = DecodedImageCache(self._load_image, int(budget_mib * 2**20))
        return ImageSet(self.name, self.targets, self.num_classes, self.channels, load_image=cache)

    def __getstate__(self) -> dict[str, Any]:
        # Device copies stay in the process that made them (a DataLoader worker gets the CPU set).
        return {**self.__dict__, "_on_device": {}}

    def __repr__(self) -> str:
        return f"ImageSet({self.name!r}, {len(self)} images, {self.num_classes} classes, {self.channels} ch)"
