"""Activation functions, registered by name (``model.activation``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tinylm.core.registry import ACTIVATIONS

ACTIVATIONS.register("silu")(nn.SiLU)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("relu")(nn.ReLU)


@ACTIVATIONS.register("gelu_tanh")
class GELUTanh(nn.GELU):
    """GELU with the tanh approximation (GPT-2's ``gelu_new``)."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


@ACTIVATIONS.register("relu2")
class ReLUSquared(nn.Module):
    """Squared ReLU (So et al., 2021, "Primer", arXiv 2109.08668)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()
