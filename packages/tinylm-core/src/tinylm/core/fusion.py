"""Fuse a model's parallel projections into one matrix each, for inference.

``fuse_projections(model)`` replaces, in every plain ``Attention``, the ``q_proj``/``k_proj``/``v_proj``
linears by one ``qkv_proj`` whose weight is their concatenation, and in every ``GatedMLP`` the
``gate_proj``/``up_proj`` pair by one ``gate_up_proj``. The outputs are the same numbers (each output
column is the same dot product), but a decode step launches one matrix-vector product where it launched
three (or two): at batch 1 a tiny model's step is a chain of such launches, so this is 36 fewer kernels per
token for a 12-layer model. gpt-fast and vLLM load their weights this way.

Fuse after loading and before quantizing or compiling: the fused model's ``state_dict`` has the fused
names (save the unfused model), and code that reads ``q_proj`` by name (the Hugging Face export) needs the
unfused one. Subclasses of ``Attention``/``GatedMLP`` (routing variants) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tinylm.core.components.attention import Attention
from tinylm.core.components.mlp import GatedMLP


def _concat(linears: list[nn.Linear]) -> nn.Linear:
    """One ``nn.Linear`` whose output is the concatenation of ``linears``' outputs (same input)."""
    first = linears[0]
    out = nn.Linear(first.in_features, sum(m.out_features for m in linears), bias=first.bias is not None)
    out = out.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in linears], dim=0))
        if first.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in linears], dim=0))
    out.weight.requires_grad_(first.weight.requires_grad)
    return out


def projection_groups(model: nn.Module) -> Iterator[tuple[nn.Module, tuple[str, ...], str]]:
    """``(module, part names, fused name)`` for every plain ``Attention`` and ``GatedMLP`` of ``model`` not
    fused yet: ``("q_proj", "k_proj", "v_proj") -> "qkv_proj"``, ``("gate_proj", "up_proj") ->
    "gate_up_proj"`` (also how tinylm-quant fuses its int8 projections)."""
    for module in model.modules():
        if type(module) is Attention and module.qkv_proj is None:
            yield module, ("q_proj", "k_proj", "v_proj"), "qkv_proj"
        elif type(module) is GatedMLP and module.gate_up_proj is None:
            yield module, ("gate_proj", "up_proj"), "gate_up_proj"


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up projections in place; returns how many modules were fused.

    Only plain ``nn.Linear`` projections are fused (a model already quantized or wrapped is refused with
    an error: fuse first, then quantize).
    """
    fused = 0
    for module, names, target in list(projection_groups(model)):
        parts = [getattr(module, n) for n in names]
        if any(type(m) is not nn.Linear for m in parts):
            kinds = sorted({type(m).__name__ for m in parts})
            raise TypeError(
                f"fuse_projections fuses plain nn.Linear projections, found {', '.join(kinds)}: "
                "fuse before quantizing or wrapping the model"
            )
        setattr(module, target, _concat(parts))
        for name in names:
            delattr(module, name)
        fused += 1
    return fused
