"""fuse_projections: the fused model computes the same numbers with fewer, wider matrices."""

import pytest
import torch
from torch import nn

from tinylm.core import TinyLM
from tinylm.core.fusion import fuse_projections
from tinylm.core.generate import generate


@pytest.mark.parametrize(
    "options",
    [
        dict(n_heads=4, n_kv_heads=2, mlp="swiglu"),  # GQA, SwiGLU
        dict(n_heads=4, n_kv_heads=4, mlp="geglu", bias=True),  # biases, another gated activation
        dict(n_heads=4, n_kv_heads=1, mlp="standard"),  # MQA, an MLP with nothing to fuse
    ],
)
def test_fused_model_matches_the_unfused_one_in_float64(options):
    torch.manual_seed(0)
    model = TinyLM(vocab_size=53, dim=48, n_layers=2, max_seq_len=64, **options).double().eval()
    ids = torch.randint(0, 53, (3, 19))
    ref = model(ids).logits
    ref_tokens = generate(model, ids[:, :5], 8, temperature=0.0)
    n = fuse_projections(model)
    assert n == 2 * (2 if options["mlp"] != "standard" else 1)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert "qkv_proj" in names and "q_proj" not in names and "k_proj" not in names
    assert ("gate_up_proj" in names) == (options["mlp"] != "standard")
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-12)
    assert torch.equal(generate(model, ids[:, :5], 8, temperature=0.0), ref_tokens)  # through the KV cache
    assert fuse_projections(model) == 0  # already fused: nothing left to do


def test_fusion_refuses_projections_that_are_not_plain_linears():
    model = TinyLM(vocab_size=17, dim=32, n_layers=1, n_heads=2, max_seq_len=16)

    class Wrapped(nn.Linear):
        pass

    old = model.layers[0].attn.k_proj
    model.layers[0].attn.k_proj = Wrapped(old.in_features, old.out_features, bias=False)
    with pytest.raises(TypeError, match="fuse before quantizing"):
        fuse_projections(model)
