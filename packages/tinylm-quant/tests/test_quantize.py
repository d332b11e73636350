"""quantize(): every CPU scheme stays close to the float model, swaps the right layers, saves bytes."""

import copy

import pytest
import torch
from torch import nn

from tinylm.core import QUANT_SCHEMES, UnknownNameError
from tinylm.quant import SchemeUnavailableError, model_bytes, quant_info, quantize

CUDA = torch.cuda.is_available()
# scheme -> (largest relative L2 error of the logits, stored weight type name)
CPU_SCHEMES = {
    "int8_weight_only": (0.02, "Int8Tensor"),
    "int8_dynamic": (0.03, "Int8Tensor"),
    "int8_dynamic_intx8": (0.03, "IntxUnpackedToInt8Tensor"),
    "intx4_weight_only": (0.25, "IntxUnpackedToInt8Tensor"),
    "int8_dynamic_int4": (0.25, "IntxUnpackedToInt8Tensor"),
}
CUDA_SCHEMES = ["int4_weight_only", "int4_weight_only_g32", "int4_weight_only_g64", "float8"]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("scheme", sorted(CPU_SCHEMES))
def test_cpu_scheme_close_to_float(scheme, tiny, ids):
    tol, weight_type = CPU_SCHEMES[scheme]
    model = tiny()
    ref = model(ids).logits
    q = quantize(copy.deepcopy(model), scheme)
    out = q(ids).logits
    err = rel_error(out, ref)
    assert 0 < err < tol, f"{scheme}: relative logit error {err:.4f} (tolerance {tol})"
    assert type(q.layers[0].mlp.down_proj.weight).__name__ == weight_type
    assert type(q.lm_head.weight) is nn.Parameter  # kept in high precision by default
    assert quant_info(q).scheme == scheme and "lm_head" not in quant_info(q).quantized
    assert len(quant_info(q).quantized) == 2 * 7  # q, k, v, o + gate, up, down per layer
    assert model_bytes(q, linear_only=True) < 0.6 * model_bytes(model, linear_only=True)


def test_all_schemes_registered():
    for name in [*CPU_SCHEMES, *CUDA_SCHEMES, "none"]:
        assert name in QUANT_SCHEMES


def test_none_leaves_model_unchanged(tiny, ids):
    model = tiny()
    ref = model(ids).logits
    assert torch.equal(quantize(model, "none")(ids).logits, ref)


def test_unknown_scheme_lists_known(tiny):
    with pytest.raises(UnknownNameError, match="int8_weight_only"):
        quantize(tiny(), "int3_magic")


def test_bad_option_names_scheme(tiny):
    with pytest.raises(ValueError, match="int8_weight_only"):
        quantize(tiny(), "int8_weight_only", bogus=1)


@pytest.mark.skipif(CUDA, reason="checks the CPU error")
@pytest.mark.parametrize("scheme", CUDA_SCHEMES)
def test_cuda_only_schemes_say_so_on_cpu(scheme, tiny):
    with pytest.raises(SchemeUnavailableError, match="needs a CUDA GPU"):
        quantize(tiny(), scheme)


def test_keep_patterns_and_tied_head(tiny):
    q = quantize(tiny(), "int8_weight_only", keep=["lm_head", "layers.1"])
    assert type(q.layers[1].attn.q_proj.weight) is nn.Parameter
    assert type(q.layers[0].attn.q_proj.weight).__name__ == "Int8Tensor"
    tied = quantize(tiny(tie_embeddings=True), "int8_weight_only", keep=[])
    assert tied.lm_head.weight is tied.tok_emb.weight  # never untied by quantization
    assert "lm_head" in quant_info(tied).skipped


def test_group_size_skips_narrow_layers(tiny):
    # dim 64, hidden 192: with group 128 no input width divides, so nothing is left to quantize
    with pytest.raises(ValueError, match="no linear layer"):
        quantize(tiny(), "intx4_weight_only", group_size=128)
    q = quantize(tiny(), "intx4_weight_only", group_size=64)
    assert "layers.0.mlp.down_proj" in quant_info(q).quantized  # 192 = 3 x 64


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("scheme", CUDA_SCHEMES)
def test_cuda_scheme_close_to_float(scheme, tiny):
    if scheme == "float8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs sm89+")
    model = tiny(dim=128, n_heads=4).to("cuda", torch.bfloat16)
    ids = torch.randint(0, 97, (2, 16), device="cuda")
    ref = model(ids).logits.float()
    out = quantize(copy.deepcopy(model), scheme)(ids).logits.float()
    assert 0 < rel_error(out, ref) < (0.1 if scheme == "float8" else 0.25)
