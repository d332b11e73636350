"""Routers: mixture-of-experts MLP (shapes, gradients, load balancing, capacity vs a naive loop)."""

import math

import pytest
import torch

from tinylm.core import ROUTERS, ModelConfig, TinyLM
from tinylm.core.components.moe import MoEMLP, load_balancing_loss, router_z_loss
from tinylm.core.components.routing import collect_aux_loss, routing_stats
from tinylm.core.generate import generate


def moe_config(**moe) -> ModelConfig:
    opts = {"experts": 4, "top_k": 2, **moe}
    return ModelConfig(
        vocab_size=23, dim=16, n_heads=2, n_layers=2, hidden_dim=24, mlp="moe", extra={"moe": opts}
    )


def naive_moe(layer: MoEMLP, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Token by token in float64: first choices of all tokens, then second choices, each expert up to C."""
    flat = x.reshape(-1, x.shape[-1]).double()
    probs = (flat @ layer.router.weight.double().t()).softmax(-1)
    top_p, top_i = probs.topk(layer.top_k, dim=-1)
    if layer.top_k > 1:  # top-1 keeps the raw probability (Switch), so the router gets a gradient
        top_p = top_p / top_p.sum(-1, keepdim=True)
    cap = layer.capacity(flat.shape[0])
    counts, out = [0] * layer.n_experts, torch.zeros_like(flat)
    for choice in range(layer.top_k):
        for n in range(flat.shape[0]):
            e = int(top_i[n, choice])
            if counts[e] >= cap:
                continue  # dropped: this expert is full
            counts[e] += 1
            h = layer.act(flat[n] @ layer.w_gate[e].double()) * (flat[n] @ layer.w_up[e].double())
            out[n] += top_p[n, choice] * (h @ layer.w_down[e].double())
    return out.view(x.shape), counts


@pytest.mark.parametrize(
    ("top_k", "capacity_factor", "train"), [(1, 1.0, True), (2, 0.5, True), (2, 1.25, False)]
)
def test_moe_matches_a_naive_loop_and_respects_capacity(top_k, capacity_factor, train):
    torch.manual_seed(0)
    layer = MoEMLP(moe_config(top_k=top_k, capacity_factor=capacity_factor)).train(train)
    with torch.no_grad():
        layer.router.weight.mul_(50)  # a confident router: uneven loads, so capacity binds
    x = torch.randn(3, 7, 16)
    out = layer(x)
    assert out.shape == x.shape
    ref, counts = naive_moe(layer, x)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-4)
    cap = layer.capacity(21)
    assert max(counts) <= cap
    dropped = 1 - sum(counts) / (21 * top_k)
    assert float(layer.stats["dropped"]) == pytest.approx(dropped, abs=1e-6)
    if train and capacity_factor < 1:
        assert dropped > 0 and cap == math.ceil(capacity_factor * 21 * top_k / 4)
    if not train:
        assert dropped == 0  # no token dropping in eval: outputs never depend on other tokens


def test_load_balancing_loss_is_minimised_by_uniform_routing():
    n, e = 64, 4
    uniform = torch.full((n, e), 1 / e)
    top = torch.arange(n).remainder(e)[:, None]  # balanced assignments
    assert float(load_balancing_loss(uniform, top, e)) == pytest.approx(1.0)
    collapsed = torch.zeros(n, e).index_fill(1, torch.tensor([0]), 1.0)
    assert float(load_balancing_loss(collapsed, torch.zeros(n, 1, dtype=torch.long), e)) == pytest.approx(e)
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 3.0, 10.0):
        probs = (torch.randn(n, e, generator=g) * scale).softmax(-1)
        assert float(load_balancing_loss(probs, probs.topk(2, -1).indices, e)) >= 1.0 - 1e-6
    # gradient descent on the auxiliary loss alone moves a collapsed router towards the uniform minimum
    torch.manual_seed(0)
    layer = MoEMLP(moe_config(aux_weight=1.0, z_weight=0.0)).train()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] += 1.0  # every token prefers expert 0
    x = torch.randn(256, 16) + 0.5
    opt = torch.optim.SGD(layer.router.parameters(), lr=1.0)
    layer(x)
    first, unused = float(layer.aux_loss.detach()), int((layer.stats["utilisation"] == 0).sum())
    for _ in range(200):
        layer(x)
        opt.zero_grad()
        layer.aux_loss.backward()
        opt.step()
    layer(x)
    assert first > 1.5 and unused > 0
    assert float(layer.aux_loss.detach()) < 1.1 and (layer.stats["utilisation"] > 0).all()


def test_router_z_loss():
    assert float(router_z_loss(torch.zeros(5, 4))) == pytest.approx(math.log(4) ** 2)
    assert float(router_z_loss(torch.randn(5, 4) * 10)) > float(router_z_loss(torch.randn(5, 4)))


def test_moe_model_gradients_reach_the_router_and_aux_loss_is_in_the_loss():
    torch.manual_seed(0)
    model = TinyLM(moe_config(shared_expert=True)).train()
    x = torch.randint(0, 23, (2, 10))
    out = model(x, labels=x)
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    ce = torch.nn.functional.cross_entropy(out.logits.view(-1, 23), x.view(-1))
    torch.testing.assert_close(out.loss, ce + out.aux_loss)
    out.loss.backward()
    for layer in model.layers:
        assert layer.mlp.router.weight.grad.abs().sum() > 0
        assert layer.mlp.w_gate.grad.abs().sum() > 0 and layer.mlp.shared.up_proj.weight.grad is not None
    summed = model(x, labels=x, loss_reduction="sum")  # per-token aux loss scaled like the summed CE
    torch.testing.assert_close(summed.loss, ce * 20 + summed.aux_loss * 20, rtol=1e-5, atol=1e-4)
    stats = routing_stats(model)
    assert set(stats) == {"layers.0.mlp", "layers.1.mlp"}
    assert sum(stats["layers.0.mlp"]["utilisation"]) == pytest.approx(1.0)
    model.eval()
    assert model(x, labels=x).aux_loss is None and collect_aux_loss(model) is None


def test_moe_cached_generation_equals_recomputation():
    torch.manual_seed(0)
    model = TinyLM(moe_config(capacity_factor=0.5)).eval()
    x = torch.randint(0, 23, (2, 5))
    assert torch.equal(
        generate(model, x, 8, temperature=0), generate(model, x, 8, temperature=0, use_cache=False)
    )


def test_unknown_router_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown router 'nope'.*heads, mod, none"):
        ModelConfig(router="nope")
    with pytest.raises(
        ValueError, match=r"unknown model.extra.moe options \['expert'\]; allowed: aux_weight"
    ):
        TinyLM(vocab_size=11, dim=16, n_heads=2, n_layers=1, mlp="moe", extra={"moe": {"expert": 4}})
    with pytest.raises(ValueError, match="top_k <= experts"):
        TinyLM(moe_config(top_k=5))
    assert {"none", "mod", "heads"} <= set(ROUTERS.names())
