"""Quantization schemes by name: each one a torchao config plus what it needs to run.

A scheme is registered in ``tinylm.core.QUANT_SCHEMES`` as a callable ``scheme(model, **options)`` that
quantizes ``model`` in place (through ``tinylm.quant.quantize``) and returns it. The numerics are all
torchao's (``torchao.quantization.quantize_`` with the configs below); this file only names them and
states their requirements, so a CUDA-only scheme fails on CPU with a sentence instead of deep in torchao.

| name | weights | activations | runs on |
|---|---|---|---|
| ``int8_weight_only`` | int8, one scale per output row | as is | CPU, CUDA |
| ``int8_dynamic`` | int8 per row | int8 per token, quantized at run time | CPU, CUDA |
| ``intx4_weight_only`` | int4 values (group 32), stored unpacked in int8 | as is | CPU, CUDA |
| ``int8_dynamic_int4`` | int4 values (group 32), stored in int8 | int8 per token | CPU, CUDA |
| ``int8_dynamic_intx8`` | int8 per row (torchao's intx path) | int8 per token, asymmetric | CPU, CUDA |
| ``int4_weight_only[_gN]`` | int4, 2 per byte, group N (128; _g32, _g64), tinygemm | bf16 | CUDA sm80+ |
| ``int8_weight_only_gemv`` | as ``int8_weight_only``; tinylm-kernels' fused GEMV | as is | CPU, CUDA |
| ``int4_weight_only_gemv`` | int4, 2 per byte, unpadded, group 32; tinylm-kernels' GEMV | as is | CPU, CUDA |
| ``float8`` | float8 e4m3 per row | float8 e4m3 per token, dynamic | CUDA sm89+ (Hopper, Ada) |

``intx4_*`` and ``int8_dynamic_int4`` have the quality of int4 but the bytes of int8 (torchao keeps
the values unpacked); they exist so int4 quality and int4 QAT can be measured on a CPU. The ``intx``
configs are the ones torchao's QAT can fake-quantize exactly (``tinylm.quant.qat``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import (
    Float8DynamicActivationFloat8WeightConfig,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
)
from torchao.quantization.granularity import PerAxis, PerGroup, PerRow
from torchao.quantization.quant_primitives import MappingType

from tinylm.core.registry import QUANT_SCHEMES


class SchemeUnavailableError(RuntimeError, ValueError):
    """A scheme that cannot run on this device or dtype; the message says what it needs (a bad input)."""


@dataclass(frozen=True)
class QuantScheme:
    """A named torchao quantization config and the device/dtype it needs.

    ``make_config(**options)`` builds a fresh torchao config; ``cuda_capability`` is the lowest
    ``(major, minor)`` CUDA compute capability (None: CPU works too); ``dtype`` is a weight dtype the
    scheme requires (None: any float dtype). With a ``group_size``, linear layers whose input width is
    not a multiple of it stay in high precision (``quantize`` reports them).
    """

    name: str
    make_config: Callable[..., AOBaseConfig]
    description: str
    cuda_capability: tuple[int, int] | None = None
    dtype: torch.dtype | None = None
    group_size: int | None = None
    after: Callable[[torch.nn.Module, list[str]], None] | None = None  # post-step on the quantized names

    def config(self, **options: Any) -> AOBaseConfig | None:
        """The torchao config (None for ``none``); unknown options fail with the scheme's name."""
        try:
            return self.make_config(**options)
        except TypeError as e:
            raise ValueError(f"bad options {options} for quantization scheme {self.name!r}: {e}") from None

    def check_runs_on(self, device: torch.device, dtype: torch.dtype) -> None:
        """Raise ``SchemeUnavailableError`` saying what is needed when ``device``/``dtype`` cannot run it."""
        if self.cuda_capability is not None:
            major, minor = self.cuda_capability
            need = f"{self.name} needs a CUDA GPU of compute capability >= {major}.{minor}"
            if device.type != "cuda":
                raise SchemeUnavailableError(
                    f"{need}; the model is on {device.type}. On CPU use int8_weight_only, int8_dynamic, "
                    "intx4_weight_only or int8_dynamic_int4"
                )
            capability = torch.cuda.get_device_capability(device)
            if capability < self.cuda_capability:
                raise SchemeUnavailableError(f"{need}; this GPU is {capability[0]}.{capability[1]}")
        if self.dtype is not None and dtype != self.dtype:
            raise SchemeUnavailableError(
                f"{self.name} needs {self.dtype} weights (torchao's kernel); the model is {dtype}: "
                f"call model.to({self.dtype}) first"
            )

    def __call__(self, model: torch.nn.Module, **options: Any) -> torch.nn.Module:
        from tinylm.quant.api import quantize

        return quantize(model, self.name, **options)


