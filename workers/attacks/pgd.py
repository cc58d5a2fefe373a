"""PGD (ℓ2 / ℓ∞), single-step PGD, Gaussian noise, and the source-training kernel.

Attacks follow MadryLab/robustness (REFERENCE B) and share one call shape (torchattacks style):
`attack(model, images, labels, *, ...) -> perturbed images`, images in [0,1] (the Classifier
normalises inside, so gradients flow through the normaliser as in robustness). No global state:
randomness comes from an optional torch.Generator, else torch's global RNG (which the kernels seed
per epoch, so training stays resumable).

Source methods (spec["method"]):
  natural   plain cross-entropy.
  pgd-l2    PGD training in the ℓ2 ball; adv_eps > 0, adv_step > 0, adv_steps >= 1 (adv_norm must be l2
            or absent).
  pgd-linf  the same in the ℓ∞ ball (adv_norm linf or absent).
  pgd1      single-step PGD (FGSM-style) in the adv_norm ball: steps = 1, step = adv_step or adv_eps.
  gaussian  inputs + N(0, noise_sigma²) noise, clamped to [0,1]; noise_sigma > 0.
Training attacks use the robustness training defaults: no random start, best iterate (pgd1: final iterate).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers import data, models
from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.training import (
    TRAINING_DEFAULTS,
    BatchStream,
    derive_seed,
    eval_epochs_of,
    evaluate,
    make_lr_schedule,
    make_optimizer,
    pack_state,
    seed_everything,
    train_epoch,
    unpack_state,
)

NORMS = ("l2", "linf")
STATE_KIND = "source"
# Threat model of natural / gaussian sources' robust_acc when the spec names none (adv_eps = 0).
DEFAULT_EVAL_NORM, DEFAULT_EVAL_EPS = "linf", 8 / 255
# robust_eval_steps when the spec names none: adversarial sources get twice their training steps (a
# little stronger than the attack they were trained on); natural / gaussian ones this many, which costs
# about as much as that for the smoke sources and little next to a training epoch.
NATURAL_EVAL_STEPS = 4

DEFAULTS: dict[str, Any] = {**TRAINING_DEFAULTS, "robust_eval_steps": None}


# ---------------------------------------------------------------------------------------------- attacks


def _per_sample_norm(x: Tensor) -> Tensor:
    """ℓ2 norm of each sample, shaped to broadcast against x."""
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def _project(x: Tensor, x0: Tensor, norm: str, eps: float) -> Tensor:
    """Back into the ε-ball around x0, then into [0,1] (robustness order; the clamp keeps the ball)."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta.renorm(p=2, dim=0, maxnorm=eps)
    return (x0 + delta).clamp(0, 1)


def _random_start(x0: Tensor, norm: str, eps: float, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) * 2 - 1
        return (x0 + eps * noise).clamp(0, 1)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return (x0 + eps * z / (_per_sample_norm(z) + 1e-10)).clamp(0, 1)


