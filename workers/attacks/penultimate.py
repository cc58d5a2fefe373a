"""The penultimate-layer attack of Renofeation (REFERENCE A), ASR, and cached adversarial sets.

The attack is crafted on the PRE-TRAINED SOURCE model only; the fine-tuned (transferred) model is
then evaluated on the stored adversarial set. Everything here is in NORMALISED units, as in the
reference code whose inputs are already normalised: x_norm = (x − mean)/std with the ImageNet
statistics of models.Classifier, and the source's post-normaliser network (Classifier.features(...,
normalized=True)) is attacked. ε, the step and the clamp box are therefore normalised values.

An adversarial set depends only on (source checkpoint sha256, dataset, evaluation indices, attack
params), not on the fine-tuned model, so it is computed once and stored as
<cache_dir>/adv/<key_hash>.pt, shared by every transfer trial of that source and dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workers import data, models
from workers.context import KernelContext
from workers.errors import KernelInputError

# How often the attack actually ran in this process, per key_hash (cache hits do not count).
attack_runs: Counter[str] = Counter()

ATTACK_BATCH = 128  # the objective is per-sample and the steps are signs: the batch size does not change δ
OFF_TARGET_WEIGHT = 0.1


# ---------------------------------------------------------------------------------------------- the attack


def penultimate_objective(features: Tensor, m: float) -> Tensor:
    """Per-sample (f_0 − m)² + 0.1·mean_{j≥1} f_j² (REFERENCE A, the form of the released code).

    This is a weighted ‖f − m·e₁‖²: the target coordinate counts fully and the d−1 others are
    down-weighted by 0.1/(d−1) each, so it is ‖f − m·e₁‖² only up to that re-weighting.
    """
    target = (features[:, 0] - m) ** 2
    if features.shape[1] == 1:
        return target
    return target + OFF_TARGET_WEIGHT * (features[:, 1:] ** 2).mean(dim=1)


def penultimate_attack(
    model: models.Classifier,
    images_normalised: Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    m: float = 1000.0,
    clamp: float = 2.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L∞ PGD (advertorch LinfPGDAttack semantics) that minimises the batch mean of
    penultimate_objective on the source model's penultimate features, in eval mode.

    δ0 ~ U(−ε, ε); each step δ ← δ − step·sign(∇ objective); then δ is clipped to [−ε, ε] and x+δ
    is clamped to [−clamp, clamp]. As in advertorch the clamp comes last, so where a clean value
    lies outside the box, x+δ sits on the box edge and |δ| may exceed ε there. Returns the final
    iterate x+δ (normalised, detached). Module train/eval flags are restored afterwards.
    """
    if eps <= 0 or step <= 0:
        raise KernelInputError(f"attack budget must be > 0 (attack_eps={eps}, attack_step={step})")
    if steps < 1:
        raise KernelInputError(f"attack_steps must be >= 1, got {steps}")
    if clamp <= 0:
        raise KernelInputError(f"attack_clamp must be > 0, got {clamp}")
    x = images_normalised.detach()
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        delta = (x + eps * noise).clamp(-clamp, clamp) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            objective = penultimate_objective(model.features(x + delta, normalized=True).float(), m).mean()
            (grad,) = torch.autograd.grad(objective, [delta])
            with torch.no_grad():
                delta = (delta - step * grad.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(-clamp, clamp) - x
        return (x + delta).detach()
    finally:
        for module, training in modes:
            module.training = training


# ---------------------------------------------------------------------------------------------- ASR


def attack_success_rate(labels: Tensor | Sequence[int], clean_pred: Tensor | Sequence[int],
                        adv_pred: Tensor | Sequence[int]) -> dict[str, Any]:
    """ASR = #(clean-correct and adversarially wrong) / #(clean-correct), with clean and adversarial
    top-1 accuracy (fractions). When no image is classified correctly clean, ASR is undefined and
    returned as None (NaN cannot be stored); clean_acc is then 0."""
    labels_t, clean_t, adv_t = (torch.as_tensor(v).long().flatten() for v in (labels, clean_pred, adv_pred))
    if not labels_t.numel() == clean_t.numel() == adv_t.numel():
        raise KernelInputError("labels, clean and adversarial predictions differ in length")
    total = int(labels_t.numel())
    clean_ok = clean_t == labels_t
    adv_ok = adv_t == labels_t
    n_clean_correct = int(clean_ok.sum())
    flipped = int((clean_ok & ~adv_ok).sum())
    return {
        "asr": flipped / n_clean_correct if n_clean_correct else None,
        "clean_acc": n_clean_correct / total if total else None,
        "adv_acc": int(adv_ok.sum()) / total if total else None,
        "n_clean_correct": n_clean_correct,
    }


@torch.no_grad()
def predict_normalised(model: models.Classifier, images_normalised: Tensor, batch_size: int = ATTACK_BATCH,
                       device: str | torch.device | None = None) -> Tensor:
    """Top-1 predictions (CPU) of a Classifier on normalised images, in eval mode; modes restored."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        preds = [model(chunk.to(device), normalized=True).argmax(1).cpu()
                 for chunk in images_normalised.split(batch_size)]
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def evaluate_asr(transferred_model: models.Classifier, adv_images: Tensor, clean_images: Tensor,
                 labels: Tensor | Sequence[int]) -> dict[str, Any]:
    """The fine-tuned model on the clean and adversarial sets (both normalised, same order as labels):
    attack_success_rate's dict (asr, clean_acc, adv_acc, n_clean_correct)."""
    clean_pred = predict_normalised(transferred_model, clean_images)
    adv_pred = predict_normalised(transferred_model, adv_images)
    return attack_success_rate(labels, clean_pred, adv_pred)


# ---------------------------------------------------------------------------------------------- cached sets


def attack_key(source_sha256: str, dataset_name: str, eval_indices: Sequence[int], params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines an adversarial set."""
    payload = {"source_sha256": source_sha256, "dataset": dataset_name,
               "eval_indices": [int(i) for i in eval_indices], "params": dict(params)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def adversarial_set_path(cache_dir: str | os.PathLike[str], key_hash: str) -> Path:
    return Path(cache_dir) / "adv" / f"{key_hash}.pt"


def _normalised_batches(source_model: models.Classifier, images: Tensor | Iterable[Any]) -> Tensor:
    if isinstance(images, Tensor):
        return images.detach().cpu()
    # A loader of (images in [0,1], labels) batches, e.g. data.make_eval_loader.
    with torch.no_grad():
        chunks = [source_model.normalize(batch[0].to(source_model.mean.device)).cpu() for batch in images]
    if not chunks:
        raise KernelInputError("the attack got no images")
    return torch.cat(chunks)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # concurrent workers see the old state or the whole file, never a part
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_cached(path: Path, key_hash: str) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, not fatal
        return None
    if not isinstance(stored, Mapping) or stored.get("key_hash") != key_hash or not isinstance(
        stored.get("adv"), Tensor
    ):
        return None
    return stored["adv"]


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
    for name in ("eps", "step", "steps", "m", "clamp"):
        if name not in params:
            raise KernelInputError(f"attack params lack {name!r}")
    key_hash = attack_key(source_sha256, dataset_name, eval_indices, params)
    path = adversarial_set_path(cache_dir, key_hash)
    cached = _read_cached(path, key_hash)
    if cached is not None:
        return cached
    clean = _normalised_batches(source_model, images_normalised_or_loader)
    if clean.shape[0] != len(eval_indices):
        raise KernelInputError(f"the attack got {clean.shape[0]} images for {len(eval_indices)} evaluation indices")
    device = next(source_model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(key_hash[:15], 16))
    attack_runs[key_hash] += 1
    adv = torch.cat([
        penultimate_attack(source_model, chunk.to(device), eps=float(params["eps"]), step=float(params["step"]),
                           steps=int(params["steps"]), m=float(params["m"]), clamp=float(params["clamp"]),
                           generator=generator).cpu()
        for chunk in clean.split(ATTACK_BATCH)
    ])
    _atomic_save({"key_hash": key_hash, "adv": adv.contiguous(),
                  "meta": {"source_sha256": source_sha256, "dataset": dataset_name, "images": len(eval_indices),
                           "params": dict(params)}}, path)
    return adv


# ---------------------------------------------------------------------------------------------- kernel glue


def transfer_asr(
    spec: Mapping[str, Any],
    ctx: KernelContext,
    params: Mapping[str, Any],
    source: models.Classifier,
    student: models.Classifier,
    test_ds: data.ImageSet,
    device: torch.device,
) -> dict[str, Any]:
    """The transfer kernel's attack step: the (cached) adversarial set of the source on the first
    attack_images test images (data.eval_indices), evaluated on the fine-tuned student.

    Returns asr, clean_acc, adv_acc and the adversarial set as an artifact for the driver.
    """
    if ctx.source_path is None:
        raise KernelInputError("the ASR attack needs the source checkpoint file (source_path)")
    from workers.sources import sha256_of

    source_sha256 = sha256_of(ctx.source_path)
    indices = data.eval_indices(len(test_ds), int(params["attack_images"]))
    input_size = int(params["input_size"])
    attack_params: dict[str, Any] = {"eps": float(params["attack_eps"]), "step": float(params["attack_step"]),
                                     "steps": int(params["attack_steps"]), "m": float(params["attack_m"]),
                                     "clamp": float(params["attack_clamp"]), "input_size": input_size}
    recipe = data.transform_recipe(str(spec["dataset"]), params.get("augment"))
    if recipe != "utrera":
        attack_params["transform"] = recipe  # it shapes the clean images (keys of utrera sets stay as they were)
    loader = data.make_eval_loader(test_ds, indices, ATTACK_BATCH, input_size, recipe=recipe)
    source.to(device)
    clean = _normalised_batches(source, loader)
    labels = torch.tensor([test_ds.targets[i] for i in indices], dtype=torch.long)
    cache_dir = ctx.work_dir()
    # The test split's identity: generated datasets differ by their size params under one name.
    dataset_id = f"{spec['dataset']}|classes={test_ds.num_classes}|size={len(test_ds)}"
    adv = adversarial_set(source, source_sha256, dataset_id, indices, clean, attack_params, cache_dir)
    result = evaluate_asr(student, adv, clean, labels)
    key_hash = attack_key(source_sha256, dataset_id, indices, attack_params)
    artifact = {"key_hash": key_hash, "kind": "adversarial_set",
                "uri": str(adversarial_set_path(cache_dir, key_hash).resolve()),
                "meta": {"source_sha256": source_sha256, "dataset": spec["dataset"], "images": len(indices),
                         "params": attack_params}}
    return {"asr": result["asr"], "clean_acc": result["clean_acc"], "adv_acc": result["adv_acc"],
            "artifacts": [artifact]}
