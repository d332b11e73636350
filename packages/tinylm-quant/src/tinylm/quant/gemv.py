"""``int8_weight_only_gemv``: torchao's int8 weight-only numbers, run by tinylm-kernels' fused int8 GEMV.

torchao computes the quantization (``Int8WeightOnlyConfig``: symmetric int8, one scale per output row);
each quantized ``nn.Linear`` is then replaced by an ``Int8GemvLinear`` holding the same int8 values and
scales as plain buffers, whose forward is the ``int8_linear`` op of tinylm-kernels, its backend chosen per
call: a Triton GEMV that reads the weight once as int8 for decode (<= 16 rows) on CUDA, ``F.linear`` on
the dequantized weight elsewhere, and under ``torch.compile`` with the ``torch`` backend (the fast
decoder's choice) a reduction over int8 loads that Inductor generates. The numbers equal
``int8_weight_only``'s up to float rounding (tested). Why: at batch 1 a decode step is memory-bound, so int8
can only beat bf16 if the dequantization is fused into the GEMV. ``fold_rms_norms(model)`` goes one step
further: the RMSNorm in front of a fused q/k/v or gate/up projection moves into that projection
(``NormInt8GemvLinear``, op ``rms_norm_int8_linear``), one launch fewer per site. A model quantized
unfused (as loaded from a checkpoint) fuses its int8 q/k/v and gate/up with ``fuse_int8_projections``: the
scales are per output row, so stacking the int8 rows is exact. ``prepare_int8_decode`` does both and, on
Hopper, launches the folded GEMVs with programmatic dependent launch (measured against bf16 at 110M batch 1,
16 steps per CUDA graph, on an H100: 1.04-1.30x over five paired runs; without PDL 0.56-1.05x; BENCHMARKS 5).
"""

from __future__ import annotations

import torch
from torch import nn

from tinylm.core.components.attention import Attention
from tinylm.core.components.blocks import PreNormBlock
from tinylm.core.components.mlp import GatedMLP
from tinylm.core.components.norms import RMSNorm
from tinylm.core.fusion import projection_groups
from tinylm.kernels.int8_gemv import check_int8_linear_inputs
from tinylm.kernels.int8_gemv_triton import pdl_available, rms_norm_int8_linear_pdl, why_pdl_unavailable
from tinylm.kernels.registry import dispatch


