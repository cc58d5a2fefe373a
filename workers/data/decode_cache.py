"""A bounded LRU of decoded images, so photo datasets are decoded once per DataLoader worker, not per epoch."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import Tensor


class DecodedImageCache:
    """`load_image` with its results kept, least recently used evicted first, while they fit in budget_bytes.

    A hit returns the very tensor of the first decode: callers treat images as read-only (the
    transforms in workers.data never write into their input). An image larger than the whole budget
    is decoded every time."""

    def __init__(self, load_image: Callable[[int], Tensor], budget_bytes: int) -> None:
        self.load_image = load_image
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self._images: OrderedDict[int, Tensor] = OrderedDict()

    def __call__(self, index: int) -> Tensor:
        image = self._images.get(index)
        if image is not None:
            self._images.move_to_end(index)
            self.hits += 1
            return image
        self.misses += 1
        image = self.load_image(index)
        size = image.numel() * image.element_size()
        if size <= self.budget_bytes:
            while self.used_bytes + size > self.budget_bytes:
                _, evicted = self._images.popitem(last=False)
                self.used_bytes -= evicted.numel() * evicted.element_size()
            self._images[index] = image
            self.used_bytes += size
        return image

    def __len__(self) -> int:
        return len(self._images)
