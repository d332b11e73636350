"""``quantize(model, scheme)``: a thin adapter over ``torchao.quantization.quantize_``.

Only ``nn.Linear`` layers are swapped (their weights become torchao tensor subclasses); a filter keeps
chosen layers in high precision: by default the lm head (``keep=("lm_head",)``). Embeddings are not
linear layers, so they always stay. The model must already be on the device and in the dtype it will run
in; the scheme checks that before torchao sees the model.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchao.quantization import quantize_

from tinylm.core.registry import QUANT_SCHEMES

logger = logging.getLogger("tinylm.quant")

DEFAULT_KEEP: tuple[str, ...] = ("lm_head",)
QUANT_ATTR = "quantization"  # the model attribute holding a QuantInfo after quantize / convert_qat


@dataclass
class QuantInfo:
    """What was done to a model: scheme name, options, kept (high-precision) and quantized layer names."""

    scheme: str
    options: dict[str, Any] = field(default_factory=dict)
    keep: list[str] = field(default_factory=lambda: list(DEFAULT_KEEP))
    quantized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first floating-point linear weight."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.is_floating_point():
            return module.weight.device, module.weight.dtype
    raise ValueError("the model has no floating-point nn.Linear layer to quantize")


def linear_filter(
    keep: Iterable[str] = DEFAULT_KEEP,
    group_size: int | None = None,
    skipped: list[str] | None = None,
    tied: set[int] | None = None,
) -> Any:
    """``filter_fn(module, fqn)`` for ``quantize_``: linear layers not matching a ``keep`` pattern.

    ``keep`` holds fnmatch patterns on the module's qualified name (``lm_head``, ``layers.0.*``); a
    pattern also matches the names below it. With ``group_size``, layers whose input width is not a
    multiple of it are skipped too and their names appended to ``skipped``; so are layers whose weight
    is in ``tied`` (ids of embedding tables they share: quantizing one would untie it).
    """
    patterns = tuple(keep)

    def filter_fn(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        if any(fnmatch.fnmatch(fqn, p) or fqn.startswith(p + ".") for p in patterns):
            return False
        if (group_size is not None and module.in_features % group_size) or id(module.weight) in (tied or ()):
            if skipped is not None:
                skipped.append(fqn)
            return False
        return True

    return filter_fn


def quantize(model: nn.Module, scheme: str, keep: Iterable[str] = DEFAULT_KEEP, **options: Any) -> nn.Module:
    """Quantize ``model``'s linear layers in place with the registered ``scheme``; returns the model.

    ``options`` go to the scheme's torchao config (e.g. ``group_size=64``). ``none`` leaves the model as
    it is. A scheme that cannot run on the model's device/dtype raises ``SchemeUnavailableError``.
    """
    spec = QUANT_SCHEMES.get(scheme)  # an unknown name lists the known ones
    config = spec.config(**options)
    keep = list(keep)
    info = QuantInfo(scheme=scheme, options=dict(options), keep=keep)
    if config is not None:
        device, dtype = model_device_dtype(model)
        spec.check_runs_on(device, dtype)
        group = options.get("group_size", spec.group_size)
        tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        chosen = linear_filter(keep, group, info.skipped, tied)
        info.quantized = [n for n, m in model.named_modules() if chosen(m, n)]
        if not info.quantized:
            raise ValueError(f"{scheme}: no linear layer left to quantize (keep={keep}, group size {group})")
        quantize_(model, config, filter_fn=linear_filter(keep, group, tied=tied))
        if spec.after is not None:
            spec.after(model, info.quantized)
        if info.skipped:
            logger.warning(
                "%s: %d layers stay in %s (tied to an embedding, or width not a multiple of group %s): %s",
                scheme, len(info.skipped), dtype, group, ", ".join(info.skipped),
            )  # fmt: skip
    setattr(model, QUANT_ATTR, info)
    return model


def quant_info(model: nn.Module) -> QuantInfo | None:
    """The ``QuantInfo`` recorded by ``quantize``/``convert_qat``, or None for a model never quantized."""
    return getattr(model, QUANT_ATTR, None)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; torchao's wrapper subclasses count their inner tensors (data + scales)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def model_bytes(model: nn.Module, linear_only: bool = False) -> int:
    """Bytes of the model's parameters and buffers (tied tensors once); ``linear_only``: linear weights.

    Linear weights: ``nn.Linear.weight`` and the int8 weight + scales of modules swapped in by a scheme.
    """
    if linear_only:
        tensors = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        tensors += [t for m in model.modules() if hasattr(m, "qweight") for t in (m.qweight, m.scale)]
    else:
        tensors = [*model.parameters(), *model.buffers()]
    unique = {id(t): t for t in tensors}
    return sum(tensor_bytes(t) for t in unique.values())
