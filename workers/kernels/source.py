"""The source-training kernel: train a source model from random init with one of the methods below.

Source methods (spec["method"]):
  natural   plain cross-entropy.
  pgd-l2    PGD training in the ℓ2 ball; adv_eps > 0, adv_step > 0, adv_steps >= 1 (adv_norm must be l2
            or absent).
  pgd-linf  the same in the ℓ∞ ball (adv_norm linf or absent).
  pgd1      single-step PGD (FGSM-style) in the adv_norm ball: steps = 1, step = adv_step or adv_eps.
  gaussian  inputs + δ, δ ~ N(0, noise_sigma²) projected per image onto the ℓ2 ball of noise_l2_max (Utrera
            A.10: 3), clamped to [0,1]; noise_sigma > 0.
Training attacks use the robustness training defaults: no random start, best iterate (pgd1: final iterate).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from workers import catalog, models
from workers.attacks import gaussian_noise, pgd, pgd1, robust_accuracy
from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.kernels.common import evaluate_report_checkpoint, load_kernel_data, resume
from workers.training import (
    BatchStream,
    Perturb,
    derive_seed,
    eval_epochs_of,
    make_lr_schedule,
    make_optimizer,
    seed_everything,
    train_epoch,
)

STATE_KIND = "source"
# Threat model of natural / gaussian sources' robust_acc when the spec names none (adv_eps = 0).
DEFAULT_EVAL_NORM, DEFAULT_EVAL_EPS = "linf", 8 / 255
# robust_acc: the robustness library's eval convention (REFERENCE B), robust_eval_steps (default 20) of
# step 2.5·ε/steps, the catalog's Derived robust_eval_step.
ROBUST_EVAL_STEP_FACTOR = 2.5


def spec_digest(spec: Mapping[str, Any]) -> str:
    """sha256 of the spec's canonical JSON; equals TrialSpec.spec_hash for a TrialSpec.to_dict()."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _fixed_steps(method: str) -> int | None:
    """The adv_steps a method fixes (the catalog's per-method adv_steps: pgd1's single step), else None."""
    fixed = catalog.PARAMS["adv_steps"].per_method.get(method)
    return None if fixed is None else int(fixed)


def resolve_source_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's params over the catalog's defaults for its method (workers.catalog.PARAMS), checked
    against the method's traits (adversarial, norm, noise), the Derived defaults applied."""
    method = spec["method"]
    traits = catalog.method(method, "source")
    given = dict(spec.get("params") or {})
    params = {**catalog.param_defaults("source", method), **given}
    adversarial = "/".join(name for name in catalog.methods("source") if catalog.METHODS[name].adversarial)
    if traits.adversarial and traits.norm is not None:  # PGD in the ball the method names
        norm = traits.norm
        if given.get("adv_norm", norm) != norm:
            raise KernelInputError(f"method {method} trains in the {norm} ball, got adv_norm={given['adv_norm']!r}")
        params["adv_norm"] = norm
        if params["adv_eps"] <= 0 or params["adv_step"] <= 0 or params["adv_steps"] < 1:
            raise KernelInputError(f"method {method} needs adv_eps > 0, adv_step > 0 and adv_steps >= 1")
    elif traits.adversarial:  # a fixed number of steps in the adv_norm ball (pgd1: one)
        steps = _fixed_steps(method)
        if steps is None:
            raise KernelInputError(f"method {method} names neither a norm nor a number of steps in the catalog")
        if params["adv_eps"] <= 0 or params["adv_steps"] > steps:
            raise KernelInputError(f"method {method} needs adv_eps > 0 (adv_steps is {steps}; adv_step defaults to "
                                   "adv_eps)")
        params["adv_steps"] = steps
        # Derived("adv_eps"): also when the spec gives 0 (0 = unset)
        step = params["adv_step"]
        params["adv_step"] = step if not isinstance(step, catalog.Derived) and step > 0 else params["adv_eps"]
    else:  # natural / gaussian: adv_norm is only the robust evaluation's threat model
        if params["adv_steps"] > 0:
            raise KernelInputError(f"adv_steps > 0 is adversarial training ({adversarial}), not {method}")
        if traits.noise and params["noise_sigma"] <= 0:
            raise KernelInputError(f"method {method} needs noise_sigma > 0")
    if not traits.noise and params["noise_sigma"] > 0:
        noisy = "/".join(name for name in catalog.methods("source") if catalog.METHODS[name].noise)
        raise KernelInputError(f"noise_sigma > 0 is method {noisy}, not {method}")
    catalog.check_choice("adv_norm", params["adv_norm"])
    for name in ("batch_size", "input_size"):
        if params[name] < 1:
            raise KernelInputError(f"{name} must be >= 1, got {params[name]}")
    # every source reports robust accuracy unless told 0 (robust_eval_steps default: 20)
    if params["robust_eval_steps"] is None:
        params["robust_eval_steps"] = catalog.PARAMS["robust_eval_steps"].default
    if params["robust_eval_steps"] < 0:
        raise KernelInputError(f"robust_eval_steps must be >= 0, got {params['robust_eval_steps']}")
    # Derived("2.5 * eps / robust_eval_steps"), eps of the robust evaluation's threat (0 or None = unset)
    step = params["robust_eval_step"]
    if isinstance(step, catalog.Derived) or step is None or step <= 0:
        threat = robust_eval_threat(params)
        params["robust_eval_step"] = (0.0 if threat is None
                                      else ROBUST_EVAL_STEP_FACTOR * threat[1] / int(params["robust_eval_steps"]))
    if params["noise_l2_max"] < 0:
        raise KernelInputError(f"noise_l2_max must be >= 0 (0 = no projection), got {params['noise_l2_max']}")
    derived = [name for name, value in params.items() if isinstance(value, catalog.Derived)]
    if derived:
        raise KernelInputError(f"no kernel rule for the derived default of {', '.join(derived)} ({method})")
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


