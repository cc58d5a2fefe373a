"""The transfer kernel: fine-tune a pre-trained source on a target with one of the methods below.

Methods (REFERENCE A, C, E):
  finetune     pretrained start, new head; the last `blocks` residual blocks + head trainable (None =
               the whole network). The model stays in train mode, so BN in frozen blocks uses batch
               statistics (bn_mode "train", Utrera); bn_mode "eval" puts frozen-block BN in eval mode.
  linear       frozen backbone in eval mode (BN statistics untouched), new head only.
  l2sp         finetune + λ_sp·Σ‖w − w0‖² (lambda_sp > 0; forces SGD weight decay to 0).
  delta        finetune + λ_feat·Σ_k MSE(student stage k, frozen source stage k) (lambda_feat > 0).
  delta-r      delta with the student re-initialised: Renofeation's "DELTA-R" ablation, i.e.
               renofeation without spatial dropout and without SWA.
  retrain      re-initialised student, plain cross-entropy (the source only serves the ASR attack).
  renofeation  re-init + λ_feat distillation + spatial dropout (default 0.1) + an SWA stage of
               swa_epochs (default ⌊epochs/3⌋, the code's 30k:90k) at the constant swa_lr.
               dropout=0 / swa_epochs=0 are the ablations.
Any method: beta_fc > 0 adds (β/2)(‖W_fc‖²+‖b_fc‖²); adv_steps > 0 trains on PGD examples;
noise_sigma > 0 trains on Gaussian-noised inputs.

Epochs: `epochs` main epochs, then `swa_epochs` SWA epochs numbered on (epochs+1 …). Reports at the
eval epochs; the last report (and the returned test_acc) is of the final weights — after SWA the
averaged, BN-recalibrated ones; earlier SWA-stage reports are of the current (not averaged) weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers import data, models
from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.losses import fc_penalty, feature_distillation_loss, l2sp_penalty, snapshot_parameters
from workers.swa import WeightAverager, recalibrate_bn
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

DEFAULTS: dict[str, Any] = {
    **TRAINING_DEFAULTS,
    "head_init": "normal",
    "bn_mode": "train",
    "lambda_feat": 0.0,
    "lambda_sp": 0.0,
    "beta_fc": 0.0,
    "dropout": 0.0,
    "swa_epochs": 0,
    "swa_lr": 0.005,
    "swa_every": 500,
    "adv_norm": "linf",
    "attack_eps": 0.1,
    "attack_step": 0.01,
    "attack_steps": 0,
    "attack_m": 1000.0,
    "attack_clamp": 2.2,
    "attack_images": 1000,
}


@dataclass(frozen=True)
class Method:
    reinit: bool  # re-initialise the student (the source stays the teacher and the attack model)
    distill: bool  # feature distillation from the frozen source (needs lambda_feat > 0)
    l2sp: bool = False  # needs lambda_sp > 0
    linear: bool = False  # head only, backbone in eval mode


METHODS: dict[str, Method] = {
    "finetune": Method(reinit=False, distill=False),
    "linear": Method(reinit=False, distill=False, linear=True),
    "l2sp": Method(reinit=False, distill=False, l2sp=True),
    "delta": Method(reinit=False, distill=True),
    "delta-r": Method(reinit=True, distill=True),
    "retrain": Method(reinit=True, distill=False),
    "renofeation": Method(reinit=True, distill=True),
}
STATE_KIND = "transfer"


def resolve_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's params over the defaults, with the method-specific defaults and checks."""
    method = spec["method"]
    if method not in METHODS:
        raise KernelInputError(f"unknown transfer method {method!r} (known: {', '.join(METHODS)})")
    given = dict(spec.get("params") or {})
    params = {**DEFAULTS, **given}
    if method == "renofeation":
        if "dropout" not in given:
            params["dropout"] = 0.1
        if "swa_epochs" not in given:
            params["swa_epochs"] = max(1, int(spec["epochs"]) // 3)
    info = METHODS[method]
    if info.distill and params["lambda_feat"] <= 0:
        raise KernelInputError(f"method {method} needs lambda_feat > 0")
    if not info.distill and params["lambda_feat"] > 0:
        raise KernelInputError(f"lambda_feat > 0 is method delta/delta-r/renofeation, not {method}")
    if info.l2sp and params["lambda_sp"] <= 0:
        raise KernelInputError("method l2sp needs lambda_sp > 0")
    if not info.l2sp and params["lambda_sp"] > 0:
        raise KernelInputError(f"lambda_sp > 0 is method l2sp, not {method}")
    if params["bn_mode"] not in ("train", "eval"):
        raise KernelInputError(f"unknown bn_mode {params['bn_mode']!r} (known: train, eval)")
    if info.linear and spec.get("blocks") not in (None, 0):
        raise KernelInputError(f"method linear trains the head only, got blocks={spec.get('blocks')}")
    if params["adv_steps"] > 0 and (params["adv_eps"] <= 0 or params["adv_step"] <= 0):
        raise KernelInputError("adversarial fine-tuning (adv_steps > 0) needs adv_eps > 0 and adv_step > 0")
    if params["attack_steps"] > 0 and (params["attack_eps"] <= 0 or params["attack_step"] <= 0):
        raise KernelInputError("attack budget must be > 0 (attack_eps and attack_step)")
    for name in ("batch_size", "input_size", "swa_every"):
        if params[name] < 1:
            raise KernelInputError(f"{name} must be >= 1, got {params[name]}")
    if params["dropout"] < 0 or params["dropout"] >= 1:
        raise KernelInputError(f"dropout must be in [0, 1), got {params['dropout']}")
    return params


def _load_source(spec: Mapping[str, Any], ctx: KernelContext) -> models.Classifier | None:
    if spec["source"] == "scratch":
        return None
    path = ctx.source_path
    if path is None:
        from workers.sources import resolve_source_path

        path = resolve_source_path(spec["source"], ctx.data_root)
        ctx.source_path = path
    assert path is not None
    return models.load_source_model(spec["arch"], path)


def _frozen_bn_to_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _mode_setter(linear: bool, bn_mode: str) -> Callable[[nn.Module], None]:
    def set_mode(model: nn.Module) -> None:
        if linear:
            model.eval()  # frozen backbone: BN statistics stay those of the source
            return
        model.train()
        if bn_mode == "eval":
            _frozen_bn_to_eval(model)

    return set_mode


def _perturbation(params: Mapping[str, Any]):
    if params["adv_steps"] > 0:
        from workers.adversarial import pgd

        def adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # MadryLab training defaults (REFERENCE B): no random start, best iterate.
            return pgd(model, x, y, norm=params["adv_norm"], eps=params["adv_eps"], step=params["adv_step"],
                       steps=params["adv_steps"], random_start=False, use_best=True)

        return adversarial
    if params["noise_sigma"] > 0:
        sigma = float(params["noise_sigma"])

        def noisy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            from workers.adversarial import gaussian_noise

            return gaussian_noise(x, sigma=sigma)  # clamped to [0,1], as in the gaussian source method

        return noisy
    return None


def run_transfer(spec: dict[str, Any], ctx: KernelContext, report: Report) -> dict[str, Any]:
    if spec.get("kind", "transfer") != "transfer":
        raise KernelInputError(f"run_transfer got a {spec.get('kind')!r} spec")
    params = resolve_params(spec)
    method = METHODS[spec["method"]]
    seed = int(spec["seed"])
    epochs = int(spec["epochs"])
    device = torch.device(ctx.device)
    seed_everything(seed, device)

    # ---- data
    train_ds = data.load_split(spec["dataset"], True, ctx.data_root, ctx.download, params)
    test_ds = data.load_split(spec["dataset"], False, ctx.data_root, ctx.download, params)
    train_idx = data.subset_indices(train_ds.targets, spec.get("subset_size"), seed)
    batch_size, input_size = int(params["batch_size"]), int(params["input_size"])
    recipe = data.transform_recipe(spec["dataset"], params["augment"])
    test_loader = data.make_eval_loader(
        test_ds, data.eval_indices(len(test_ds), int(params["eval_images"])), batch_size, input_size, recipe=recipe
    )
    ood_loader = None
    if spec.get("ood"):
        ood_ds = data.load_ood(spec["dataset"], spec["ood"], ctx.data_root, ctx.download, params)
        ood_loader = data.make_eval_loader(
            ood_ds, data.eval_indices(len(ood_ds), int(params["eval_images"])), batch_size, input_size,
            recipe=recipe,
        )

    # ---- models: the source stays untouched (teacher, attack model); the student is a copy
    source = _load_source(spec, ctx)
    if source is None and method.distill:
        raise KernelInputError(f"method {spec['method']} needs a pre-trained source (got source scratch)")
    if source is None:
        torch.manual_seed(derive_seed(seed, "scratch-init"))
        student = models.build_model(spec["arch"], train_ds.num_classes)
    else:
        student = copy.deepcopy(source)
    head_generator = torch.Generator().manual_seed(derive_seed(seed, "head"))
    models.replace_head(student, train_ds.num_classes, init=params["head_init"], generator=head_generator)
    # w0 after loading and the new head, before any re-init (REFERENCE A)
    w0 = snapshot_parameters(student) if method.l2sp else None
    if method.reinit:
        torch.manual_seed(derive_seed(seed, "reinit"))
        models.reinitialize(student.net)
        models.replace_head(student, train_ds.num_classes, init=params["head_init"], generator=head_generator)
    if params["dropout"] > 0:
        models.set_spatial_dropout(student, float(params["dropout"]))
    models.set_trainable_blocks(student, 0 if method.linear else spec.get("blocks"))
    student.to(device)
    if device.type == "cuda":
        student.to(memory_format=torch.channels_last)
    teacher = None
    if source is not None:
        source.to(device).eval().requires_grad_(False)
        teacher = source if method.distill else None
    set_mode = _mode_setter(method.linear, params["bn_mode"])

    # ---- loss terms
    lambda_feat, lambda_sp, beta_fc = (float(params[k]) for k in ("lambda_feat", "lambda_sp", "beta_fc"))
    if w0 is not None:
        w0 = {k: v.to(device) for k, v in w0.items()}

    def extra_loss(x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, stages: Any) -> torch.Tensor:
        total = torch.zeros((), device=device)
        if teacher is not None:
            with torch.no_grad():
                teacher_stages = models.stage_outputs(teacher, x)
            total = total + lambda_feat * feature_distillation_loss(stages, teacher_stages)
        if beta_fc > 0:
            total = total + fc_penalty(student.head, beta_fc)
        if w0 is not None:
            total = total + lambda_sp * l2sp_penalty(student, w0)
        return total

    needs_extra = teacher is not None or beta_fc > 0 or w0 is not None
    forward = (lambda model, x: models.forward_with_stages(model, x)) if teacher is not None else None
    perturb = _perturbation(params)

    # ---- optimisation
    trainable = [p for p in student.parameters() if p.requires_grad]
    weight_decay = 0.0 if lambda_sp > 0 else float(params["weight_decay"])
    optimizer = make_optimizer(trainable, float(params["lr"]), float(params["momentum"]), weight_decay)

    def pass_loader(pass_seed: int):
        return data.make_train_loader(train_ds, train_idx, batch_size, input_size, seed=pass_seed, augment=True,
                                      recipe=recipe)

    stream = BatchStream(pass_loader, seed)
    per_epoch = int(params["iterations_per_epoch"]) or stream.batches_per_pass
    main_schedule = make_lr_schedule(params["schedule"], float(params["lr"]), epochs, per_epoch)
    swa_epochs = int(params["swa_epochs"])
    total_epochs = epochs + swa_epochs
    swa_schedule = make_lr_schedule("constant", float(params["swa_lr"]), swa_epochs, per_epoch) if swa_epochs else None
    averager = WeightAverager(student, int(params["swa_every"])) if swa_epochs else None
    if swa_epochs and swa_epochs * per_epoch < int(params["swa_every"]):
        raise KernelInputError(
            f"the SWA stage has {swa_epochs * per_epoch} steps, fewer than swa_every={params['swa_every']}"
        )
    eval_epochs = eval_epochs_of(params["eval_epochs"], total_epochs)

    # ---- resume
    start_epoch, last = 0, {}
    if ctx.resume_state is not None:
        start_epoch, _, extra = unpack_state(ctx.resume_state, model=student, optimizer=optimizer, swa=averager)
        if extra.get("kind") != STATE_KIND or start_epoch > total_epochs:
            raise KernelInputError("resume state does not belong to this transfer trial")
        last = dict(extra.get("last") or {})  # the final metrics if the trial had already finished

    for epoch in range(start_epoch + 1, total_epochs + 1):
        started = time.perf_counter()
        # Every random draw of the epoch (dropout, PGD/noise) follows from (seed, epoch): resumable.
        torch.manual_seed(derive_seed(seed, "epoch", epoch))
        in_swa = epoch > epochs
        if in_swa:
            if epoch == epochs + 1:
                optimizer.state.clear()  # stage 2 is a fresh SGD run from the stage-1 weights (no momentum)
            stage_step, schedule = (epoch - epochs - 1) * per_epoch, swa_schedule
            after_step = averager.after_step if averager is not None else None
        else:
            stage_step, schedule, after_step = (epoch - 1) * per_epoch, main_schedule, None
        result = train_epoch(
            student,
            stream.loader((epoch - 1) * per_epoch, per_epoch),
            optimizer,
            schedule,
            step=stage_step,
            device=device,
            set_mode=set_mode,
            forward=forward,
            extra_loss=extra_loss if needs_extra else None,
            perturb=perturb,
            after_step=after_step,
        )
        if epoch == total_epochs and averager is not None:
            averager.swap_in()
            bn_pass = pass_loader(derive_seed(seed, "swa-bn"))
            recalibrate_bn(student, bn_pass, device, set_mode)
        if epoch not in eval_epochs:
            continue
        test_acc, _ = evaluate(student, test_loader, device)
        metrics = {"train_loss": result.train_loss, "train_acc": result.train_acc, "test_acc": test_acc,
                   "lr": result.lr}
        if ood_loader is not None:
            metrics["ood_acc"] = evaluate(student, ood_loader, device)[0]
        metrics["seconds"] = time.perf_counter() - started
        report(epoch, metrics)
        last = {k: metrics[k] for k in ("test_acc", "ood_acc") if k in metrics}
        if ctx.save_state is not None:
            ctx.save_state(
                pack_state(model=student, optimizer=optimizer, epoch=epoch, step=result.steps,
                           schedule=schedule, swa=averager, extra={"kind": STATE_KIND, "last": last})
            )

    final: dict[str, Any] = {
        "test_acc": last.get("test_acc"),
        "ood_acc": last.get("ood_acc"),
        "asr": None,
        "adv_acc": None,
        "clean_acc": None,
        "artifacts": [],
    }
    if int(params["attack_steps"]) > 0 and source is not None:
        from workers.attacks import transfer_asr

        # crafted on the pre-trained source (cached per source/dataset/images/attack), run on the student
        final.update(transfer_asr(spec, ctx, params, source, student, test_ds, device))
    return final
