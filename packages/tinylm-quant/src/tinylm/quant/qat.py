"""Quantization-aware training through torchao's ``QATConfig`` (prepare -> train -> convert).

``prepare_qat(model, "qat_int4")`` swaps the linear layers for torchao ``FakeQuantizedLinear``: the
forward rounds weights (and activations, for the dynamic schemes) exactly as the target scheme will,
the backward passes gradients straight through (STE), so training learns weights that survive the
rounding. The state dict keeps the float names, so the Trainer's checkpoints are plain float
checkpoints. ``convert_qat(model)`` swaps back to ``nn.Linear`` and quantizes with the PTQ scheme the
fake quantization imitated; its logits equal the fake-quantized model's (tested).

| QAT scheme | fake-quantizes | converts to (PTQ scheme) |
|---|---|---|
| ``qat_int4`` | int4 weights, group 32, symmetric | ``intx4_weight_only`` |
| ``qat_int8`` | int8 weights per row + int8 activations per token | ``int8_dynamic_intx8`` |
| ``qat_8da4w`` | int4 weights group 32 + int8 activations per token | ``int8_dynamic_int4`` |
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torchao.quantization import quantize_
from torchao.quantization.qat import FakeQuantizedLinear, QATConfig

from tinylm.core.registry import QUANT_SCHEMES, UnknownNameError
from tinylm.quant.api import DEFAULT_KEEP, QuantInfo, linear_filter, quant_info, quantize
from tinylm.quant.schemes import SCHEMES

QAT_SCHEMES: dict[str, str] = {
    "qat_int4": "intx4_weight_only",
    "qat_int8": "int8_dynamic_intx8",
    "qat_8da4w": "int8_dynamic_int4",
}


def _target(scheme: str) -> str:
    if scheme not in QAT_SCHEMES:
        raise UnknownNameError(f"unknown QAT scheme {scheme!r}; known QAT schemes: {', '.join(QAT_SCHEMES)}")
    return QAT_SCHEMES[scheme]


def prepare_qat(
    model: nn.Module, scheme: str, keep: Iterable[str] = DEFAULT_KEEP, **options: Any
) -> nn.Module:
    """Insert fake quantization for ``scheme`` (a ``QAT_SCHEMES`` name) into ``model`` in place.

    ``options`` go to the target scheme's config (``group_size=None`` for one scale per row, ``bits=3``)
    and are used again by ``convert_qat``.
    """
    target = _target(scheme)
    spec = QUANT_SCHEMES.get(target)
    keep = list(keep)
    info = QuantInfo(scheme=scheme, options=dict(options), keep=keep)
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    group = options.get("group_size", SCHEMES[target].group_size)
    chosen = linear_filter(keep, group, info.skipped, tied)
    info.quantized = [n for n, m in model.named_modules() if chosen(m, n)]
    if not info.quantized:
        raise ValueError(f"{scheme}: no linear layer left to fake-quantize (keep={keep})")
    quantize_(
        model,
        QATConfig(spec.config(**options), step="prepare"),
        filter_fn=linear_filter(keep, group, tied=tied),
    )
    model.quantization = info
    return model


def is_qat_prepared(model: nn.Module) -> bool:
    """Whether ``model`` holds fake-quantized layers from ``prepare_qat``."""
    return any(isinstance(m, FakeQuantizedLinear) for m in model.modules())


def convert_qat(model: nn.Module) -> nn.Module:
    """Turn a ``prepare_qat`` model into the real quantized model of its PTQ scheme, in place."""
    info = quant_info(model)
    if info is None or info.scheme not in QAT_SCHEMES or not is_qat_prepared(model):
        raise ValueError("convert_qat needs a model prepared by prepare_qat (no fake-quantized layers found)")
    target = QAT_SCHEMES[info.scheme]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantizedLinear):
                setattr(parent, name, child.to_linear())
    # The float weights learned under fake quantization, quantized by the matching PTQ scheme.
    return quantize(model, target, keep=info.keep, **info.options)