class Int8GemvLinear(nn.Module):
    """A linear layer with an int8 weight ``(out, in)`` and a float scale per output row."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.reshape(-1).contiguous())
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        check_int8_linear_inputs(torch.empty(0, self.in_features), self.qweight, self.scale, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # chosen per call (env var, ``preferring``, best available): compiled code guards on the choice
        fn = dispatch("int8_linear", None, x.device)
        return fn(x, self.qweight, self.scale.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, fused GEMV"


def swap_to_gemv(model: nn.Module, names: list[str]) -> None:
    """Replace the torchao-int8 ``nn.Linear`` layers named in ``names`` by ``Int8GemvLinear``."""
    modules = dict(model.named_modules())
    for name in names:
        linear = modules[name]
        w = linear.weight  # a torchao Int8Tensor: qdata (out, in) int8, scale (out, 1)
        new = Int8GemvLinear(w.qdata, w.scale.to(w.dtype), linear.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)


class NormInt8GemvLinear(Int8GemvLinear):
    """``Int8GemvLinear`` applied to ``rms_norm(x, norm_weight, eps)``: the norm in front of it, folded in.

    ``pdl = True``: on a CUDA device, tinylm-kernels' ``rms_norm_int8_linear_pdl`` (the Triton GEMV
    launched with programmatic dependent launch, an opaque op) instead of the dispatched
    ``rms_norm_int8_linear``; set by ``fold_rms_norms(..., pdl=True)``."""

    pdl: bool = False

    def __init__(
        self,
        qweight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
    ) -> None:
        super().__init__(qweight, scale, bias)
        self.norm_weight = nn.Parameter(norm_weight.detach(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pdl = self.pdl and x.is_cuda
        fn = rms_norm_int8_linear_pdl if pdl else dispatch("rms_norm_int8_linear", None, x.device)
        return fn(x, self.norm_weight.to(x.dtype), self.eps, self.qweight, self.scale.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", RMSNorm folded in (eps={self.eps})"


def fold_rms_norms(model: nn.Module, sites: tuple[str, ...] = ("attn", "mlp"), pdl: bool = False) -> int:
    """Move each pre-norm block's RMSNorm into the int8 projection it feeds; returns how many moved.

    ``sites``: ``"attn"`` (the norm before a fused ``qkv_proj``), ``"mlp"`` (before a fused ``gate_up_proj``).
    Only exact ``PreNormBlock`` / ``Attention`` / ``GatedMLP`` with an ``RMSNorm`` and an ``Int8GemvLinear``
    projection qualify, since there the norm's output feeds that projection alone; the norm becomes
    ``nn.Identity``. Apply after ``fuse_projections`` and quantizing with ``int8_weight_only_gemv``; like
    fusing, it is a transform for decoding (save the model before it). ``pdl``: the folded GEMVs launch
    with programmatic dependent launch on a GPU (``NormInt8GemvLinear.pdl``).
    """
    unknown = set(sites) - {"attn", "mlp"}
    if unknown:
        raise ValueError(f"unknown fold site(s) {sorted(unknown)}; allowed: 'attn', 'mlp'")
    moved = 0
    for block in model.modules():
        if type(block) is not PreNormBlock:
            continue
        pairs = [("attn_norm", block.attn, Attention, "qkv_proj")] if "attn" in sites else []
        pairs += [("mlp_norm", block.mlp, GatedMLP, "gate_up_proj")] if "mlp" in sites else []
        for norm_name, sub, kind, proj_name in pairs:
            norm, proj = getattr(block, norm_name), getattr(sub, proj_name, None)
            if type(norm) is not RMSNorm or type(sub) is not kind or type(proj) is not Int8GemvLinear:
                continue
            folded = NormInt8GemvLinear(proj.qweight, proj.scale, proj.bias, norm.weight, norm.eps)
            folded.pdl = pdl
            setattr(sub, proj_name, folded)
            setattr(block, norm_name, nn.Identity())
            moved += 1
    return moved


def fuse_int8_projections(model: nn.Module) -> int:
    """Fuse each ``Attention``'s int8 q/k/v and each ``GatedMLP``'s int8 gate/up into one ``Int8GemvLinear``
    (in place; returns how many modules were fused). Exact: each output row keeps its int8 values and its
    own scale. Projections that are not all ``Int8GemvLinear`` (or already fused) are left alone."""
    fused = 0
    for module, names, target in list(projection_groups(model)):
        parts = [getattr(module, n) for n in names]
        if any(type(p) is not Int8GemvLinear for p in parts) or len({p.bias is None for p in parts}) > 1:
            continue
        bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
        qweight = torch.cat([p.qweight for p in parts])
        setattr(module, target, Int8GemvLinear(qweight, torch.cat([p.scale for p in parts]), bias))
        for n in names:
            delattr(module, n)
        fused += 1
    return fused


def prepare_int8_decode(
    model: nn.Module, fold: tuple[str, ...] = ("attn", "mlp"), pdl: bool | None = None
) -> dict[str, int]:
    """Ready a model quantized with ``int8_weight_only_gemv`` for fast decoding, in place: fuse its int8
    q/k/v and gate/up (``fuse_int8_projections``), then fold the RMSNorms of ``fold`` into them
    (``fold_rms_norms``). ``pdl``: the folded GEMVs launch with programmatic dependent launch
    (``NormInt8GemvLinear.pdl``; Hopper or newer); ``None`` (the default): where ``pdl_available()``,
    ``True``: or raise. Returns ``{"fused": ..., "folded": ...}``. A transform for decoding: save first."""
    if pdl is None:
        pdl = pdl_available()
    elif pdl and not pdl_available():
        raise RuntimeError(
            f"prepare_int8_decode(pdl=True): programmatic dependent launch {why_pdl_unavailable()}"
        )
    return {"fused": fuse_int8_projections(model), "folded": fold_rms_norms(model, fold, pdl)}
