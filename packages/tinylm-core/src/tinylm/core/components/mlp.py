"""Feed-forward layers, registered by name (``model.mlp``). Factories take the ``ModelConfig``.

``standard``: ``down(act(up(x)))`` (GPT). ``gated``: ``down(act(gate(x)) * up(x))`` with the configured
activation (Shazeer, 2020, "GLU Variants Improve Transformer", arXiv 2002.05202); ``swiglu`` and ``geglu``
are gated MLPs that fix the activation to SiLU and tanh-GELU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tinylm.core.registry import ACTIVATIONS, MLPS
from tinylm.kernels import swiglu as swiglu_op

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig


@MLPS.register("standard")
class StandardMLP(nn.Module):
    """Two linear layers with an activation between them."""

    hidden_ratio = 4.0  # default hidden_dim / dim

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.bias)
        self.act = ACTIVATIONS.build(cfg.activation)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.bias)
        self.down_proj.residual_projection = True  # scaled init, see TinyLM._init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


@MLPS.register("gated")
class GatedMLP(nn.Module):
    """Gated linear unit MLP: the activation of one projection gates another."""

    hidden_ratio = 8.0 / 3.0  # keeps the parameter count of a 4x standard MLP

    def __init__(self, cfg: ModelConfig, activation: str | None = None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.bias)
        self.activation = activation or cfg.activation
        self.act = ACTIVATIONS.build(self.activation)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.bias)
        self.down_proj.residual_projection = True
        self.gate_up_proj: nn.Linear | None = None  # both in one matrix: set by tinylm.core.fusion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        if self.activation == "silu":  # SwiGLU: the fused tinylm.kernels op (Triton on GPU)
            return self.down_proj(swiglu_op(gate, up))
        return self.down_proj(self.act(gate) * up)


@MLPS.register("swiglu")
def swiglu(cfg: ModelConfig) -> GatedMLP:
    """Gated MLP with SiLU (LLaMA)."""
    return GatedMLP(cfg, activation="silu")


@MLPS.register("geglu")
def geglu(cfg: ModelConfig) -> GatedMLP:
    """Gated MLP with tanh-approximated GELU (Gemma)."""
    return GatedMLP(cfg, activation="gelu_tanh")


swiglu.hidden_ratio = geglu.hidden_ratio = GatedMLP.hidden_ratio