SCHEMES: dict[str, QuantScheme] = {}


def register_scheme(scheme: QuantScheme) -> QuantScheme:
    """Add ``scheme`` to ``tinylm.core.QUANT_SCHEMES`` (and to ``SCHEMES`` for its metadata)."""
    QUANT_SCHEMES.register(scheme.name)(scheme)
    SCHEMES[scheme.name] = scheme
    return scheme


def _int4_tinygemm(group_size: int = 128, **options: Any) -> Int4WeightOnlyConfig:
    # tile_packed_to_4d is torch's own tinygemm kernel (aten._weight_int4pack_mm); torchao's default
    # "plain" layout needs the separate mslk package.
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d", **options)


def _intx_granularity(bits: int, group_size: int | None) -> dict[str, Any]:
    if bits not in range(2, 9):
        raise ValueError(f"bits must be 2..8, got {bits}")
    return {
        "dtype": getattr(torch, f"int{bits}"),
        "granularity": PerAxis(0) if group_size is None else PerGroup(group_size),
    }


def _intx4(group_size: int | None = 32, bits: int = 4, **options: Any) -> IntxWeightOnlyConfig:
    # group_size None: one scale per output row
    g = _intx_granularity(bits, group_size)
    return IntxWeightOnlyConfig(weight_dtype=g["dtype"], granularity=g["granularity"], **options)


def _int8_dynamic_int4(
    group_size: int | None = 32, bits: int = 4, **options: Any
) -> Int8DynamicActivationIntxWeightConfig:
    g = _intx_granularity(bits, group_size)
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=g["dtype"], weight_granularity=g["granularity"], **options
    )


def _int8_dynamic_intx8(**options: Any) -> Int8DynamicActivationIntxWeightConfig:
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int8, weight_granularity=PerAxis(0), **options
    )


def _float8(**options: Any) -> Float8DynamicActivationFloat8WeightConfig:
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), **options)


register_scheme(QuantScheme("none", lambda: None, "no quantization: the model as it is"))
register_scheme(
    QuantScheme("int8_weight_only", Int8WeightOnlyConfig, "int8 weights per row, activations as they are")
)
register_scheme(
    QuantScheme(
        "int8_dynamic",
        Int8DynamicActivationInt8WeightConfig,
        "int8 weights per row, int8 activations per token",
    )
)
register_scheme(
    QuantScheme("intx4_weight_only", _intx4, "int4 values group 32 stored in int8 (CPU int4)", group_size=32)
)
register_scheme(
    QuantScheme(
        "int8_dynamic_int4", _int8_dynamic_int4, "int4 weights group 32 + int8 activations", group_size=32
    )
)
register_scheme(
    QuantScheme(
        "int8_dynamic_intx8", _int8_dynamic_intx8, "int8 weights per row + int8 asymmetric activations"
    )
)
for _group in (128, 32, 64):
    register_scheme(
        QuantScheme(
            "int4_weight_only" if _group == 128 else f"int4_weight_only_g{_group}",
            lambda group_size=_group, **o: _int4_tinygemm(group_size, **o),
            f"int4 weights group {_group}, tinygemm kernel",
            cuda_capability=(8, 0),
            dtype=torch.bfloat16,
            group_size=_group,
        )
    )


def _swap_to_gemv(model: torch.nn.Module, names: list[str]) -> None:
    from tinylm.quant.gemv import swap_to_gemv

    swap_to_gemv(model, names)


register_scheme(
    QuantScheme(
        "int8_weight_only_gemv",
        Int8WeightOnlyConfig,
        "int8_weight_only run by tinylm-kernels' fused int8 GEMV (Triton on CUDA)",
        after=_swap_to_gemv,
    )
)


def _intx4_symmetric(group_size: int = 32, **options: Any) -> IntxWeightOnlyConfig:
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(
            f"group_size must be an even integer >= 2 (two int4 values per byte), got {group_size!r}"
        )
    return IntxWeightOnlyConfig(
        weight_dtype=torch.int4,
        granularity=PerGroup(group_size),
        mapping_type=MappingType.SYMMETRIC,
        **options,
    )


def _swap_to_int4_gemv(model: torch.nn.Module, names: list[str]) -> None:
    from tinylm.quant.int4_gemv import swap_to_int4_gemv

    swap_to_int4_gemv(model, names)


register_scheme(
    QuantScheme(
        "int4_weight_only_gemv",
        _intx4_symmetric,
        "int4 weights group 32 packed two per byte, run by tinylm-kernels' int4 GEMV (Triton on CUDA)",
        group_size=32,
        after=_swap_to_int4_gemv,
    )
)
register_scheme(
    QuantScheme("float8", _float8, "float8 e4m3 weights and activations, per row", cuda_capability=(8, 9))
)