def _losses(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
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
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
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
    finally:
        for module, training in modes:
            module.training = training


def _keep_best(
    best_x: Tensor | None, best_loss: Tensor | None, x: Tensor, losses: Tensor, sign: float
) -> tuple[Tensor, Tensor]:
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


def gaussian_noise(images: Tensor, *, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """images + N(0, σ²) per pixel, clamped to [0,1] (torchattacks GN; the Classifier expects [0,1])."""
    if sigma < 0:
        raise KernelInputError(f"noise sigma must be >= 0, got {sigma}")
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + sigma * noise).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- source kernel


def spec_digest(spec: Mapping[str, Any]) -> str:
    """sha256 of the spec's canonical JSON; equals TrialSpec.spec_hash for a TrialSpec.to_dict()."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_source_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's params over the defaults, with the method's threat model checked and filled in."""
    method = spec["method"]
    given = dict(spec.get("params") or {})
    params = {**DEFAULTS, **given}
    if method in ("pgd-l2", "pgd-linf"):
        norm = method.removeprefix("pgd-")
        if given.get("adv_norm", norm) != norm:
            raise KernelInputError(f"method {method} trains in the {norm} ball, got adv_norm={given['adv_norm']!r}")
        params["adv_norm"] = norm
        if params["adv_eps"] <= 0 or params["adv_step"] <= 0 or params["adv_steps"] < 1:
            raise KernelInputError(f"method {method} needs adv_eps > 0, adv_step > 0 and adv_steps >= 1")
    elif method == "pgd1":
        params["adv_norm"] = given.get("adv_norm", "linf")
        if params["adv_eps"] <= 0 or params["adv_steps"] > 1:
            raise KernelInputError("method pgd1 needs adv_eps > 0 (adv_steps is 1; adv_step defaults to adv_eps)")
        params["adv_steps"] = 1
        params["adv_step"] = params["adv_step"] if params["adv_step"] > 0 else params["adv_eps"]
    elif method in ("natural", "gaussian"):
        params["adv_norm"] = given.get("adv_norm", DEFAULT_EVAL_NORM)
        if params["adv_steps"] > 0:
            raise KernelInputError(f"adv_steps > 0 is adversarial training (pgd-l2/pgd-linf/pgd1), not {method}")
        if method == "gaussian" and params["noise_sigma"] <= 0:
            raise KernelInputError("method gaussian needs noise_sigma > 0")
    else:
        raise KernelInputError(f"unknown source method {method!r} (known: natural, pgd-l2, pgd-linf, pgd1, gaussian)")
    if method != "gaussian" and params["noise_sigma"] > 0:
        raise KernelInputError(f"noise_sigma > 0 is method gaussian, not {method}")
    if params["adv_norm"] not in NORMS:
        raise KernelInputError(f"unknown adv_norm {params['adv_norm']!r} (known: {', '.join(NORMS)})")
    for name in ("batch_size", "input_size"):
        if params[name] < 1:
            raise KernelInputError(f"{name} must be >= 1, got {params[name]}")
    if params["robust_eval_steps"] is None:  # every source reports robust accuracy unless told 0
        adv_steps = int(params["adv_steps"])
        params["robust_eval_steps"] = 2 * adv_steps if adv_steps > 0 else NATURAL_EVAL_STEPS
    if params["robust_eval_steps"] < 0:
        raise KernelInputError(f"robust_eval_steps must be >= 0, got {params['robust_eval_steps']}")
    return params


def robust_eval_threat(params: Mapping[str, Any]) -> tuple[str, float] | None:
    """(norm, eps) of the robust_acc evaluation, or None when robust_eval_steps is 0.

    The spec's adv_norm / adv_eps; for natural and gaussian sources without an adv_eps, ℓ∞ 8/255.
    """
    if int(params["robust_eval_steps"]) <= 0:
        return None
    if params["adv_eps"] > 0:
        return str(params["adv_norm"]), float(params["adv_eps"])
    return DEFAULT_EVAL_NORM, DEFAULT_EVAL_EPS


def robust_accuracy(
    model: nn.Module, loader: Any, device: torch.device, *, norm: str, eps: float, steps: int,
    random_start: bool = False, generator: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy under PGD with the robustness eval convention: step 2.5·ε/steps, best iterate.
    With random_start, the starts come from `generator` (seed it for a reproducible number); the best
    iterate includes the start. Model modes are restored."""
    correct = seen = 0
    modes = [(module, module.training) for module in model.modules()]
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            adv = pgd(model, x, y, norm=norm, eps=eps, step=2.5 * eps / steps, steps=steps,
                      random_start=random_start, use_best=True, generator=generator)
            model.eval()
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == y).sum())
            seen += int(y.numel())
    finally:
        for module, training in modes:
            module.training = training
    return correct / max(seen, 1)


def _training_perturbation(method: str, params: Mapping[str, Any]):
    norm, eps, step, steps = params["adv_norm"], float(params["adv_eps"]), float(params["adv_step"]), \
        int(params["adv_steps"])
    if method in ("pgd-l2", "pgd-linf"):
        def adversarial(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return pgd(model, x, y, norm=norm, eps=eps, step=step, steps=steps, random_start=False, use_best=True)

        return adversarial
    if method == "pgd1":
        def single_step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return pgd1(model, x, y, norm=norm, eps=eps, step=step)

        return single_step
    if method == "gaussian":
        sigma = float(params["noise_sigma"])

        def noisy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return gaussian_noise(x, sigma=sigma)

        return noisy
    return None


def run_source(spec: dict[str, Any], ctx: KernelContext, report: Report) -> dict[str, Any]:
    """Train a source model from random init; report per eval epoch; write its checkpoint.

    Reports train_loss, train_acc (on the perturbed batches), test_acc, robust_acc (on the same eval
    images as test_acc; PGD from a random start seeded by the spec, the same at every epoch; off only
    with robust_eval_steps 0), ood_acc (when spec["ood"]), lr, seconds. The checkpoint goes to
    <artifacts>/sources/<spec digest>.pt.
    """
    if spec.get("kind", "source") != "source":
        raise KernelInputError(f"run_source got a {spec.get('kind')!r} spec")
    params = resolve_source_params(spec)
    method = spec["method"]
    seed, epochs = int(spec["seed"]), int(spec["epochs"])
    device = torch.device(ctx.device)
    seed_everything(seed, device)

    # ---- data
    train_ds = data.load_split(spec["dataset"], True, ctx.data_root, ctx.download, params)
    test_ds = data.load_split(spec["dataset"], False, ctx.data_root, ctx.download, params)
    train_idx = data.subset_indices(train_ds.targets, spec.get("subset_size"), seed)
    batch_size, input_size, eval_images = int(params["batch_size"]), int(params["input_size"]), \
        int(params["eval_images"])
    recipe = data.transform_recipe(spec["dataset"], params["augment"])
    test_loader = data.make_eval_loader(test_ds, data.eval_indices(len(test_ds), eval_images), batch_size, input_size,
                                        recipe=recipe)
    ood_loader = None
    if spec.get("ood"):
        ood_ds = data.load_ood(spec["dataset"], spec["ood"], ctx.data_root, ctx.download, params)
        ood_loader = data.make_eval_loader(ood_ds, data.eval_indices(len(ood_ds), eval_images), batch_size,
                                           input_size, recipe=recipe)
    threat = robust_eval_threat(params)

    # ---- model and optimisation
    torch.manual_seed(derive_seed(seed, "init"))
    model = models.build_model(spec["arch"], train_ds.num_classes).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), float(params["lr"]), float(params["momentum"]),
                               float(params["weight_decay"]))

    def pass_loader(pass_seed: int):
        return data.make_train_loader(train_ds, train_idx, batch_size, input_size, seed=pass_seed, augment=True,
                                      recipe=recipe)

    stream = BatchStream(pass_loader, seed)
    per_epoch = int(params["iterations_per_epoch"]) or stream.batches_per_pass
    schedule = make_lr_schedule(params["schedule"], float(params["lr"]), epochs, per_epoch)
    eval_epochs = eval_epochs_of(params["eval_epochs"], epochs)
    perturb = _training_perturbation(method, params)

    # ---- resume
    start_epoch, last = 0, {}
    if ctx.resume_state is not None:
        start_epoch, _, extra = unpack_state(ctx.resume_state, model=model, optimizer=optimizer)
        if extra.get("kind") != STATE_KIND or start_epoch > epochs:
            raise KernelInputError("resume state does not belong to this source trial")
        last = dict(extra.get("last") or {})

    for epoch in range(start_epoch + 1, epochs + 1):
        started = time.perf_counter()
        torch.manual_seed(derive_seed(seed, "epoch", epoch))  # noise draws follow from (seed, epoch)
        result = train_epoch(model, stream.loader((epoch - 1) * per_epoch, per_epoch), optimizer, schedule,
                             step=(epoch - 1) * per_epoch, device=device, perturb=perturb)
        if epoch not in eval_epochs:
            continue
        metrics: dict[str, float] = {"train_loss": result.train_loss, "train_acc": result.train_acc,
                                     "test_acc": evaluate(model, test_loader, device)[0], "lr": result.lr}
        if threat is not None:
            starts = torch.Generator(device=device).manual_seed(derive_seed(seed, "robust-eval"))
            metrics["robust_acc"] = robust_accuracy(model, test_loader, device, norm=threat[0], eps=threat[1],
                                                    steps=int(params["robust_eval_steps"]), random_start=True,
                                                    generator=starts)
        if ood_loader is not None:
            metrics["ood_acc"] = evaluate(model, ood_loader, device)[0]
        metrics["seconds"] = time.perf_counter() - started
        report(epoch, metrics)
        last = {k: metrics[k] for k in ("test_acc", "robust_acc", "ood_acc") if k in metrics}
        if ctx.save_state is not None:
            ctx.save_state(pack_state(model=model, optimizer=optimizer, epoch=epoch, step=result.steps,
                                      schedule=schedule, extra={"kind": STATE_KIND, "last": last}))

    # ---- the checkpoint, named by the spec so that reruns overwrite rather than accumulate
    digest = spec_digest(spec)
    path = ctx.work_dir("sources") / f"{digest}.pt"
    meta = {"spec_hash": digest, "arch": spec["arch"], "dataset": spec["dataset"], "method": method,
            "num_classes": int(train_ds.num_classes), "epochs": epochs, "input_size": input_size,
            "test_acc": last.get("test_acc"), "robust_acc": last.get("robust_acc"),
            "threat": None if threat is None else {"norm": threat[0], "eps": threat[1]}}
    sha256 = models.save_source_checkpoint(model, path, meta)
    uri = str(path.resolve())
    return {
        "test_acc": last.get("test_acc"),
        "robust_acc": last.get("robust_acc"),
        "ood_acc": last.get("ood_acc"),
        "asr": None,
        "adv_acc": None,
        "clean_acc": None,
        "checkpoint_path": uri,
        "checkpoint_sha256": sha256,
        "artifacts": [{"key_hash": digest, "kind": "source_checkpoint", "uri": uri,
                       "meta": {"sha256": sha256, "arch": spec["arch"], "dataset": spec["dataset"],
                                "method": method}}],
    }
