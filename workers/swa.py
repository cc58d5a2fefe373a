"""Stochastic weight averaging as in the Renofeation code (torchcontrib SWA, REFERENCE A).

After the c-th optimiser step of the SWA stage (1-based), if c % every == 0 the parameters are
folded into an equal-weight running mean (only parameters; buffers are not averaged). At the end
the mean is swapped in and the BN running statistics are recomputed: reset with momentum None (a
cumulative average), then one no-grad pass over the training loader in train mode, augmentation
and dropout still on.

Implemented here rather than with torch.optim.swa_utils.AveragedModel so that the running mean is
a plain dict of tensors that packs into a resumable (weights_only) state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from workers.training import restored_modes


class WeightAverager:
    """Equal-weight running mean of a model's parameters, folded every `every` steps."""

    def __init__(self, model: nn.Module, every: int) -> None:
        if every < 1:
            raise ValueError(f"SWA needs every >= 1, got {every}")
        self.model = model
        self.every = int(every)
        self.count = 0  # snapshots folded so far
        self.mean: dict[str, torch.Tensor] = {}

    def after_step(self, step_count: int) -> None:
        """Call after each optimiser step of the SWA stage with the 1-based stage step count."""
        if step_count > 0 and step_count % self.every == 0:
            self.fold()

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the current parameters into the running mean."""
        self.count += 1
        for name, param in self.model.named_parameters():
            if name not in self.mean:
                self.mean[name] = param.detach().clone()
            else:
                # torchcontrib's update: mean += (w − mean) / n
                self.mean[name].add_((param.detach() - self.mean[name]) / self.count)

    @torch.no_grad()
    def swap_in(self) -> None:
        """Copy the averaged parameters into the model (no-op when nothing was folded)."""
        if self.count == 0:
            return
        for name, param in self.model.named_parameters():
            param.copy_(self.mean[name])

    def state_dict(self) -> dict[str, Any]:
        """The running mean and counters as CPU tensors and plain values (weights_only-loadable)."""
        return {"every": self.every, "count": self.count,
                "mean": {k: v.detach().cpu().clone() for k, v in self.mean.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() snapshot onto the model's device."""
        self.every = int(state["every"])
        self.count = int(state["count"])
        device = next(self.model.parameters()).device
        self.mean = {k: v.to(device).clone() for k, v in state["mean"].items()}


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device,
    set_mode: Callable[[nn.Module], None] | None = None,
) -> int:
    """Recompute BN running stats with one no-grad pass in train mode (dropout on).

    Only BN layers that are in train mode under `set_mode` are reset, so frozen layers kept in eval
    mode (bn_mode "eval") keep their statistics. Returns the number of BN layers recalibrated.
    """
    device = torch.device(device)
    with restored_modes(model, training=True):
        if set_mode is not None:
            set_mode(model)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        momenta = {}
        for bn in norms:
            bn.reset_running_stats()
            momenta[bn] = bn.momentum
            bn.momentum = None  # cumulative average over the pass
        try:
            if norms:
                for x, _ in batches:
                    model(x.to(device, non_blocking=True))
        finally:
            for bn, momentum in momenta.items():
                bn.momentum = momentum
    return len(norms)
