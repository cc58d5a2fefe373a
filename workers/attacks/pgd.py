"""PGD (ℓ2 / ℓ∞), single-step PGD, Gaussian noise, and robust accuracy under PGD.

Attacks follow MadryLab/robustness (REFERENCE B) and share one call shape (torchattacks style):
`attack(model, images, labels, *, ...) -> perturbed images`, images in [0,1] (the Classifier
normalises inside, so gradients flow through the normaliser as in robustness). No global state:
randomness comes from an optional torch.Generator, else torch's global RNG (which the kernels seed
per epoch, so training stays resumable).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers import catalog
from workers.errors import KernelInputError
from workers.training import restored_modes

# The threat models pgd implements: the catalog's adv_norm choices.
NORMS: tuple[str, ...] = catalog.PARAMS["adv_norm"].choices


def _per_sample_norm(x: Tensor) -> Tensor:
    """ℓ2 norm of each sample, shaped to broadcast against x."""
    norms: Tensor = x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return norms


def _project(x: Tensor, x0: Tensor, norm: str, eps: float) -> Tensor:
    """Back into the ε-ball around x0, then into [0,1] (robustness order; the clamp keeps the ball)."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta.renorm(p=2, dim=0, maxnorm=eps)
    return (x0 + delta).clamp(0, 1)


def _random_start(x0: Tensor, norm: str, eps: float, generator: torch.Generator | None) -> Tensor:
    """A uniform (ℓ∞) or scaled-Gaussian (ℓ2) start in the ε-ball, clamped to [0,1]."""
    if norm == "linf":
        noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) * 2 - 1
        return (x0 + eps * noise).clamp(0, 1)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return (x0 + eps * z / (_per_sample_norm(z) + 1e-10)).clamp(0, 1)


def _losses(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy of model(x)."""
    if x.device.type == "cuda":  # bf16 forward on GPU, as in training; the loss itself in fp32
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(x)
    else:
        logits = model(x)
    return F.cross_entropy(logits.float(), labels, reduction="none")


def pgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    norm: str,
    eps: float,
    step: float,
    steps: int,
    random_start: bool = True,
    use_best: bool = True,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD of REFERENCE B on images in [0,1]; returns the perturbed images (detached).

    ℓ∞: x ← x + step·sign(g); ℓ2: x ← x + step·g/(‖g‖₂+1e-10) per sample; then project onto the
    ε-ball around the input and clamp to [0,1]. Random start: ℓ∞ U(−ε, ε), ℓ2 ε·z/‖z‖ (z Gaussian),
    clamped. Untargeted ascends the mean cross-entropy (targeted: descends it towards `labels`).
    use_best returns, per sample, the iterate with the highest loss (lowest if targeted) among the
    start, every intermediate iterate and the final one. The model runs in eval mode; every
    module's train/eval flag is restored afterwards.
    """
    if norm not in NORMS:
        raise KernelInputError(f"unknown PGD norm {norm!r} (known: {', '.join(NORMS)})")
    if eps <= 0 or step <= 0 or steps < 1:
        raise KernelInputError(f"PGD needs eps > 0, step > 0 and steps >= 1, got {eps}, {step}, {steps}")
    sign = -1.0 if targeted else 1.0
    x0 = images.detach()
    labels = labels.detach()
    with restored_modes(model, training=False):
        x = _random_start(x0, norm, eps, generator) if random_start else x0.clone()
        best_x = best_loss = None
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            losses = _losses(model, x, labels)
            (grad,) = torch.autograd.grad(sign * losses.mean(), [x])
            with torch.no_grad():
                if use_best:
                    best_x, best_loss = _keep_best(best_x, best_loss, x.detach(), losses.detach(), sign)
                if norm == "linf":
                    x = x + step * grad.sign()
                else:
                    x = x + step * grad / (_per_sample_norm(grad) + 1e-10)
                x = _project(x, x0, norm, eps)
        if not use_best:
            return x.detach()
        with torch.no_grad():
            losses = _losses(model, x, labels)
            best_x, _ = _keep_best(best_x, best_loss, x.detach(), losses, sign)
        assert best_x is not None
        return best_x


def _keep_best(
    best_x: Tensor | None, best_loss: Tensor | None, x: Tensor, losses: Tensor, sign: float
) -> tuple[Tensor, Tensor]:
    """Per sample, keep x where its loss beats the best so far (in the direction of `sign`)."""
    if best_x is None or best_loss is None:
        return x.clone(), losses.clone()
    replace = sign * losses > sign * best_loss
    best_x[replace] = x[replace]
    best_loss[replace] = losses[replace]
    return best_x, best_loss


def pgd1(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    norm: str,
    eps: float,
    step: float | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Single-step PGD = pgd(steps=1, step=eps unless given, use_best=False).

    Without a random start this is FGSM (ℓ∞) / the fast gradient method (ℓ2): one forward and one
    backward per batch, which is the point of single-step adversarial training. With random_start and
    step ≈ 1.25·ε it is Wong et al.'s "fast" training step.
    """
    return pgd(model, images, labels, norm=norm, eps=eps, step=eps if not step else step, steps=1,
               random_start=random_start, use_best=False, generator=generator)


def gaussian_noise(
    images: Tensor, *, sigma: float, l2_max: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """images + δ, δ ~ N(0, σ²) per pixel, clamped to [0,1] (torchattacks GN; the Classifier expects [0,1]).

    With l2_max > 0, each image's δ is first projected onto the ℓ2 ball of that radius (Utrera et al. A.10:
    ‖δ‖₂ ≤ 3, [0,1] pixel units); the clamp only shrinks δ, so the bound holds for the returned images too.
    """
    if sigma < 0:
        raise KernelInputError(f"noise sigma must be >= 0, got {sigma}")
    if l2_max < 0:
        raise KernelInputError(f"noise l2_max must be >= 0 (0 = no projection), got {l2_max}")
    delta = sigma * torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    if l2_max > 0:
        delta = delta.renorm(p=2, dim=0, maxnorm=l2_max)
    return (images + delta).clamp(0, 1)


def robust_accuracy(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: torch.device, *, norm: str, eps: float,
    steps: int, step: float | None = None, random_start: bool = False, generator: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy under PGD with the robustness eval convention: step 2.5·ε/steps (unless `step`), best
    iterate.
    With random_start, the starts come from `generator` (seed it for a reproducible number); the best
    iterate includes the start. Model modes are restored."""
    correct = seen = 0
    with restored_modes(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            adv = pgd(model, x, y, norm=norm, eps=eps, step=step or 2.5 * eps / steps, steps=steps,
                      random_start=random_start, use_best=True, generator=generator)
            model.eval()
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == y).sum())
            seen += int(y.numel())
    return correct / max(seen, 1)
