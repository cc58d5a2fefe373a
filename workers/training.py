"""Training pieces shared by every kernel: optimiser, LR schedules, batches, epochs, evaluation, state.

Determinism: every source of randomness in an epoch (batch order, augmentation, dropout, PGD starts)
is derived from (seed, epoch) at the start of the epoch, so an epoch's result depends only on the
state at its start. That makes a resumed trial reproduce an uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from workers import catalog
from workers.errors import KernelInputError

# The LR schedules LRSchedule implements: the catalog's `schedule` choices (a contract test builds each).
SCHEDULES: tuple[str, ...] = catalog.PARAMS["schedule"].choices

# (model, x) -> (logits, aux): the training forward; aux (e.g. stage outputs) goes to the extra loss
Forward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, Any]]
# (x, y, logits, aux) -> extra loss term added to the cross-entropy
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]
# (model, x, y) -> perturbed x (adversarial training); called before the training forward
Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- seeding


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and labels: independent streams per (purpose, epoch, pass)."""
    text = ":".join([str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def seed_everything(seed: int, device: str | torch.device = "cpu") -> None:
    """Seed Python, NumPy and torch; on CPU also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.device(device).type == "cpu":
        # Harmless on CPU (every op used here has a deterministic CPU kernel); on CUDA it would need
        # CUBLAS_WORKSPACE_CONFIG and slower kernels, so GPU runs stay fast rather than bitwise-exact.
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict[str, Any]:
    """Python/NumPy/torch RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    # torch.cuda.is_initialized is unannotated in torch's own sources
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNG states of an rng_state() snapshot."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- optimiser


def make_optimizer(
    params_or_groups: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.SGD:
    """SGD over the parameters (or groups); fails loudly when nothing is trainable."""
    params: list[Any] = list(params_or_groups)  # parameters or param groups: SGD takes either
    if not params:
        raise KernelInputError("nothing to train: no parameter requires a gradient")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the global step (0-based optimiser step index).

    Stateless, so resuming needs only the step count. Epoch-based schedules change at epoch
    boundaries, where epoch = step // iterations_per_epoch.
    """

    name: str
    base_lr: float
    epochs: int
    iterations_per_epoch: int

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole schedule."""
        return self.epochs * self.iterations_per_epoch

    def milestones(self) -> list[int]:
        """0-based epochs from which one more ×0.1 decay applies (MultiStepLR semantics)."""
        if self.name == "thirds":
            # Paper text: ×0.1 at E/3 and 2E/3. A milestone at epoch 0 (E < 3) would decay before any
            # training, so it is dropped.
            return [m for m in (self.epochs // 3, 2 * self.epochs // 3) if m >= 1]
        if self.name == "step-every-third":
            # Utrera code: StepLR(step_size=max(1, E//3), gamma=0.1), stepped once per epoch.
            size = max(1, self.epochs // 3)
            return list(range(size, self.epochs, size))
        return []

    def lr_at(self, step: int) -> float:
        """LR of the 0-based global step."""
        if self.name == "constant":
            return self.base_lr
        if self.name == "cosine":
            # CosineAnnealingLR(T_max=total, eta_min=0) stepped per iteration: 0 after the last step.
            progress = min(step, self.total_steps) / max(1, self.total_steps)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name not in ("thirds", "step-every-third"):
            raise KernelInputError(f"schedule {self.name!r} has no implementation in workers.training")
        epoch = step // max(1, self.iterations_per_epoch)
        decays = sum(1 for m in self.milestones() if epoch >= m)
        return self.base_lr * (0.1**decays)

    def lr_for_epoch(self, epoch: int) -> float:
        """LR at the first step of a 1-based epoch."""
        return self.lr_at((epoch - 1) * self.iterations_per_epoch)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's LR to that of `step`; returns it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def make_lr_schedule(name: str, base_lr: float, epochs: int, iterations_per_epoch: int) -> LRSchedule:
    """A checked LRSchedule (name in SCHEDULES, at least one epoch and one step per epoch)."""
    catalog.check_choice("schedule", name)
    if epochs < 1 or iterations_per_epoch < 1:
        raise KernelInputError(f"schedule needs epochs >= 1 and iterations >= 1, got {epochs}, {iterations_per_epoch}")
    return LRSchedule(name, float(base_lr), int(epochs), int(iterations_per_epoch))


# ---------------------------------------------------------------------------------------------- batches


class _PlanWindow(Sampler[Any]):
    """The plan items of the batches a persistent loader serves next (BatchStream.loader sets them)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.items))


class BatchStream:
    """A deterministic, random-access stream of training batches: pass p over the data is the loader
    `make_pass_loader(derive_seed(seed, "pass", p))` (its own shuffle and augmentation seeds).

    Iteration-based epochs take the next `iterations_per_epoch` batches of the endless stream
    (Renofeation's cycled loader); pass-based epochs take exactly one pass. Any epoch can be rebuilt
    from (seed, epoch) alone, without loading the batches before it: only the loader's sampler (the
    batch plan) is replayed, and a loader over just the needed plan items is built.
    """

    def __init__(self, make_pass_loader: Callable[[int], DataLoader[Any]], seed: int) -> None:
        self.make_pass_loader = make_pass_loader
        self.seed = int(seed)
        first = make_pass_loader(derive_seed(self.seed, "pass", 0))
        self.batches_per_pass = len(first)
        if self.batches_per_pass < 1:
            raise KernelInputError("the training set is empty")
        self._plans: dict[int, list[Any]] = {}
        self._template = first
        self._window = _PlanWindow()
        self._persistent: DataLoader[Any] | None = None

    def _plan(self, pass_index: int) -> list[Any]:
        if pass_index not in self._plans:
            loader = self.make_pass_loader(derive_seed(self.seed, "pass", pass_index))
            # batch_size=None loaders (workers.data) plan whole batches in their sampler; standard
            # loaders plan them in their batch_sampler.
            plan = loader.sampler if loader.batch_size is None else loader.batch_sampler
            self._plans = {k: v for k, v in self._plans.items() if k >= pass_index - 1}
            self._plans[pass_index] = list(plan)  # type: ignore[arg-type]
        return self._plans[pass_index]

    def plan_items(self, first_batch: int, count: int) -> list[Any]:
        """The sampler items of batches first_batch .. first_batch+count-1."""
        items = []
        for global_batch in range(first_batch, first_batch + count):
            pass_index, k = divmod(global_batch, self.batches_per_pass)
            items.append(self._plan(pass_index)[k])
        return items

    def loader(self, first_batch: int, count: int) -> DataLoader[Any]:
        """Batches first_batch .. first_batch+count-1 of the endless stream. Iterate it before asking
        for the next one: with loader workers the same loader is returned, over the new items."""
        template = self._template
        items = self.plan_items(first_batch, count)
        if template.batch_size is None and template.num_workers > 0:
            # One loader for the stream's life: its workers (and their decoded-image caches) persist,
            # and each iteration reads the window's current items in the main process.
            if self._persistent is None:
                self._persistent = DataLoader(template.dataset, sampler=self._window, batch_size=None,
                                              num_workers=template.num_workers, pin_memory=template.pin_memory,
                                              persistent_workers=True)
            self._window.items = items
            return self._persistent
        if template.batch_size is None:
            return DataLoader(template.dataset, sampler=items, batch_size=None, pin_memory=template.pin_memory)
        return DataLoader(template.dataset, batch_sampler=items, num_workers=template.num_workers,
                          pin_memory=template.pin_memory, collate_fn=template.collate_fn)


# ---------------------------------------------------------------------------------------------- epochs


@contextmanager
def restored_modes(model: nn.Module, training: bool | None = None) -> Iterator[nn.Module]:
    """Every module's train/eval flag is restored on exit, whatever the body did to it.

    `training` True/False puts the whole model in train/eval mode on entry (model.train(training));
    None leaves the modes as they are (the body sets them).
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


@dataclass
class EpochResult:
    train_loss: float  # mean cross-entropy over the epoch's training samples (extra terms excluded)
    train_acc: float  # accuracy on the (possibly perturbed) training batches, in train mode
    steps: int  # global optimiser steps done after this epoch
    lr: float  # LR of the epoch's last step
    seconds: float


def device_autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on GPU (no grad scaler needed); CPU stays fp32 for exact determinism."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule | None,
    *,
    step: int,
    device: str | torch.device,
    set_mode: Callable[[nn.Module], None] | None = None,
    forward: Forward | None = None,
    extra_loss: ExtraLoss | None = None,
    perturb: Perturb | None = None,
    after_step: Callable[[int], None] | None = None,
) -> EpochResult:
    """One reported epoch of SGD. `step` is the global step count before the epoch.

    set_mode puts the model in its training mode (e.g. frozen BN in eval); it runs before each
    step because an adversarial `perturb` switches the model to eval and back. `forward` replaces
    model(x) when the extra loss needs more than the logits (its aux output). after_step gets
    the number of optimiser steps done so far (1-based), e.g. to fold weights into an SWA mean.
    """
    device = torch.device(device)
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    lr = optimizer.param_groups[0]["lr"]
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if perturb is not None:
            x = perturb(model, x, y).detach()
        if set_mode is not None:
            set_mode(model)
        else:
            model.train()
        if schedule is not None:
            lr = schedule.apply(optimizer, step)
        with device_autocast(device):
            logits, aux = forward(model, x) if forward is not None else (model(x), None)
            ce = F.cross_entropy(logits.float(), y)
            loss = ce if extra_loss is None else ce + extra_loss(x, y, logits, aux)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        optimizer.step()
        step += 1
        if after_step is not None:
            after_step(step)
        loss_sum += ce.detach() * y.numel()
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.numel()
    seen = max(seen, 1)
    return EpochResult(
        train_loss=float(loss_sum) / seen,
        train_acc=float(correct) / seen,
        steps=step,
        lr=float(lr),
        seconds=time.perf_counter() - started,
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str | torch.device
) -> tuple[float, float]:
    """(top-1 accuracy fraction, mean cross-entropy) in eval mode, under inference_mode (bf16 autocast on
    GPU: device_autocast); the model's mode is restored."""
    device = torch.device(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    with restored_modes(model, training=False):
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with device_autocast(device):
                logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            seen += y.numel()
    if seen == 0:
        return 0.0, 0.0
    return float(correct) / seen, float(loss_sum) / seen


def eval_epochs_of(requested: Sequence[int] | None, total_epochs: int) -> set[int]:
    """The 1-based epochs to evaluate: the requested ones (all when empty) plus always the last."""
    wanted = {e for e in (requested or range(1, total_epochs + 1)) if 1 <= e <= total_epochs}
    wanted.add(total_epochs)
    return wanted


# ---------------------------------------------------------------------------------------------- state


def pack_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    step: int,
    schedule: LRSchedule | None = None,
    swa: Any | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A resumable snapshot after `epoch` (1-based, completed): only tensors and plain values."""
    return {
        "format": "rtgrid-train-state/1",
        "epoch": int(epoch),
        "step": int(step),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "schedule": None
        if schedule is None
        else {"name": schedule.name, "base_lr": schedule.base_lr, "epochs": schedule.epochs,
              "iterations_per_epoch": schedule.iterations_per_epoch},
        "swa": swa.state_dict() if swa is not None else None,
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }


def unpack_state(
    state: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    swa: Any | None = None,
) -> tuple[int, int, dict[str, Any]]:
    """Restore a pack_state snapshot in place; returns (completed epoch, global step, extra)."""
    if state.get("format") != "rtgrid-train-state/1":
        raise KernelInputError("resume state has an unknown format")
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if swa is not None and state.get("swa") is not None:
        swa.load_state_dict(state["swa"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"]), dict(state.get("extra") or {})
