"""Regularisers of the transfer methods, in the form of the Renofeation code (REFERENCE A).

    L = CE + λ_feat·Σ_k MSE(s_k, t_k) + (β/2)(‖W_fc‖² + ‖b_fc‖²) + λ_sp·Σ ‖w − w0‖²
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def snapshot_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """w0 for L2SP: a detached copy of every parameter (conv, BN γ/β, fc weight and bias).

    Take it after loading the source and replacing the head, before any re-init (REFERENCE A),
    so the new fc is pulled toward its own random init.
    """
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def l2sp_penalty(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Σ ‖w − w0‖² over every parameter in `reference` (no ½ factor, BN and fc included).

    Frozen parameters are skipped: they equal w0, so they add exactly 0 and no gradient.
    """
    terms = [
        (param - reference[name]).pow(2).sum()
        for name, param in model.named_parameters()
        if param.requires_grad and name in reference
    ]
    if not terms:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.stack(terms).sum()


def feature_distillation_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DELTA as in the Renofeation code: Σ_k mean-squared error between the student's stage-k
    output (before dropout) and the teacher's, unweighted (no channel attention); teacher detached."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"need matching stage lists, got {len(student_features)} and {len(teacher_features)}")
    return torch.stack(
        [
            F.mse_loss(s.float(), t.detach().float())
            for s, t in zip(student_features, teacher_features, strict=True)
        ]
    ).sum()


def fc_penalty(head: nn.Linear, beta: float) -> torch.Tensor:
    """Renofeation's (β/2)(‖W_fc‖² + ‖b_fc‖²) on the classifier head."""
    total = head.weight.pow(2).sum()
    if head.bias is not None:
        total = total + head.bias.pow(2).sum()
    return 0.5 * beta * total
