"""AdamW with nanoGPT's weight-decay groups: every parameter with 2+ dimensions decays, 1-D ones do not.

Matrices (linear weights and the embedding tables) are decayed; biases and norm gains are not, since
shrinking a gain or an offset towards zero only fights the model. A tied embedding/head weight is one
parameter and is counted once. The fused CUDA kernel is used when every parameter is on CUDA, otherwise
PyTorch's default (the ``foreach`` implementation where available).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: ``>= 2``-D parameters with ``weight_decay``, the 1-D rest with none.

    Frozen parameters (``requires_grad=False``) are left out; each shared parameter appears once.
    """
    params = [p for p in dict(model.named_parameters()).values() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, weight_decay)``; fused when all parameters live on CUDA."""
    groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    fused = all(p.device.type == "cuda" for p in params) or None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