def training_perturbation(method: str, params: Mapping[str, Any]) -> Perturb | None:
    """The method's input perturbation for training, by its traits (None for natural)."""
    traits = catalog.method(method, "source")
    norm, eps, step, steps = params["adv_norm"], float(params["adv_eps"]), float(params["adv_step"]), \
        int(params["adv_steps"])
    if traits.adversarial and _fixed_steps(method) is None:
        def adversarial(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return pgd(model, x, y, norm=norm, eps=eps, step=step, steps=steps, random_start=False, use_best=True)

        return adversarial
    if traits.adversarial:
        def single_step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return pgd1(model, x, y, norm=norm, eps=eps, step=step)

        return single_step
    if traits.noise:
        sigma, l2_max = float(params["noise_sigma"]), float(params["noise_l2_max"])

        def noisy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return gaussian_noise(x, sigma=sigma, l2_max=l2_max)

        return noisy
    return None


def _robust_evaluator(
    threat: tuple[str, float] | None, steps: int, step: float, loader: DataLoader[tuple[Tensor, Tensor]],
    device: torch.device, seed: int,
) -> Callable[[nn.Module], float] | None:
    """robust_acc of a model at an eval epoch: PGD from random starts seeded by the spec, the same at every
    epoch; None when robust_eval_steps is 0."""
    if threat is None:
        return None
    norm, eps = threat

    def robust_acc(model: nn.Module) -> float:
        starts = torch.Generator(device=device).manual_seed(derive_seed(seed, "robust-eval"))
        return robust_accuracy(model, loader, device, norm=norm, eps=eps, steps=steps, step=step,
                               random_start=True, generator=starts)

    return robust_acc


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
    kernel_data = load_kernel_data(spec, ctx, params, seed)
    train_ds, input_size = kernel_data.train_ds, kernel_data.input_size
    threat = robust_eval_threat(params)

    # ---- model and optimisation
    torch.manual_seed(derive_seed(seed, "init"))
    model = models.build_model(spec["arch"], train_ds.num_classes).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), float(params["lr"]), float(params["momentum"]),
                               float(params["weight_decay"]))

    stream = BatchStream(kernel_data.pass_loader, seed)
    per_epoch = int(params["iterations_per_epoch"]) or stream.batches_per_pass
    schedule = make_lr_schedule(params["schedule"], float(params["lr"]), epochs, per_epoch)
    eval_epochs = eval_epochs_of(params["eval_epochs"], epochs)
    perturb = training_perturbation(method, params)

    # ---- resume
    start_epoch, last = resume(ctx, model=model, optimizer=optimizer, state_kind=STATE_KIND, total_epochs=epochs)
    robust_acc = _robust_evaluator(threat, int(params["robust_eval_steps"]), float(params["robust_eval_step"]),
                                   kernel_data.robust_loader, device, seed)

    for epoch in range(start_epoch + 1, epochs + 1):
        started = time.perf_counter()
        torch.manual_seed(derive_seed(seed, "epoch", epoch))  # noise draws follow from (seed, epoch)
        result = train_epoch(model, stream.loader((epoch - 1) * per_epoch, per_epoch), optimizer, schedule,
                             step=(epoch - 1) * per_epoch, device=device, perturb=perturb)
        if epoch not in eval_epochs:
            continue
        last = evaluate_report_checkpoint(epoch, result, started, model=model, kernel_data=kernel_data, device=device,
                                          report=report, ctx=ctx, optimizer=optimizer, schedule=schedule,
                                          state_kind=STATE_KIND, robust_acc=robust_acc)

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
