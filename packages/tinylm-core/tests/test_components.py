"""Every registered activation, norm, MLP and position encoding against plain float64 PyTorch."""

import math

import pytest
import torch

from tinylm.core import ACTIVATIONS, MLPS, NORMS, POSITIONALS

X = torch.randn(3, 7, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2

ACT_REFS = {
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "relu2": lambda x: torch.where(x > 0, x, torch.zeros_like(x)) ** 2,
}


def test_every_activation_has_a_reference():
    assert set(ACTIVATIONS.names()) == set(ACT_REFS)


@pytest.mark.parametrize("name", sorted(ACT_REFS))
def test_activation(name):
    torch.testing.assert_close(ACTIVATIONS.build(name)(X), ACT_REFS[name](X))


def test_norms_match_reference():
    assert set(NORMS.names()) == {"rmsnorm", "layernorm"}
    w = torch.rand(24, dtype=torch.float64) + 0.5
    b = torch.randn(24, dtype=torch.float64)
    rms = NORMS.build("rmsnorm", 24, eps=1e-6).double()
    rms.weight.data.copy_(w)
    torch.testing.assert_close(rms(X), X / torch.sqrt((X * X).mean(-1, keepdim=True) + 1e-6) * w)
    ln = NORMS.build("layernorm", 24, eps=1e-5, bias=True).double()
    ln.weight.data.copy_(w)
    ln.bias.data.copy_(b)
    mu, var = X.mean(-1, keepdim=True), X.var(-1, keepdim=True, unbiased=False)
    torch.testing.assert_close(ln(X), (X - mu) / torch.sqrt(var + 1e-5) * w + b)
    assert NORMS.build("layernorm", 24, bias=False).bias is None


@pytest.mark.parametrize("name", ["standard", "gated", "swiglu", "geglu"])
def test_mlps_match_reference(name, tiny_config):
    cfg = tiny_config(dim=24, n_heads=4, hidden_dim=40, bias=True, activation="relu2", mlp=name)
    mlp = MLPS.build(name, cfg).double()
    for p in mlp.parameters():
        torch.nn.init.normal_(p)
    act = {"standard": "relu2", "gated": "relu2", "swiglu": "silu", "geglu": "gelu_tanh"}[name]

    def lin(layer, x):
        return x @ layer.weight.T + layer.bias

    if name == "standard":
        ref = lin(mlp.down_proj, ACT_REFS[act](lin(mlp.up_proj, X)))
    else:
        ref = lin(mlp.down_proj, ACT_REFS[act](lin(mlp.gate_proj, X)) * lin(mlp.up_proj, X))
    torch.testing.assert_close(mlp(X), ref)


def test_rope_matches_complex_rotation(tiny_config):
    cfg = tiny_config(dim=32, n_heads=2, rope_theta=500.0)
    rope = POSITIONALS.build("rope", cfg).double()
    q, k = torch.randn(2, 2, 5, 16, dtype=torch.float64), torch.randn(2, 2, 5, 16, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    rq, rk = rope.rotate(q, k, pos)
    # Reference: pair dims (i, i + hd/2) as a complex number, rotate by pos * theta^(-2i/hd).
    freqs = 500.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    angle = pos[:, None, :, None].double() * freqs  # (B, 1, T, 8)
    for x, rx in ((q, rq), (k, rk)):
        z = torch.complex(x[..., :8], x[..., 8:]) * torch.exp(1j * angle)
        torch.testing.assert_close(rx, torch.cat([z.real, z.imag], -1))
    # relative property: <rot(q, m), rot(k, n)> depends on m - n only
    a, _ = rope.rotate(q[:1, :1, :1], q[:1, :1, :1], torch.tensor([[3]]))
    b, _ = rope.rotate(k[:1, :1, :1], k[:1, :1, :1], torch.tensor([[1]]))
    c, _ = rope.rotate(q[:1, :1, :1], q[:1, :1, :1], torch.tensor([[12]]))
    d, _ = rope.rotate(k[:1, :1, :1], k[:1, :1, :1], torch.tensor([[10]]))
    torch.testing.assert_close((a * b).sum(), (c * d).sum())


def test_learned_and_none_positionals(tiny_config):
    cfg = tiny_config(dim=24, n_heads=4, max_seq_len=9)
    learned = POSITIONALS.build("learned", cfg).double()
    torch.nn.init.normal_(learned.weight)
    pos = torch.tensor([[0, 2, 8]])
    x = torch.randn(1, 3, 24, dtype=torch.float64)
    torch.testing.assert_close(learned.embed(x, pos), x + learned.weight[[0, 2, 8]][None])
    assert learned.max_positions == 9
    none = POSITIONALS.build("none", cfg)
    assert none.embed(x, pos) is x and none.rotate(x, x, pos) == (x, x) and none.max_positions is None
    assert set(POSITIONALS.names()) == {"rope", "learned", "none"}


def test_rope_table_is_computed_once_per_forward(tiny_model, monkeypatch):
    model = tiny_model(n_layers=3)
    calls = []
    original = type(model.pos).cos_sin
    monkeypatch.setattr(type(model.pos), "cos_sin", lambda self, *a: calls.append(1) or original(self, *a))
    ids = torch.randint(0, 97, (2, 9))
    out = model(ids).logits
    assert len(calls) == 1  # shared by the three layers
    monkeypatch.undo()
    torch.testing.assert_close(out, model(ids).logits)
