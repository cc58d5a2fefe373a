"""What both kernels do the same way: load the data, resume, and the evaluate-report-checkpoint step."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from workers import data
from workers.context import KernelContext, Report
from workers.errors import KernelInputError
from workers.swa import WeightAverager
from workers.training import EpochResult, LRSchedule, evaluate, pack_state, unpack_state

# The metrics a finished trial answers with; kept in the resume state so a finished trial replays them.
LAST_METRICS = ("test_acc", "robust_acc", "ood_acc")


# Evaluation batches on a GPU are this many training batches (inference needs no activations kept);
# on the CPU they stay the training batch, so CPU results are unchanged.
GPU_EVAL_BATCH_FACTOR = 4


@dataclass(frozen=True)
class KernelData:
    """A kernel's training subset and its fixed ID (and OOD) evaluation loaders, made on `device`."""

    train_ds: data.ImageSet
    test_ds: data.ImageSet
    train_idx: list[int]
    batch_size: int
    input_size: int
    recipe: str
    test_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]
    ood_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] | None
    robust_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]  # the test images at the training batch (PGD)
    device: str = "cpu"
    data_workers: int = 0
    decode_cache_mb: float = 0

    def pass_loader(self, pass_seed: int) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        """One augmented, shuffled pass over the training subset (BatchStream's pass factory)."""
        return data.make_train_loader(self.train_ds, self.train_idx, self.batch_size, self.input_size,
                                      seed=pass_seed, augment=True, recipe=self.recipe, device=self.device,
                                      num_workers=self.data_workers, decode_cache_mb=self.decode_cache_mb)


def load_kernel_data(spec: Mapping[str, Any], ctx: KernelContext, params: Mapping[str, Any], seed: int) -> KernelData:
    """The spec's train split (its subset of `seed`), test split and OOD set, with the eval loaders, on ctx.device."""
    train_ds = data.load_split(spec["dataset"], True, ctx.data_root, ctx.download, params)
    test_ds = data.load_split(spec["dataset"], False, ctx.data_root, ctx.download, params)
    train_idx = data.subset_indices(train_ds.targets, spec.get("subset_size"), seed)
    batch_size, input_size, eval_images = int(params["batch_size"]), int(params["input_size"]), \
        int(params["eval_images"])
    recipe = data.transform_recipe(spec["dataset"], params["augment"])
    runtime: dict[str, Any] = {"recipe": recipe, "device": ctx.device, "num_workers": ctx.loader_workers(),
                               "decode_cache_mb": ctx.loader_cache_mb()}
    eval_batch = batch_size * (GPU_EVAL_BATCH_FACTOR if ctx.on_gpu else 1)
    test_indices = data.eval_indices(len(test_ds), eval_images)
    test_loader = data.make_eval_loader(test_ds, test_indices, eval_batch, input_size, **runtime)
    robust_loader = test_loader if eval_batch == batch_size else \
        data.make_eval_loader(test_ds, test_indices, batch_size, input_size, **runtime)
    ood_loader = None
    if spec.get("ood"):
        ood_ds = data.load_ood(spec["dataset"], spec["ood"], ctx.data_root, ctx.download, params)
        ood_loader = data.make_eval_loader(ood_ds, data.eval_indices(len(ood_ds), eval_images), eval_batch,
                                           input_size, **runtime)
    return KernelData(train_ds, test_ds, train_idx, batch_size, input_size, recipe, test_loader, ood_loader,
                      robust_loader, ctx.device, ctx.loader_workers(), ctx.loader_cache_mb())


def resume(
    ctx: KernelContext, *, model: nn.Module, optimizer: torch.optim.Optimizer, state_kind: str, total_epochs: int,
    swa: WeightAverager | None = None,
) -> tuple[int, dict[str, float]]:
    """(completed epoch, last metrics) of ctx.resume_state, restored into model/optimizer/swa; (0, {}) without one."""
    if ctx.resume_state is None:
        return 0, {}
    start_epoch, _, extra = unpack_state(ctx.resume_state, model=model, optimizer=optimizer, swa=swa)
    if extra.get("kind") != state_kind or start_epoch > total_epochs:
        raise KernelInputError(f"resume state does not belong to this {state_kind} trial")
    return start_epoch, dict(extra.get("last") or {})  # the final metrics if the trial had already finished


def evaluate_report_checkpoint(
    epoch: int,
    result: EpochResult,
    started: float,
    *,
    model: nn.Module,
    kernel_data: KernelData,
    device: torch.device,
    report: Report,
    ctx: KernelContext,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule | None,
    state_kind: str,
    swa: WeightAverager | None = None,
    robust_acc: Callable[[nn.Module], float] | None = None,
) -> dict[str, float]:
    """At an eval epoch: ID accuracy (then robust_acc(model) when given, then OOD accuracy), report, and
    save the resume state. `started` is the epoch's perf_counter start. Returns the LAST_METRICS reported."""
    metrics: dict[str, float] = {"train_loss": result.train_loss, "train_acc": result.train_acc,
                                 "test_acc": evaluate(model, kernel_data.test_loader, device)[0], "lr": result.lr}
    if robust_acc is not None:
        metrics["robust_acc"] = robust_acc(model)
    if kernel_data.ood_loader is not None:
        metrics["ood_acc"] = evaluate(model, kernel_data.ood_loader, device)[0]
    metrics["seconds"] = time.perf_counter() - started
    report(epoch, metrics)
    last = {k: metrics[k] for k in LAST_METRICS if k in metrics}
    if ctx.save_state is not None:
        ctx.save_state(pack_state(model=model, optimizer=optimizer, epoch=epoch, step=result.steps, schedule=schedule,
                                  swa=swa, extra={"kind": state_kind, "last": last}))
    return last
