"""A tiny ImageFolder dataset on disk (PNG photos of varying sizes): the decoded-on-demand data path."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> str:
    """root/train and root/test, `per_class` PNGs per class (sizes 20-40 px, random pixels); the dataset name."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                height, width = (int(v) for v in rng.integers(20, 41, size=2))
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return f"imagefolder:{root}"
