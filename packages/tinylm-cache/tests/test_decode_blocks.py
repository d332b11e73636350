"""Decode blocks: four decode_linear products per block give the unfused block's numbers (float64, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from tinylm.cache import StaticCache
from tinylm.cache.conformance import tiny_model
from tinylm.cache.decode_blocks import FOLDS, DecodeFusedBlock, fuse_decode_blocks
from tinylm.cache.fast_decode import fast_greedy
from tinylm.cache.static import static_greedy_generate
from tinylm.core.fusion import fuse_projections
from tinylm.core.generate import generate


def fused_copy(model, folds="epilogue"):
    m = copy.deepcopy(model)
    fuse_projections(m)
    assert fuse_decode_blocks(m, folds) == len(m.layers)
    assert all(b.decode_folds == folds for b in m.layers)
    return m


@pytest.mark.parametrize("folds", FOLDS)
def test_same_logits_and_greedy_tokens_as_the_unfused_model(folds) -> None:
    model = tiny_model()
    with torch.no_grad():  # norm weights away from 1, so a norm left out or applied twice would show
        for block in model.layers:
            block.attn_norm.weight.uniform_(0.5, 1.5)
            block.mlp_norm.weight.uniform_(0.5, 1.5)
    fused = fused_copy(model, folds)
    assert all(type(b) is DecodeFusedBlock for b in fused.layers)
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, model(ids).logits, rtol=1e-10, atol=1e-10)
    ref = generate(model, ids, 10, temperature=0.0, use_cache=False)
    assert torch.equal(generate(fused, ids, 10, temperature=0.0), ref)
    for attention in ("sdpa", "kernel", "kernel_rope"):  # the static cache's decode paths, attend hooks too
        c = model.config
        cache = StaticCache(2, 17, c.n_layers, c.n_kv_heads, c.head_dim, dtype=torch.float64,
                            decode_attention=attention)  # fmt: skip
        assert torch.equal(static_greedy_generate(fused, ids, 10, cache=cache), ref), attention


def test_training_mode_and_state_dict_are_the_plain_blocks() -> None:
    model = tiny_model()
    fused = fused_copy(model)
    plain = copy.deepcopy(model)
    fuse_projections(plain)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    fused.train()
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    fused(
        ids
    ).logits.sum().backward()  # the plain forward: autograd works (the decode_linear op has no backward)
    assert fused.layers[0].attn.qkv_proj.weight.grad is not None


@pytest.mark.parametrize(
    ("overrides", "fuse"),
    [({}, False), ({"mlp": "geglu"}, True), ({"norm": "layernorm"}, True), ({"block": "postnorm"}, True)],
)
def test_ineligible_blocks_are_left_alone(overrides, fuse) -> None:
    """Unfused projections, a GEGLU MLP, LayerNorm or a post-norm block: nothing changes."""
    model = tiny_model(**overrides)
    if fuse:
        fuse_projections(model)
    assert fuse_decode_blocks(model) == 0
    assert not any(type(b) is DecodeFusedBlock for b in model.layers)


def test_unknown_folds_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown folds 'both'; choose one of epilogue, prologue"):
        fuse_decode_blocks(tiny_model(), "both")


@pytest.mark.parametrize("folds", FOLDS)
def test_fast_greedy_with_decode_blocks_gives_the_greedy_tokens(folds) -> None:
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    ref = generate(model, ids, 6, temperature=0.0, use_cache=False)[:, 5:]
    fast = copy.deepcopy(model)
    tokens = torch.stack(list(fast_greedy(fast, ids, 6, decode_blocks=folds)), dim=1)
    assert torch.equal(tokens, ref)
    assert all(type(b) is DecodeFusedBlock and b.decode_folds == folds for b in fast.layers)


def test_fast_greedy_says_when_no_block_can_be_fused() -> None:
    with pytest.raises(ValueError, match="no block of this model can be fused"):
        fast_greedy(tiny_model(mlp="geglu"), torch.ones(1, 3, dtype=torch.long), 2, decode_blocks="epilogue")
