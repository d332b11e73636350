"""float8 training: torchao's ``convert_to_float8_training`` applied to a TinyLM's linear layers.

Each chosen ``nn.Linear`` becomes a torchao ``Float8Linear``: the three matmuls of forward and backward
run in float8 e4m3/e5m2 with dynamic scales on Hopper/Ada tensor cores, the weights and optimizer stay in
high precision. Worth it for large matmuls (dims >= ~2048); a tiny model mostly pays the casting cost.
The lm head stays in high precision by default, and layers whose dims are not multiples of 16 (a
float8 GEMM requirement) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tinylm.quant.api import DEFAULT_KEEP, linear_filter
from tinylm.quant.schemes import SchemeUnavailableError

FLOAT8_CAPABILITY = (8, 9)


def check_float8_training(device: torch.device) -> None:
    """Raise ``SchemeUnavailableError`` unless ``device`` is a CUDA GPU with float8 tensor cores."""
    if device.type != "cuda":
        raise SchemeUnavailableError(
            f"float8 training needs a CUDA GPU of compute capability >= 8.9 (H100, L4, RTX 4090); "
            f"the model is on {device.type}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FLOAT8_CAPABILITY:
        raise SchemeUnavailableError(
            f"float8 training needs compute capability >= 8.9; this GPU is {capability}"
        )


def convert_to_float8_training(
    model: nn.Module, keep: Iterable[str] = DEFAULT_KEEP, device: torch.device | str | None = None
) -> nn.Module:
    """Swap ``model``'s linear layers (except ``keep``) for torchao ``Float8Linear`` in place.

    ``device`` is where training will run (default: where the model is); it must support float8.
    """
    from torchao.float8 import convert_to_float8_training as torchao_convert

    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_float8_training(device)
    chosen = linear_filter(keep)

    def float8_ok(module: nn.Module, fqn: str) -> bool:
        return chosen(module, fqn) and module.in_features % 16 == 0 and module.out_features % 16 == 0

    return torchao_convert(model, module_filter_fn=float8_ok)
