"""``int4_weight_only_gemv``: torchao's int4 numbers packed two per byte, run by tinylm-kernels'
``int4_linear``.

torchao computes the quantization (``IntxWeightOnlyConfig`` with int4 values, one symmetric scale per group
of ``group_size`` input columns, default 32); each quantized ``nn.Linear`` is then replaced by an
``Int4GemvLinear`` holding the same values packed two per byte (``tinylm.kernels.int4_gemv.pack_int4``) and
the group scales in the model's dtype, as plain buffers. Its forward is the ``int4_linear`` op: a Triton
GEMV for decode rows on CUDA, ``F.linear`` on the dequantized weight elsewhere, and under ``torch.compile``
with the ``torch`` backend a reduction over the packed bytes that Inductor generates. Why not torchao's own
packed int4: its CUDA layout (tinygemm) pads the input width to a multiple of 1024, so the 192- and
512-wide layers of a tiny model came out larger than bf16 (BENCHMARKS 5), and its unpadded layout needs a
separate kernel package. Here the bytes are ``0.5 + 2 / group_size`` per weight with bf16 scales, on any
device. The numbers equal torchao's ``intx4_weight_only`` up to the scale's rounding to the model dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from tinylm.kernels.int4_gemv import check_int4_linear_inputs, pack_int4
from tinylm.kernels.registry import dispatch


class Int4GemvLinear(nn.Module):
    """A linear layer with a packed int4 weight ``(out, in / 2)`` uint8 and a scale per group of inputs."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape[0], 2 * qweight.shape[1]
        self.group_size = self.in_features // max(scale.shape[-1], 1)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        check_int4_linear_inputs(torch.empty(0, self.in_features), self.qweight, self.scale, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = dispatch("int4_linear", None, x.device)  # chosen per call: compiled code guards on the choice
        return fn(x, self.qweight, self.scale.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int4 weight packed, group {self.group_size}"
        )


def swap_to_int4_gemv(model: nn.Module, names: list[str]) -> None:
    """Replace the torchao-int4 ``nn.Linear`` layers named in ``names`` by ``Int4GemvLinear``."""
    modules = dict(model.named_modules())
    for name in names:
        linear = modules[name]
        w = (
            linear.weight
        )  # torchao IntxUnpackedToInt8Tensor: qdata (out, in) int8 in -8..7, scale (out, groups)
        if w.zero_point.abs().max().item() != 0:
            raise ValueError(f"{name}: int4_weight_only_gemv needs symmetric int4 (zero points 0)")
        new = Int4GemvLinear(pack_int4(w.qdata), w.scale.to(w.dtype), linear.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
