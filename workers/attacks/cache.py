"""Cached adversarial sets: the key, the file, reading and writing it, and computing a set once per key.

An adversarial set depends only on (source checkpoint sha256, dataset, evaluation indices, attack
params), not on the fine-tuned model, so it is computed once and stored as
<cache_dir>/adv/<key_hash>.pt, shared by every transfer trial of that source and dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workers import models
from workers.attacks.penultimate import ATTACK_BATCH, normalised_images, penultimate_attack
from workers.errors import KernelInputError
from workers.io import save_atomically

ATTACK_PARAMS = ("eps", "step", "steps", "m", "clamp")  # what adversarial_set needs in its params

logger = logging.getLogger(__name__)


def attack_key(source_sha256: str, dataset_name: str, eval_indices: Sequence[int], params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines an adversarial set."""
    payload = {"source_sha256": source_sha256, "dataset": dataset_name,
               "eval_indices": [int(i) for i in eval_indices], "params": dict(params)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def adversarial_set_path(cache_dir: str | os.PathLike[str], key_hash: str) -> Path:
    """Where the set of `key_hash` lives under a cache directory."""
    return Path(cache_dir) / "adv" / f"{key_hash}.pt"


def read_adversarial_set(path: Path, key_hash: str) -> Tensor | None:
    """The stored set of `key_hash`, or None when the file is missing, unreadable or of another key."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, not fatal
        logger.warning("unreadable adversarial set %s: it is computed again", path, exc_info=True)
        return None
    if not isinstance(stored, Mapping) or stored.get("key_hash") != key_hash or not isinstance(
        stored.get("adv"), Tensor
    ):
        return None
    adv: Tensor = stored["adv"]
    return adv


def write_adversarial_set(path: Path, key_hash: str, adv: Tensor, meta: Mapping[str, Any]) -> None:
    """Store a set atomically (readers see the old file or the whole new one)."""
    save_atomically({"key_hash": key_hash, "adv": adv.contiguous(), "meta": dict(meta)}, path)


def adversarial_set(
    source_model: models.Classifier,
    source_sha256: str,
    dataset_name: str,
    eval_indices: Sequence[int],
    images_normalised_or_loader: Tensor | Iterable[Any],
    params: Mapping[str, Any],
    cache_dir: str | os.PathLike[str],
) -> Tensor:
    """The adversarial (normalised, CPU) images of the evaluation images, computed once per key.

    params: eps, step, steps, m, clamp (plus anything else that shapes the images, e.g. input_size;
    all of it goes into the key). images_normalised_or_loader: the clean images already normalised
    (a tensor, in eval_indices order) or a loader of ([0,1] images, labels) batches in that order.
    The random start is seeded from the key, so a recomputation gives the same set.
    """
    for name in ATTACK_PARAMS:
        if name not in params:
            raise KernelInputError(f"attack params lack {name!r}")
    key_hash = attack_key(source_sha256, dataset_name, eval_indices, params)
    path = adversarial_set_path(cache_dir, key_hash)
    cached = read_adversarial_set(path, key_hash)
    if cached is not None:
        return cached
    clean = normalised_images(source_model, images_normalised_or_loader)
    if clean.shape[0] != len(eval_indices):
        raise KernelInputError(f"the attack got {clean.shape[0]} images for {len(eval_indices)} evaluation indices")
    device = next(source_model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(key_hash[:15], 16))
    adv = torch.cat([
        penultimate_attack(source_model, chunk.to(device), eps=float(params["eps"]), step=float(params["step"]),
                           steps=int(params["steps"]), m=float(params["m"]), clamp=float(params["clamp"]),
                           generator=generator).cpu()
        for chunk in torch.split(clean, ATTACK_BATCH)
    ])
    write_adversarial_set(path, key_hash, adv, {"source_sha256": source_sha256, "dataset": dataset_name,
                                                "images": len(eval_indices), "params": dict(params)})
    return adv
