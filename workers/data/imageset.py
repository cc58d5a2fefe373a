"""ImageSet: the one dataset type every loader, transform and OOD set works on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

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

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.data is not None:
            return to_float(self.data[index]), self.targets[index]
        assert self._load_image is not None
        return self._load_image(index), self.targets[index]

    def batch(self, indices: Sequence[int], input_size: int) -> Tensor:
        """Images `indices` as one float B×C×S×S batch, resized to input_size (REFERENCE C Resize)."""
        if self.data is not None:
            return resize(to_float(self.data[torch.as_tensor(list(indices), dtype=torch.long)]), input_size)
        return torch.stack([resize(self[i][0], input_size) for i in indices])

    def __repr__(self) -> str:
        return f"ImageSet({self.name!r}, {len(self)} images, {self.num_classes} classes, {self.channels} ch)"
