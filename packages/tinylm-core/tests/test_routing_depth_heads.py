"""Mixture-of-depths and mixture-of-heads routers: dense equivalence, capacity, gradients, caches."""

import math

import pytest
import torch

from tinylm.core import ModelConfig, StandardCache, TinyLM
from tinylm.core.components.attention import AttentionContext, build_attention_mask
from tinylm.core.components.mod import HISTORY_ATTR, MixtureOfDepthsBlock
from tinylm.core.components.routing import routing_stats
from tinylm.core.generate import generate

BASE = dict(vocab_size=29, dim=32, n_layers=2, n_heads=4, max_seq_len=64)


def routed(router: str, seed: int = 0, **opts) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**BASE, router=router, extra={router: opts})


def dense_copy(model: TinyLM) -> TinyLM:
    """The same weights in a model without router: wrappers' and routers' parameters left out."""
    dense = TinyLM(**BASE)
    state = {
        k.replace(".block.", ".").replace("attn.attn.", "attn."): v
        for k, v in model.state_dict().items()
        if ".router." not in k and ".predictor." not in k
    }
    dense.load_state_dict(state)
    return dense.train(model.training)


@pytest.mark.parametrize("train", [True, False])
def test_mod_with_capacity_one_equals_the_dense_model(train):
    model = routed("mod", capacity=1.0, every=1).train(train)
    assert all(isinstance(layer, MixtureOfDepthsBlock) for layer in model.layers)
    x = torch.randint(0, 29, (2, 11))
    torch.testing.assert_close(model(x).logits, dense_copy(model)(x).logits, rtol=0, atol=0)


def block_and_context(t: int = 10, padded: bool = False):
    model = routed("mod", capacity=0.5, every=1, predictor_weight=1.0)
    layer = model.layers[0]
    x = torch.randn(2, t, 32)
    pad = torch.ones(2, t, dtype=torch.long)
    if padded:
        pad[1, :3] = 0
    positions = (pad.cumsum(-1) - 1).clamp(min=0)
    mask = build_attention_mask(pad if padded else None, t, t, x.device)
    return layer, x, AttentionContext(positions=positions, mask=mask, positional=model.pos)


def test_mod_processes_exactly_the_capacity_and_trains_router_and_predictor():
    layer, x, ctx = block_and_context(t=10)
    out = layer.train()(x, ctx)
    changed = (out != x).any(-1)  # (B, T): tokens the block updated
    assert changed.sum(-1).tolist() == [math.ceil(0.5 * 10)] * 2
    assert float(layer.stats["processed"]) == pytest.approx(0.5)
    (out.pow(2).sum() + layer.aux_loss).backward()
    assert layer.router.weight.grad.abs().sum() > 0  # straight-through gate
    assert layer.predictor.weight.grad.abs().sum() > 0  # causal predictor (BCE on the top-k choice)


@pytest.mark.parametrize("padded", [False, True])
def test_mod_gathered_training_path_equals_masked_inference_path(padded):
    """For one selection, running the selected tokens alone == all tokens with unselected keys hidden."""
    layer, x, ctx = block_and_context(t=9, padded=padded)
    layer, x = layer.double(), x.double()
    ctx.positional.double()
    idx = torch.tensor([[0, 2, 3, 7], [3, 4, 6, 8]])
    selected = torch.zeros(2, 9, dtype=torch.bool).scatter(1, idx, True)
    gathered = layer.forward_gathered(x, ctx, idx)
    masked = layer.forward_masked(x, ctx, selected)
    torch.testing.assert_close(gathered, masked, atol=1e-10, rtol=1e-10)
    assert torch.equal(masked[~selected], x[~selected])


