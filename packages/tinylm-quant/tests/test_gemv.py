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


def test_fold_rms_norms_keeps_the_logits(tiny, ids):
    """Each pre-norm block's RMSNorm moves into the fused q/k/v and gate/up int8 projections: same logits
    (float32; the norm is applied as a factor after the sum), two norms fewer per block."""
    from tinylm.core.fusion import fuse_projections
    from tinylm.quant.gemv import NormInt8GemvLinear, fold_rms_norms

    model = tiny()
    with torch.no_grad():  # non-trivial norm weights, so folding the wrong one would show
        for block in model.layers:
            block.attn_norm.weight.uniform_(0.5, 1.5)
            block.mlp_norm.weight.uniform_(0.5, 1.5)
    fuse_projections(model)
    q = quantize(model, "int8_weight_only_gemv")
    with torch.no_grad():
        before = q(ids).logits
    assert fold_rms_norms(q, sites=("mlp",)) == len(q.layers)
    assert fold_rms_norms(q) == len(q.layers)  # the attention sites now; the MLP ones are done
    block = q.layers[0]
    assert isinstance(block.attn.qkv_proj, NormInt8GemvLinear) and isinstance(
        block.mlp_norm, torch.nn.Identity
    )
    assert isinstance(block.mlp.gate_up_proj, NormInt8GemvLinear) and isinstance(
        block.attn_norm, torch.nn.Identity
    )
    with torch.no_grad():
        torch.testing.assert_close(q(ids).logits, before, rtol=1e-4, atol=1e-4)
    assert fold_rms_norms(q) == 0
    with pytest.raises(ValueError, match="unknown fold site"):
        fold_rms_norms(q, sites=("head",))


def test_fold_rms_norms_leaves_unfused_or_unquantized_models_alone(tiny):
    from tinylm.quant.gemv import fold_rms_norms

    assert fold_rms_norms(quantize(tiny(), "int8_weight_only_gemv")) == 0  # q/k/v and gate/up not fused
    assert fold_rms_norms(tiny()) == 0


def test_fuse_int8_projections_is_exact_and_prepare_folds(tiny, ids):
    """A model quantized unfused (as a checkpoint loads) fuses its int8 q/k/v and gate/up exactly (row
    scales), and prepare_int8_decode then folds the norms: the logits stay, 5 launches fewer per block."""
    from tinylm.quant.gemv import NormInt8GemvLinear, fuse_int8_projections, prepare_int8_decode

    model = tiny()
    with torch.no_grad():
        for block in model.layers:
            block.attn_norm.weight.uniform_(0.5, 1.5)
            block.mlp_norm.weight.uniform_(0.5, 1.5)
    q = quantize(model, "int8_weight_only_gemv")
    with torch.no_grad():
        before = q(ids).logits
    fused = copy.deepcopy(q)
    assert fuse_int8_projections(fused) == 2 * len(q.layers)
    attn = fused.layers[0].attn
    assert type(attn.qkv_proj) is Int8GemvLinear and not hasattr(attn, "q_proj")
    assert attn.qkv_proj.qweight.shape[0] == sum(
        getattr(q.layers[0].attn, n).out_features for n in ("q_proj", "k_proj", "v_proj")
    )
    with torch.no_grad():
        # the same dot products (a different matmul shape may round differently in the last bit)
        torch.testing.assert_close(fused(ids).logits, before, rtol=1e-6, atol=1e-6)
    assert fuse_int8_projections(fused) == 0  # already fused
    assert prepare_int8_decode(q) == {"fused": 2 * len(q.layers), "folded": 2 * len(q.layers)}
    assert isinstance(q.layers[1].mlp.gate_up_proj, NormInt8GemvLinear)
    with torch.no_grad():
        torch.testing.assert_close(q(ids).logits, before, rtol=1e-4, atol=1e-4)
    assert fuse_int8_projections(tiny()) == 0  # float projections: core's fuse_projections does those


def test_prepare_with_pdl_marks_the_folded_gemvs_or_says_why_not(tiny, ids):
    from tinylm.kernels.int8_gemv_triton import pdl_available
    from tinylm.quant.gemv import (
        NormInt8GemvLinear,
        fold_rms_norms,
        fuse_int8_projections,
        prepare_int8_decode,
    )

    q = quantize(tiny(), "int8_weight_only_gemv")
    if not pdl_available():
        with pytest.raises(RuntimeError, match=r"prepare_int8_decode\(pdl=True\): .*needs "):
            prepare_int8_decode(copy.deepcopy(q), pdl=True)
    marked = copy.deepcopy(q)
    plain = copy.deepcopy(q)
    prepare_int8_decode(q)  # PDL where it can run: the default
    folded = [m for m in q.modules() if isinstance(m, NormInt8GemvLinear)]
    assert folded and all(m.pdl == pdl_available() for m in folded)
    prepare_int8_decode(plain, pdl=False)
    assert not any(m.pdl for m in plain.modules() if isinstance(m, NormInt8GemvLinear))
    fuse_int8_projections(marked)  # fold_rms_norms marks without prepare_int8_decode's GPU check
    assert fold_rms_norms(marked, pdl=True) == len(folded)
    assert all(m.pdl for m in marked.modules() if isinstance(m, NormInt8GemvLinear))
    with torch.no_grad():  # on CPU tensors the marked modules decode through the dispatched op
        torch.testing.assert_close(marked(ids).logits, q(ids).logits, rtol=0, atol=0)
