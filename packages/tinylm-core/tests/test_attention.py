"""Attention: every backend equals a float64 naive reference, with GQA/MQA, padding masks and a cache."""

import math

import pytest
import torch

from tinylm.core import ATTENTION_BACKENDS, StandardCache, TinyLM
from tinylm.core.components.attention import build_attention_mask, repeat_kv

# backends that compute plain softmax attention; the variants (module classes: sliding window, ALiBi, ...)
# change the result on purpose and have their own references in test_attention_variants.py
BACKENDS = [n for n in ATTENTION_BACKENDS.names() if not isinstance(ATTENTION_BACKENDS.get(n), type)]


def naive_attention(q, k, v, allowed):
    att = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
    return att @ v.double()


def test_expected_backends_registered():
    assert {"sdpa", "eager"} <= set(BACKENDS)
    if hasattr(torch.nn.attention, "flex_attention"):
        assert "flex_attention" in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("t", "s", "padded"), [(7, 7, False), (7, 7, True), (3, 10, False), (1, 9, True)])
def test_backend_matches_naive(backend, t, s, padded):
    g = torch.Generator().manual_seed(t * 31 + s)
    q = torch.randn(2, 4, t, 16, generator=g)
    k, v = torch.randn(2, 4, s, 16, generator=g), torch.randn(2, 4, s, 16, generator=g)
    pad = torch.ones(2, s, dtype=torch.long)
    if padded:
        pad[1, :3] = 0  # left padding in the second row
    mask = build_attention_mask(pad if padded else None, t, s, q.device)
    allowed = mask if mask is not None else torch.ones(t, s, dtype=torch.bool).tril()
    out = ATTENTION_BACKENDS.get(backend)(q, k, v, mask, 0.0, 1 / math.sqrt(16))
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, allowed), atol=2e-5, rtol=1e-4)


def test_mask_semantics():
    pad = torch.tensor([[0, 1, 1, 1]])
    m = build_attention_mask(pad, 2, 4, torch.device("cpu"))[0, 0]
    # queries are positions 2 and 3; key 0 is padding; causal
    assert m.tolist() == [[False, True, True, False], [False, True, True, True]]
    # a padded query still sees itself, so softmax never gets an all-masked row
    m = build_attention_mask(pad, 4, 4, torch.device("cpu"))[0, 0]
    assert m[0].tolist() == [True, False, False, False]
    assert build_attention_mask(None, 5, 5, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="attention_mask covers 3 positions"):
        build_attention_mask(torch.ones(1, 3), 2, 4, torch.device("cpu"))


def test_repeat_kv_groups_heads():
    x = torch.arange(2 * 3).float().view(1, 2, 3, 1)
    y = repeat_kv(x, 2)
    assert y.shape == (1, 4, 3, 1)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 2], x[:, 1])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_attention_module_against_reference(n_kv_heads, tiny_model):
    """The full attention layer (projections, RoPE, GQA) against a hand-written float64 version."""
    model = tiny_model(n_kv_heads=n_kv_heads).double()
    attn, pos = model.layers[0].attn, model.pos
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    positions = torch.arange(6).expand(2, 6)
    q = (x @ attn.q_proj.weight.T).view(2, 6, 4, 16).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(2, 6, n_kv_heads, 16).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(2, 6, n_kv_heads, 16).transpose(1, 2)
    q, k = pos.rotate(q, k, positions)
    rep = 4 // n_kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    ref = naive_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
    ref = ref.transpose(1, 2).reshape(2, 6, 64) @ attn.o_proj.weight.T
    from tinylm.core.components.attention import AttentionContext

    out = attn(x, AttentionContext(positions=positions, mask=None, positional=pos))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("architecture", ["llama", "gpt"])
def test_backends_agree_in_full_model(backend, architecture, ids, tiny_model):
    ref = tiny_model(architecture=architecture, attention="eager", n_kv_heads=2)
    model = TinyLM(ref.config, attention=backend).eval()
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():  # FlexAttention has no CPU backward
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ["llama", "gpt"])
def test_left_padding_does_not_change_logits(architecture, tiny_model):
    model = tiny_model(architecture=architecture, n_kv_heads=2)
    short = torch.randint(0, 97, (1, 5))
    long = torch.randint(0, 97, (1, 8))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    out = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(out[0, 3:], model(short).logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], model(long).logits[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_forward_equals_full_forward(backend, ids, tiny_model):
    model = tiny_model(attention=backend, n_kv_heads=2).requires_grad_(False)
    full = model(ids).logits
    cache = StandardCache()
    first = model(ids[:, :6], cache=cache).logits
    steps = [model(ids[:, i : i + 1], cache=cache).logits for i in range(6, ids.shape[1])]
    assert cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, atol=1e-5, rtol=1e-4)
