"""Cached adversarial sets: the key, the file, reading and writing it, and computing a set once per key.

An adversarial set depends only on (source checkpoint sha256, the clean evaluation images, attack
params, kernel version), not on the fine-tuned model, so it is computed once and stored as
<cache_dir>/adv/<key_hash>.pt, shared by every transfer trial of that source and those images.

The images are named by content, not by name: the key holds clean_digest, the sha256 of the exact
normalised tensor the attack is crafted from (after the test transform) and of its labels. Two data
roots that hold different images under one dataset name, a dataset changed on disk, or a changed
generator or test transform therefore get different keys. The file records the digest and shape
too, and a read that does not match what the caller is about to evaluate is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from workers import models
from workers.attacks.penultimate import ATTACK_BATCH, normalised_images, penultimate_attack
from workers.catalog import KERNEL_VERSION
from workers.errors import KernelInputError
from workers.io import save_atomically

ATTACK_PARAMS = ("eps", "step", "steps", "m", "clamp")  # what adversarial_set needs in its params

logger = logging.getLogger(__name__)


class AdversarialSet(NamedTuple):
    """A computed or cached set: the adversarial images (normalised, CPU), its key and file, and the
    digest of the clean images it was crafted from."""

    adv: Tensor
    key_hash: str
    path: Path
    clean_digest: str


def _update_with_tensor(digest: Any, label: str, tensor: Tensor) -> None:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{label}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy().data)


def clean_digest(images: Tensor, labels: Tensor | Sequence[int] | None = None) -> str:
    """sha256 over the bytes, dtype and shape of the clean images (as the attack takes them, e.g.
    normalised) and of their labels (as int64; None: no labels)."""
    digest = hashlib.sha256()
    _update_with_tensor(digest, "images", images)
    if labels is not None:
        _update_with_tensor(digest, "labels", torch.as_tensor(labels).to(torch.int64))
    return digest.hexdigest()


def _canonical_sha256(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _seed_payload(source_sha256: str, dataset_name: str, eval_indices: Sequence[int],
                  params: Mapping[str, Any]) -> dict[str, Any]:
    return {"source_sha256": source_sha256, "dataset": dataset_name,
            "eval_indices": [int(i) for i in eval_indices], "params": dict(params)}


def attack_seed(source_sha256: str, dataset_name: str, eval_indices: Sequence[int],
                params: Mapping[str, Any]) -> int:
    """The seed of the attack's random start: from (source, dataset name, indices, params) only, as
    before the images were in the key, so the same images give the same set as they always did."""
    return int(_canonical_sha256(_seed_payload(source_sha256, dataset_name, eval_indices, params))[:15], 16)


def attack_key(source_sha256: str, dataset_name: str, eval_indices: Sequence[int], params: Mapping[str, Any],
               clean_digest: str) -> str:
    """sha256 of the canonical JSON of what determines an adversarial set: the source checkpoint,
    the clean images' content (clean_digest), the attack params and KERNEL_VERSION (plus the dataset
    name and evaluation indices, which the digest already pins down)."""
    return _canonical_sha256({**_seed_payload(source_sha256, dataset_name, eval_indices, params),
                              "clean_digest": clean_digest, "kernel_version": KERNEL_VERSION})


def adversarial_set_path(cache_dir: str | os.PathLike[str], key_hash: str) -> Path:
    """Where the set of `key_hash` lives under a cache directory."""
    return Path(cache_dir) / "adv" / f"{key_hash}.pt"


def read_adversarial_set(path: Path, key_hash: str, clean_digest: str, shape: Sequence[int]) -> Tensor | None:
    """The stored set of `key_hash`, or None (compute it again) when the file is missing, unreadable, of
    another key, or crafted from other clean images than those the caller is about to evaluate: its
    recorded clean digest differs from `clean_digest`, or its shape from `shape` (the clean images')."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, not fatal
        logger.warning("unreadable adversarial set %s: it is computed again", path, exc_info=True)
        return None
    expected = tuple(int(n) for n in shape)
    if not isinstance(stored, Mapping) or not isinstance(stored.get("adv"), Tensor):
        problem = "not an adversarial set"
    elif stored.get("key_hash") != key_hash:
        problem = f"stored under key {stored.get('key_hash')!r}"
    elif stored.get("clean_digest") != clean_digest:
        problem = f"crafted from other clean images (digest {stored.get('clean_digest')!r}, expected {clean_digest!r})"
    elif tuple(stored["adv"].shape) != expected or tuple(stored.get("clean_shape") or ()) != expected:
        problem = f"of shape {tuple(stored['adv'].shape)}, expected {expected}"
    else:
        adv: Tensor = stored["adv"]
        return adv
    logger.warning("adversarial set %s does not match: %s; it is computed again", path, problem)
    return None


def write_adversarial_set(path: Path, key_hash: str, adv: Tensor, clean_digest: str,
                          meta: Mapping[str, Any]) -> None:
    """Store a set with its key and clean digest, atomically (readers see the old file or the whole new one)."""
    save_atomically({"key_hash": key_hash, "clean_digest": clean_digest, "clean_shape": list(adv.shape),
                     "adv": adv.contiguous(), "meta": dict(meta)}, path)


def cached_adversarial_set(
    source_model: models.Classifier,
    source_sha256: str,
    dataset_name: str,
    eval_indices: Sequence[int],
    images_normalised_or_loader: Tensor | Iterable[Any],
    params: Mapping[str, Any],
    cache_dir: str | os.PathLike[str],
    labels: Tensor | Sequence[int] | None = None,
) -> AdversarialSet:
    """The adversarial (normalised, CPU) images of the evaluation images, computed once per key.

    params: eps, step, steps, m, clamp (plus anything else that shapes the images, e.g. input_size;
    all of it goes into the key). images_normalised_or_loader: the clean images already normalised
    (a tensor, in eval_indices order) or a loader of ([0,1] images, labels) batches in that order;
    labels: theirs (part of the digest). The clean images are normalised first and their digest keys
    the set. The random start is seeded by attack_seed, so a recomputation gives the same set.
    """
    for name in ATTACK_PARAMS:
        if name not in params:
            raise KernelInputError(f"attack params lack {name!r}")
    clean = normalised_images(source_model, images_normalised_or_loader)
    if clean.shape[0] != len(eval_indices):
        raise KernelInputError(f"the attack got {clean.shape[0]} images for {len(eval_indices)} evaluation indices")
    digest = clean_digest(clean, labels)
    key_hash = attack_key(source_sha256, dataset_name, eval_indices, params, digest)
    path = adversarial_set_path(cache_dir, key_hash)
    cached = read_adversarial_set(path, key_hash, digest, clean.shape)
    if cached is not None:
        return AdversarialSet(cached, key_hash, path, digest)
    device = next(source_model.parameters()).device
    seed = attack_seed(source_sha256, dataset_name, eval_indices, params)
    generator = torch.Generator(device=device).manual_seed(seed)
    adv = torch.cat([
        penultimate_attack(source_model, chunk.to(device), eps=float(params["eps"]), step=float(params["step"]),
                           steps=int(params["steps"]), m=float(params["m"]), clamp=float(params["clamp"]),
                           generator=generator).cpu()
        for chunk in torch.split(clean, ATTACK_BATCH)
    ])
    write_adversarial_set(path, key_hash, adv, digest, {
        "source_sha256": source_sha256, "dataset": dataset_name, "images": len(eval_indices),
        "params": dict(params), "kernel_version": KERNEL_VERSION})
    return AdversarialSet(adv, key_hash, path, digest)
