"""The penultimate-layer attack of Renofeation (REFERENCE A) and its attack success rate (ASR).

The attack is crafted on the PRE-TRAINED SOURCE model only; the fine-tuned (transferred) model is
then evaluated on the stored adversarial set (workers.attacks.cache). Everything here is in
NORMALISED units, as in the reference code whose inputs are already normalised: x_norm = (x − mean)/std
with the ImageNet statistics of models.Classifier, and the source's post-normaliser network
(Classifier.features(..., normalized=True)) is attacked. ε, the step and the clamp box are therefore
normalised values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from workers import catalog, models
from workers.errors import KernelInputError
from workers.training import restored_modes

ATTACK_BATCH = 128  # the objective is per-sample and the steps are signs: the batch size does not change δ
OFF_TARGET_WEIGHT = 0.1




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
    m: float = catalog.PARAMS["attack_m"].default,
    clamp: float = catalog.PARAMS["attack_clamp"].default,
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
    with restored_modes(model, training=False):
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
    with restored_modes(model, training=False):
        preds = [model(chunk.to(device), normalized=True).argmax(1).cpu()
                 for chunk in torch.split(images_normalised, batch_size)]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def evaluate_asr(transferred_model: models.Classifier, adv_images: Tensor, clean_images: Tensor,
                 labels: Tensor | Sequence[int]) -> dict[str, Any]:
    """The fine-tuned model on the clean and adversarial sets (both normalised, same order as labels):
    attack_success_rate's dict (asr, clean_acc, adv_acc, n_clean_correct)."""
    clean_pred = predict_normalised(transferred_model, clean_images)
    adv_pred = predict_normalised(transferred_model, adv_images)
    return attack_success_rate(labels, clean_pred, adv_pred)


def normalised_images(source_model: models.Classifier, images: Tensor | Iterable[Any]) -> Tensor:
    """Clean images as the attack takes them (normalised, CPU): a tensor already normalised is passed
    through; a loader of ([0,1] images, labels) batches, e.g. data.make_eval_loader, is normalised."""
    if isinstance(images, Tensor):
        return images.detach().cpu()
    with torch.no_grad():
        chunks = [source_model.normalize(batch[0].to(source_model.mean.device)).cpu() for batch in images]
    if not chunks:
        raise KernelInputError("the attack got no images")
    return torch.cat(chunks)
