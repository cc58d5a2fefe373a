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
  retrain      re-initialised student (by default with the architecture's constructor: a model trained from
               scratch), plain cross-entropy (the source only serves the ASR attack).
  renofeation  re-init + λ_feat distillation + spatial dropout (default 0.1) + an SWA stage of
               swa_epochs (default ⌊epochs/3⌋, the code's 30k:90k) at the constant swa_lr.
               dropout=0 / swa_epochs=0 are the ablations.
Random-init methods re-initialise by `reinit`: "constructor" (the architecture's constructor, fresh) or
"reset" (each Conv/BN/Linear's reset_parameters: the Renofeation code, the default of renofeation and
delta-r). Defaults differ by method (workers.catalog.PARAMS per_method): the Renofeation code's methods
(linear, l2sp, delta, retrain, renofeation, delta-r) take PyTorch's default head init and beta_fc = 1e-2;
finetune takes Utrera's N(0,1) head and no fc penalty.
Any method: beta_fc > 0 adds (β/2)(‖W_fc‖²+‖b_fc‖²); adv_steps > 0 trains on PGD examples;
noise_sigma > 0 trains on Gaussian-noised inputs (δ projected per image onto the ℓ2 ball of noise_l2_max).

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

from workers import attacks, catalog, data, models
from workers.attacks import (
    ATTACK_BATCH,
    cached_adversarial_set,
    evaluate_asr,
    normalised_images,
)
from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.io import sha256_file
from workers.kernels.common import KernelData, evaluate_report_checkpoint, load_kernel_data, resume
from workers.losses import fc_penalty, feature_distillation_loss, l2sp_penalty, snapshot_parameters
from workers.swa import WeightAverager, recalibrate_bn
from workers.training import (
    BatchStream,
    ExtraLoss,
    Forward,
    LRSchedule,
    Perturb,
    derive_seed,
    eval_epochs_of,
    make_lr_schedule,
    make_optimizer,
    seed_everything,
    train_epoch,
)

# ---------------------------------------------------------------------------------------------- parameters and methods

STATE_KIND = "transfer"


def _with_trait(trait: str) -> str:
    """The transfer methods that have `trait`, for messages (e.g. "delta/renofeation/delta-r")."""
    return "/".join(name for name in catalog.methods("transfer") if getattr(catalog.METHODS[name], trait))


def resolve_transfer_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's params over the catalog's defaults for its method (workers.catalog.PARAMS), the
    Derived defaults applied, checked against the method's traits."""
    method = spec["method"]
    traits = catalog.method(method, "transfer")
    given = dict(spec.get("params") or {})
    params = {**catalog.param_defaults("transfer", method), **given}
    # Derived defaults: the catalog documents the rule, the kernel applies it.
    if isinstance(params["swa_epochs"], catalog.Derived):  # max(1, epochs // 3): the code's 30k:90k
        params["swa_epochs"] = max(1, int(spec["epochs"]) // 3)
    derived = [name for name, value in params.items() if isinstance(value, catalog.Derived)]
    if derived:
        raise KernelInputError(f"no kernel rule for the derived default of {', '.join(derived)} ({method})")
    if traits.distils and params["lambda_feat"] <= 0:
        raise KernelInputError(f"method {method} needs lambda_feat > 0")
    if not traits.distils and params["lambda_feat"] > 0:
        raise KernelInputError(f"lambda_feat > 0 is method {_with_trait('distils')}, not {method}")
    if traits.l2sp and params["lambda_sp"] <= 0:
        raise KernelInputError(f"method {method} needs lambda_sp > 0")
    if not traits.l2sp and params["lambda_sp"] > 0:
        raise KernelInputError(f"lambda_sp > 0 is method {_with_trait('l2sp')}, not {method}")
    catalog.check_choice("bn_mode", params["bn_mode"])
    catalog.check_choice("head_init", params["head_init"])
    catalog.check_choice("reinit", params["reinit"])
    if params["noise_l2_max"] < 0:
        raise KernelInputError(f"noise_l2_max must be >= 0 (0 = no projection), got {params['noise_l2_max']}")
    if traits.linear and spec.get("blocks") not in (None, 0):
        raise KernelInputError(f"method {method} trains the head only, got blocks={spec.get('blocks')}")
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


# ---------------------------------------------------------------------------------------------- build


def _load_source(spec: Mapping[str, Any], ctx: KernelContext) -> models.Classifier | None:
    """The pre-trained source of the spec (None for scratch); resolves ctx.source_path when unset."""
    if spec["source"] == catalog.SCRATCH:
        return None
    path = ctx.source_path
    if path is None:
        from workers.sources import resolve_source_path

        path = resolve_source_path(spec["source"], ctx.data_root)
        ctx.source_path = path
    assert path is not None
    return models.load_source_model(spec["arch"], path)


def _frozen_bn_to_eval(model: nn.Module) -> None:
    """BN layers whose parameters are all frozen go to eval mode (bn_mode "eval")."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _mode_setter(linear: bool, bn_mode: str) -> Callable[[nn.Module], None]:
    """The student's training mode: eval for linear probing, else train (frozen BN in eval if asked)."""
    def set_mode(model: nn.Module) -> None:
        if linear:
            model.eval()  # frozen backbone: BN statistics stay those of the source
            return
        model.train()
        if bn_mode == "eval":
            _frozen_bn_to_eval(model)

    return set_mode


def reinitialize(student: models.Classifier, how: str, arch: str, num_classes: int) -> None:
    """Re-initialise the student's network in place (torch's global RNG): "constructor" loads the weights and
    buffers of a fresh `models.constructor(arch)` (the architecture's own init, e.g. torchvision's kaiming
    fan-out convs, BN weight 1 / bias 0); "reset" calls each Conv/BN/Linear's reset_parameters (REFERENCE A)."""
    if catalog.check_choice("reinit", how) == "reset":
        models.reinitialize(student.net)
        return
    fresh = models.constructor(arch)(num_classes)
    student.net.load_state_dict(fresh.state_dict())


@dataclass
class TransferModels:
    """The untouched source (teacher, attack model), the student, and what the loss terms need."""

    source: models.Classifier | None
    student: models.Classifier
    teacher: models.Classifier | None  # the source when the method distills, else None
    w0: dict[str, torch.Tensor] | None  # L2-SP's starting point, on the device
    set_mode: Callable[[nn.Module], None]


def build_models(spec: Mapping[str, Any], ctx: KernelContext, params: Mapping[str, Any],
                 method: catalog.MethodTraits, num_classes: int, device: torch.device, seed: int) -> TransferModels:
    """Load the source and derive the student: new head, optional re-init, dropout, trainable blocks."""
    source = _load_source(spec, ctx)
    if source is None and method.distils:
        raise KernelInputError(f"method {spec['method']} needs a pre-trained source (got source {catalog.SCRATCH})")
    if source is None:
        torch.manual_seed(derive_seed(seed, "scratch-init"))
        student = models.build_model(spec["arch"], num_classes)
    else:
        student = copy.deepcopy(source)
    head_generator = torch.Generator().manual_seed(derive_seed(seed, "head"))
    models.replace_head(student, num_classes, init=params["head_init"], generator=head_generator)
    # w0 after loading and the new head, before any re-init (REFERENCE A)
    w0 = snapshot_parameters(student) if method.l2sp else None
    if method.random_init:
        torch.manual_seed(derive_seed(seed, "reinit"))
        reinitialize(student, params["reinit"], spec["arch"], num_classes)
        models.replace_head(student, num_classes, init=params["head_init"], generator=head_generator)
    if params["dropout"] > 0:
        models.set_spatial_dropout(student, float(params["dropout"]))
    models.set_trainable_blocks(student, 0 if method.linear else spec.get("blocks"))
    student.to(device)
    if device.type == "cuda":
        student.to(memory_format=torch.channels_last)
    teacher = None
    if source is not None:
        source.to(device).eval().requires_grad_(False)
        teacher = source if method.distils else None
    if w0 is not None:
        w0 = {k: v.to(device) for k, v in w0.items()}
    return TransferModels(source, student, teacher, w0, _mode_setter(method.linear, params["bn_mode"]))


# ---------------------------------------------------------------------------------------------- loss terms


def make_extra_loss(built: TransferModels, params: Mapping[str, Any], device: torch.device) -> ExtraLoss | None:
    """λ_feat distillation + β_fc head penalty + λ_sp L2-SP, or None when the method has none of them."""
    lambda_feat, lambda_sp, beta_fc = (float(params[k]) for k in ("lambda_feat", "lambda_sp", "beta_fc"))
    student, teacher, w0 = built.student, built.teacher, built.w0

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
    return extra_loss if needs_extra else None


def make_forward(built: TransferModels) -> Forward | None:
    """The forward that also returns stage outputs, when distillation needs them."""
    if built.teacher is None:
        return None

    def with_stages(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        assert isinstance(model, models.Classifier)  # train_epoch passes the student back
        return models.forward_with_stages(model, x)

    return with_stages


def make_perturbation(params: Mapping[str, Any]) -> Perturb | None:
    """PGD (adv_steps > 0) or Gaussian noise (noise_sigma > 0) on the training inputs, else None."""
    if params["adv_steps"] > 0:
        def adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # MadryLab training defaults (REFERENCE B): no random start, best iterate.
            return attacks.pgd(model, x, y, norm=params["adv_norm"], eps=params["adv_eps"], step=params["adv_step"],
                               steps=params["adv_steps"], random_start=False, use_best=True)

        return adversarial
    if params["noise_sigma"] > 0:
        sigma, l2_max = float(params["noise_sigma"]), float(params["noise_l2_max"])

        def noisy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # projected onto the l2 ball and clamped to [0,1], as in the gaussian source method
            return attacks.gaussian_noise(x, sigma=sigma, l2_max=l2_max)

        return noisy
    return None


# ---------------------------------------------------------------------------------------------- epoch loop


@dataclass
class Stages:
    """The optimisation plan: `epochs` main epochs, then `swa_epochs` SWA epochs on the same batch stream."""

    optimizer: torch.optim.Optimizer
    stream: BatchStream
    per_epoch: int
    epochs: int
    swa_epochs: int
    main_schedule: LRSchedule
    swa_schedule: LRSchedule | None
    averager: WeightAverager | None
    eval_epochs: set[int]

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.swa_epochs


def plan_stages(student: nn.Module, params: Mapping[str, Any], kernel_data: KernelData, epochs: int,
                seed: int) -> Stages:
    """SGD over the trainable parameters, the batch stream, the main and SWA schedules, the eval epochs."""
    trainable = [p for p in student.parameters() if p.requires_grad]
    weight_decay = 0.0 if float(params["lambda_sp"]) > 0 else float(params["weight_decay"])
    optimizer = make_optimizer(trainable, float(params["lr"]), float(params["momentum"]), weight_decay)
    stream = BatchStream(kernel_data.pass_loader, seed)
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
    return Stages(optimizer, stream, per_epoch, epochs, swa_epochs, main_schedule, swa_schedule, averager,
                  eval_epochs)


def run_epochs(
    built: TransferModels,
    stages: Stages,
    kernel_data: KernelData,
    *,
    extra_loss: ExtraLoss | None,
    forward: Forward | None,
    perturb: Perturb | None,
    ctx: KernelContext,
    report: Report,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Resume, then train the remaining epochs, evaluating, reporting and checkpointing at the eval epochs.

    Returns the last reported metrics (those of the resume state when nothing was left to run).
    """
    student, optimizer, averager, per_epoch, epochs = (built.student, stages.optimizer, stages.averager,
                                                       stages.per_epoch, stages.epochs)
    start_epoch, last = resume(ctx, model=student, optimizer=optimizer, state_kind=STATE_KIND,
                               total_epochs=stages.total_epochs, swa=averager)
    for epoch in range(start_epoch + 1, stages.total_epochs + 1):
        started = time.perf_counter()
        # Every random draw of the epoch (dropout, PGD/noise) follows from (seed, epoch): resumable.
        torch.manual_seed(derive_seed(seed, "epoch", epoch))
        in_swa = epoch > epochs
        if in_swa:
            if epoch == epochs + 1:
                optimizer.state.clear()  # stage 2 is a fresh SGD run from the stage-1 weights (no momentum)
            stage_step, schedule = (epoch - epochs - 1) * per_epoch, stages.swa_schedule
            after_step = averager.after_step if averager is not None else None
        else:
            stage_step, schedule, after_step = (epoch - 1) * per_epoch, stages.main_schedule, None
        result = train_epoch(
            student,
            stages.stream.loader((epoch - 1) * per_epoch, per_epoch),
            optimizer,
            schedule,
            step=stage_step,
            device=device,
            set_mode=built.set_mode,
            forward=forward,
            extra_loss=extra_loss,
            perturb=perturb,
            after_step=after_step,
        )
        if epoch == stages.total_epochs and averager is not None:
            averager.swap_in()
            bn_pass = kernel_data.pass_loader(derive_seed(seed, "swa-bn"))
            recalibrate_bn(student, bn_pass, device, built.set_mode)
        if epoch not in stages.eval_epochs:
            continue
        last = evaluate_report_checkpoint(epoch, result, started, model=student, kernel_data=kernel_data,
                                          device=device, report=report, ctx=ctx, optimizer=optimizer,
                                          schedule=schedule, state_kind=STATE_KIND, swa=averager)
    return last


# ---------------------------------------------------------------------------------------------- attack


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
    source_sha256 = sha256_file(ctx.source_path)
    indices = data.eval_indices(len(test_ds), int(params["attack_images"]))
    input_size = int(params["input_size"])
    attack_params: dict[str, Any] = {"eps": float(params["attack_eps"]), "step": float(params["attack_step"]),
                                     "steps": int(params["attack_steps"]), "m": float(params["attack_m"]),
                                     "clamp": float(params["attack_clamp"]), "input_size": input_size}
    recipe = data.transform_recipe(str(spec["dataset"]), params.get("augment"))
    if recipe != "utrera":
        attack_params["transform"] = recipe  # it shapes the clean images (keys of utrera sets stay as they were)
    loader = data.make_eval_loader(test_ds, indices, ATTACK_BATCH, input_size, recipe=recipe, device=device,
                                   num_workers=ctx.loader_workers(), decode_cache_mb=ctx.loader_cache_mb())
    source.to(device)
    clean = normalised_images(source, loader)
    labels = torch.tensor([test_ds.targets[i] for i in indices], dtype=torch.long)
    # The name only labels the set; the key holds the digest of `clean` and `labels` (the images as
    # loaded from this data root and test-transformed), so another root or changed images get another set.
    dataset_id = f"{spec['dataset']}|classes={test_ds.num_classes}|size={len(test_ds)}"
    cached = cached_adversarial_set(source, source_sha256, dataset_id, indices, clean, attack_params,
                                    ctx.work_dir(), labels)
    result = evaluate_asr(student, cached.adv, clean, labels)
    artifact = {"key_hash": cached.key_hash, "kind": "adversarial_set", "uri": str(cached.path.resolve()),
                "meta": {"source_sha256": source_sha256, "dataset": spec["dataset"], "images": len(indices),
                         "params": attack_params, "clean_digest": cached.clean_digest}}
    return {"asr": result["asr"], "clean_acc": result["clean_acc"], "adv_acc": result["adv_acc"],
            "artifacts": [artifact]}


# ---------------------------------------------------------------------------------------------- kernel


def run_transfer(spec: dict[str, Any], ctx: KernelContext, report: Report) -> dict[str, Any]:
    """Fine-tune the spec's source on its target; report per eval epoch; the final metrics and ASR."""
    if spec.get("kind", "transfer") != "transfer":
        raise KernelInputError(f"run_transfer got a {spec.get('kind')!r} spec")
    params = resolve_transfer_params(spec)
    method = catalog.method(spec["method"], "transfer")
    seed = int(spec["seed"])
    epochs = int(spec["epochs"])
    device = torch.device(ctx.device)
    seed_everything(seed, device)

    kernel_data = load_kernel_data(spec, ctx, params, seed)
    # the source stays untouched (teacher, attack model); the student is a copy
    built = build_models(spec, ctx, params, method, kernel_data.train_ds.num_classes, device, seed)
    extra_loss, forward, perturb = make_extra_loss(built, params, device), make_forward(built), \
        make_perturbation(params)
    stages = plan_stages(built.student, params, kernel_data, epochs, seed)
    last = run_epochs(built, stages, kernel_data, extra_loss=extra_loss, forward=forward, perturb=perturb, ctx=ctx,
                      report=report, device=device, seed=seed)

    final: dict[str, Any] = {
        "test_acc": last.get("test_acc"),
        "ood_acc": last.get("ood_acc"),
        "asr": None,
        "adv_acc": None,
        "clean_acc": None,
        "artifacts": [],
    }
    if int(params["attack_steps"]) > 0 and built.source is not None:
        # crafted on the pre-trained source (cached per source/clean images/attack), run on the student
        final.update(transfer_asr(spec, ctx, params, built.source, built.student, kernel_data.test_ds, device))
    return final
