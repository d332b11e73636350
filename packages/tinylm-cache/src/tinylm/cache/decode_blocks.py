"""Decode blocks: a pre-norm block's decode step with the small ops folded into ``decode_linear`` products.

A LLaMA block at decode time runs, per layer, about nine kernels: add + RMSNorm, the q/k/v product, RoPE and
the cache write, attention, the o product, add + RMSNorm, the gate/up product, SwiGLU, the down product.
At 110M batch 32 each kernel is a few microseconds of mostly fixed cost (BENCHMARKS 7e-7g), so the count is
what costs. ``fuse_decode_blocks(model, folds)`` turns every eligible ``PreNormBlock`` into a
``DecodeFusedBlock`` (the same module and parameters, another ``forward``). Two plans, by ``folds``:

``"epilogue"`` (the default) folds only into the products' epilogues, which each program does once for its
own outputs::

    qkv = W_qkv(rms_norm(x))
    h   = decode_linear(attention(qkv), W_o, residual=x)                 # residual added in the epilogue
    a   = decode_linear(rms_norm(h), W_gate_up, swiglu_out=True)         # silu(gate) * up in the epilogue
    out = h + W_down(a)

``"prologue"`` folds into the prologues as well: four products per block and the attention::

    qkv = decode_linear(x, W_qkv, norm_weight=attn_norm)                 # RMSNorm folded into the product
    h   = decode_linear(attention(qkv), W_o, residual=x)
    gu  = decode_linear(h, W_gate_up, norm_weight=mlp_norm)
    out = decode_linear(gu, W_down, swiglu=True, residual=h)             # SwiGLU folded into the prologue

Measured on an H100 at 32 rows (BENCHMARKS 7h), a prologue fold costs more than the kernel it saves: every
program of the product recomputes it over all rows of ``x`` (the SwiGLU-in down product took 44 us against
5.8 unfolded), so the prologue plan ran at half the speed of the plain step there.

On a GPU with few rows ``decode_linear`` is tinylm-kernels' few-row Triton kernel; elsewhere (and for a
prefill's many rows) it is the plain ops in sequence, so the numbers match the unfused block up to
rounding. Eligible: plain ``Attention`` with fused q/k/v (``tinylm.core.fusion.fuse_projections``),
``GatedMLP`` with SiLU and fused gate/up, ``RMSNorm`` norms. In training mode the block runs as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tinylm.core.components.attention import Attention
from tinylm.core.components.blocks import PreNormBlock
from tinylm.core.components.mlp import GatedMLP
from tinylm.core.components.norms import RMSNorm
from tinylm.kernels import dispatch

FOLDS = ("epilogue", "prologue")


class DecodeFusedBlock(PreNormBlock):
    """A ``PreNormBlock`` whose inference forward folds small ops into ``decode_linear`` products
    (``decode_folds``: one of ``FOLDS``, set by ``fuse_decode_blocks``)."""

    decode_folds: str = "epilogue"

    def forward(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.training:
            return super().forward(x, ctx)
        fn = dispatch("decode_linear", None, x.device)  # compiled code guards on the choice

        def linear(x, proj, norm=None, swiglu=False, residual=None, swiglu_out=False):
            eps = norm.eps if norm is not None else 0.0
            g = norm.weight if norm is not None else None
            return fn(x, proj.weight, proj.bias, g, eps, swiglu, residual, swiglu_out)

        a, m = self.attn, self.mlp
        if self.decode_folds == "epilogue":
            q, k, v = a.split_qkv(a.qkv_proj(self.attn_norm(x)))
            h = linear(a.attend_heads(q, k, v, ctx), a.o_proj, residual=x)
            return h + m.down_proj(linear(self.mlp_norm(h), m.gate_up_proj, swiglu_out=True))
        q, k, v = a.split_qkv(linear(x, a.qkv_proj, norm=self.attn_norm))
        h = linear(a.attend_heads(q, k, v, ctx), a.o_proj, residual=x)
        gu = linear(h, m.gate_up_proj, norm=self.mlp_norm)
        return linear(gu, m.down_proj, swiglu=True, residual=h)


def _eligible(block: nn.Module) -> bool:
    if type(block) is not PreNormBlock:
        return False
    a, m = block.attn, block.mlp
    norms = type(block.attn_norm) is RMSNorm and type(block.mlp_norm) is RMSNorm
    attn = type(a) is Attention and type(a.qkv_proj) is nn.Linear and type(a.o_proj) is nn.Linear
    mlp = type(m) is GatedMLP and m.activation == "silu" and type(m.gate_up_proj) is nn.Linear
    return norms and attn and mlp and type(m.down_proj) is nn.Linear


def fuse_decode_blocks(model: nn.Module, folds: str = "epilogue") -> int:
    """Turn every eligible ``PreNormBlock`` of ``model`` into a ``DecodeFusedBlock`` folding by ``folds``
    (``"epilogue"`` or ``"prologue"``, see the module docstring) in place (parameters and ``state_dict``
    unchanged); returns how many. Fuse the projections first (``fuse_projections``)."""
    if folds not in FOLDS:
        raise ValueError(f"fuse_decode_blocks: unknown folds {folds!r}; choose one of {', '.join(FOLDS)}")
    changed = 0
    for module in model.modules():
        if _eligible(module):
            module.__class__ = DecodeFusedBlock
            module.decode_folds = folds
            changed += 1
    return changed
