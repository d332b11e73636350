"""int8_weight_only_gemv: torchao's int8 numbers through tinylm-kernels' int8_linear op."""

import copy

import pytest
import torch

from tinylm.quant import load_quantized, model_bytes, quant_info, quantize, save_quantized
from tinylm.quant.gemv import Int8GemvLinear


def test_gemv_scheme_matches_int8_weight_only(tiny, ids):
    model = tiny()
    torchao_int8 = quantize(copy.deepcopy(model), "int8_weight_only")
    gemv = quantize(copy.deepcopy(model), "int8_weight_only_gemv")
    assert isinstance(gemv.layers[1].mlp.up_proj, Int8GemvLinear)
    assert type(gemv.lm_head) is torch.nn.Linear  # kept
    assert gemv.layers[1].mlp.up_proj.qweight.dtype == torch.int8
    with torch.no_grad():
        torch.testing.assert_close(gemv(ids).logits, torchao_int8(ids).logits, rtol=1e-5, atol=1e-5)
        assert not torch.equal(gemv(ids).logits, model(ids).logits)
    # same int8 values and row scales (torchao's tensor also carries small extra metadata tensors)
    assert model_bytes(gemv, linear_only=True) == pytest.approx(
        model_bytes(torchao_int8, linear_only=True), rel=0.02
    )
    assert len(quant_info(gemv).quantized) == 14


def test_gemv_round_trip(tiny, ids, tmp_path):
    q = quantize(tiny(), "int8_weight_only_gemv")
    save_quantized(q, tmp_path / "ck")
    loaded = load_quantized(tmp_path / "ck")
    assert isinstance(loaded.layers[0].attn.o_proj, Int8GemvLinear)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, q(ids).logits)