def test_mod_cached_decoding_equals_recomputation():
    model = routed("mod", capacity=0.5, every=1).eval()
    with torch.no_grad():  # a predictor that selects some tokens and skips others
        for layer in model.layers:
            layer.predictor.weight.normal_(0, 1.0)
    x = torch.randint(0, 29, (2, 14))
    model(x)
    processed = [s["processed"] for s in routing_stats(model).values()]
    assert all(0 < p < 1 for p in processed), processed
    cache = StandardCache()
    steps = [model(x[:, :5], cache=cache).logits] + [
        model(x[:, i : i + 1], cache=cache).logits for i in range(5, 14)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), model(x).logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(
        generate(model, x[:, :4], 6, temperature=0),
        generate(model, x[:, :4], 6, temperature=0, use_cache=False),
    )
    getattr(cache, HISTORY_ATTR).clear()  # a cache whose past this router never saw
    with pytest.raises(ValueError, match="mixture-of-depths needs the routing of every cached position"):
        model(x[:, :1], cache=cache)


def test_mod_routes_every_other_layer_by_default():
    model = routed("mod")
    assert [isinstance(layer, MixtureOfDepthsBlock) for layer in model.layers] == [False, True]
    with pytest.raises(ValueError, match=r"capacity must be in \(0, 1\]"):
        routed("mod", capacity=1.5)


def test_heads_with_all_heads_on_and_a_flat_router_equals_the_dense_model():
    model = routed("heads", top_k=4)
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.router.weight.zero_()  # uniform probabilities: every head weight is exactly 1
    x = torch.randint(0, 29, (2, 9))
    torch.testing.assert_close(model(x).logits, dense_copy(model)(x).logits, atol=1e-6, rtol=1e-5)


def test_heads_weights_gradients_and_cache():
    model = routed("heads", top_k=2, shared=1).train()
    attn = model.layers[0].attn
    x = torch.randn(3, 6, 32)
    w = attn.head_weights(x)
    assert w.shape == (3, 6, 4)
    assert torch.equal(w[..., 0], torch.ones(3, 6))  # the shared head
    assert ((w[..., 1:] > 0).sum(-1) == 2).all()  # top-2 of the 3 routed heads
    torch.testing.assert_close(w[..., 1:].sum(-1), torch.full((3, 6), 2.0))
    ids = torch.randint(0, 29, (2, 10))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None
    out.loss.backward()
    assert attn.router.weight.grad.abs().sum() > 0
    assert routing_stats(model)["layers.0.attn"]["head_utilisation"][0] > 0
    model.eval()
    assert torch.equal(
        generate(model, ids[:, :4], 6, temperature=0),
        generate(model, ids[:, :4], 6, temperature=0, use_cache=False),
    )
    with pytest.raises(ValueError, match="top_k <= n_heads - shared"):
        routed("heads", top_k=4, shared=1)


def test_routers_train_with_moe_and_attention_variants_together():
    torch.manual_seed(0)
    cfg = ModelConfig(
        **BASE, router="mod", mlp="moe", attention="sliding_window", extra={"window": 4, "mod": {"every": 1}}
    )
    model = TinyLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 29, (4, 16))
    losses = []
    for _ in range(15):
        loss = model(x, labels=x.roll(-1, 1)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.3


@pytest.mark.parametrize("overrides", [dict(router="mod"), dict(router="heads"), dict(attention="alibi")])
def test_hf_export_refuses_models_transformers_cannot_express(overrides):
    pytest.importorskip("transformers")
    from tinylm.core import to_hf

    with pytest.raises(ValueError, match="to_hf exports plain attention without routers"):
        to_hf(TinyLM(**BASE, **overrides))


class OwnMaskCache(StandardCache):
    """A cache that builds its own attention mask (as static, paged and ring-buffer caches do)."""

    def attention_mask(self, layer_idx, ctx):
        return ctx.mask


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(router="mod", extra={"mod": {"every": 1}}), "mixture-of-depths needs a cache holding past"),
        (dict(attention="sliding_window"), "SlidingWindowAttention measures distances in cache slots"),
        (dict(attention="alibi", positional="none"), "ALiBiAttention measures distances in cache slots"),
    ],
)
def test_slot_sensitive_plugins_refuse_caches_with_their_own_layout(overrides, match):
    model = TinyLM(**BASE, **overrides).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.randint(0, 29, (1, 5)), cache=OwnMaskCache())
    for attention in ("qk_norm", "softcap"):  # no distances: any cache
        TinyLM(**BASE, attention=attention).eval()(torch.randint(0, 29, (1, 5)), cache=OwnMaskCache())
