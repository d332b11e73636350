"""Normalisation layers, registered by name (``model.norm``). Factories take ``(dim, eps, bias)``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tinylm.core.registry import NORMS
from tinylm.kernels import rms_norm


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm through ``tinylm.kernels.rms_norm`` (fastest available backend). Never has a bias."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


@NORMS.register("layernorm")
class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (Ba et al., 2016)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
