"""int4_weight_only_gemv: torchao's int4 values packed two per byte, close to the float model, a third of
the bf16 bytes, the same numbers as torchao's unpacked int4, and a save/load round trip."""

import copy

import pytest
import torch
from safetensors import safe_open
from torch import nn

from tinylm.quant import load_quantized, model_bytes, quant_info, quantize, save_quantized
from tinylm.quant.int4_gemv import Int4GemvLinear


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def linear_params(model: nn.Module) -> int:
    return sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_close_to_float_and_to_torchao_int4_in_a_third_of_the_bytes(tiny, ids, dtype):
    model = tiny().to(dtype)
    with torch.no_grad():
        ref = model(ids).logits.float()
        q = quantize(copy.deepcopy(model), "int4_weight_only_gemv")
        out = q(ids).logits.float()
        unpacked = quantize(copy.deepcopy(model), "intx4_weight_only").eval()(ids).logits.float()
    assert 0 < rel_error(out, ref) < 0.25
    # the same int4 values and scales as torchao's (group 32, symmetric); the scales in the model's dtype
    assert rel_error(out, unpacked) < (1e-5 if dtype == torch.float32 else 2e-2)
    swapped = [m for m in q.modules() if isinstance(m, Int4GemvLinear)]
    assert len(swapped) == len(quant_info(q).quantized) == 2 * 7 and type(q.lm_head) is nn.Linear
    assert all(
        m.qweight.dtype == torch.uint8 and m.scale.dtype == dtype and m.group_size == 32 for m in swapped
    )
    packed_bytes = sum(m.qweight.numel() + m.scale.numel() * m.scale.element_size() for m in swapped)
    ratio = packed_bytes / (2 * linear_params(model))  # against the same layers in bf16
    assert ratio == pytest.approx(0.25 + (2 if dtype == torch.float32 else 1) / 32)  # 0.3125x / 0.28125x
    assert model_bytes(q, linear_only=True) < model_bytes(model, linear_only=True) / (
        4 if dtype == torch.float32 else 2
    )


def test_group_size_option_and_errors(tiny, ids):
    q = quantize(tiny(), "int4_weight_only_gemv", group_size=16)
    assert q.layers[0].attn.q_proj.scale.shape == (64, 4) and q.layers[0].attn.q_proj.group_size == 16
    assert quant_info(q).options == {"group_size": 16}
    with pytest.raises(ValueError, match="group_size must be an even integer"):
        quantize(tiny(), "int4_weight_only_gemv", group_size=15)
    with pytest.raises(ValueError, match="no linear layer left to quantize"):  # no width is a multiple of 128
        quantize(tiny(), "int4_weight_only_gemv", group_size=128)


def test_round_trip_is_exact_and_packed_on_disk(tiny, ids, tmp_path):
    q = quantize(tiny(), "int4_weight_only_gemv")
    save_quantized(q, tmp_path / "ck")
    loaded = load_quantized(tmp_path / "ck")
    assert isinstance(loaded.layers[1].mlp.down_proj, Int4GemvLinear)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, q(ids).logits)
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        packed = f.get_tensor("layers.0.attn.q_proj.qweight")
    assert packed.dtype == torch.uint8 and packed.shape == (64, 32)  # two values per byte
