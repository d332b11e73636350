"""Quantized KV cache: round-trip error bounds, int4 packing, memory saved, teacher-forced quality."""

from __future__ import annotations

import pytest
import torch

from tinylm.cache.conformance import tiny_model
from tinylm.cache.quantized import QuantizedCache, dequantize, quantize


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_within_half_a_step(bits: int) -> None:
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64) * torch.rand(2, 3, 7, 1, dtype=torch.float64) * 5
    q, scale = quantize(x, bits)
    back = dequantize(q, scale, bits, torch.float64)
    qmax = {8: 127, 4: 7}[bits]
    step = x.abs().amax(-1, keepdim=True) / qmax
    assert back.shape == x.shape
    # half a step of rounding, plus the fp16 scale's relative error (2^-11) times the largest code
    assert bool(((back - x).abs() <= step * (0.5 + qmax * 2**-11) + 1e-9).all())


def test_int4_packs_two_values_per_byte() -> None:
    q, _ = quantize(torch.randn(1, 2, 5, 8), 4)
    assert q.dtype == torch.uint8 and q.shape == (1, 2, 5, 4)
    with pytest.raises(ValueError, match="even head_dim"):
        quantize(torch.randn(1, 1, 1, 5), 4)


def test_unknown_bit_width_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="bits in"):
        QuantizedCache(bits=3)


@pytest.mark.parametrize(("bits", "min_agreement", "max_ratio"), [(8, 0.95, 0.30), (4, 0.70, 0.18)])
def test_teacher_forced_top1_agreement_and_memory(bits: int, min_agreement: float, max_ratio: float) -> None:
    model = tiny_model().float()
    ids = torch.randint(0, 97, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        cache = QuantizedCache(bits=bits)
        got = [model(ids[:, :8], cache=cache).logits]
        got += [model(ids[:, t : t + 1], cache=cache).logits for t in range(8, 40)]
    agreement = (torch.cat(got, 1).argmax(-1) == full.argmax(-1)).float().mean().item()
    assert agreement >= min_agreement
    # fp32 baseline: head_dim 16 -> 64 bytes/vector; int8 16 bytes + 2 (fp16 scale), int4 8 + 2
    ratio = cache.memory_bytes() / cache.full_precision_bytes()
    assert ratio == pytest.approx({8: 18 / 64, 4: 10 / 64}[bits])
    assert ratio <= max_ratio
