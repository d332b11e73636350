"""Attention variants (sliding window, ALiBi, QK-norm, softcap) against naive float64 loop references."""

import math

import pytest
import torch

from tinylm.core import ATTENTION_BACKENDS, ModelConfig, StandardCache, TinyLM
from tinylm.core.components.attention import build_attention_mask
from tinylm.core.components.attention_variants import alibi_slopes
from tinylm.core.generate import generate

VARIANTS = ["sliding_window", "alibi", "qk_norm", "softcap"]
H, HD = 3, 8
OPTIONS = {"window": 3, "softcap": 2.0}


def naive(q, k, v, allowed, scale, variant, backend):
    """One query at a time, one key at a time, in float64: what each variant's paper writes down."""
    q, k, v = q.double(), k.double(), v.double()
    if variant == "qk_norm":
        q = q / q.pow(2).mean(-1, keepdim=True).add(backend.eps).sqrt() * backend.q_weight.detach().double()
        k = k / k.pow(2).mean(-1, keepdim=True).add(backend.eps).sqrt() * backend.k_weight.detach().double()
    b_, h_, t, _ = q.shape
    s = k.shape[2]
    slopes = alibi_slopes(h_).double()
    out = torch.zeros(b_, h_, t, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        for h in range(h_):
            for i in range(t):
                qi = s - t + i  # the query's slot among the keys
                scores, values = [], []
                for j in range(s):
                    if not allowed[min(b, allowed.shape[0] - 1), 0, i, j]:
                        continue
                    if variant == "sliding_window" and qi - j >= OPTIONS["window"]:
                        continue
                    sc = float(q[b, h, i] @ k[b, h, j]) * scale
                    if variant == "alibi":
                        sc -= float(slopes[h]) * (qi - j)
                    if variant == "softcap":
                        sc = OPTIONS["softcap"] * math.tanh(sc / OPTIONS["softcap"])
                    scores.append(sc)
                    values.append(v[b, h, j])
                p = torch.tensor(scores, dtype=torch.float64).softmax(0)
                out[b, h, i] = (p[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("t", "s", "padded"), [(7, 7, False), (6, 6, True), (3, 9, False), (1, 8, True)])
def test_variant_matches_naive_reference(variant, t, s, padded):
    g = torch.Generator().manual_seed(7 * t + s)
    q, k, v = (torch.randn(2, H, n, HD, generator=g) * 1.5 for n in (t, s, s))
    cfg = ModelConfig(vocab_size=11, dim=H * HD, n_heads=H, n_layers=1, attention=variant, extra=OPTIONS)
    backend = ATTENTION_BACKENDS.get(variant)(cfg, 0)
    if variant == "qk_norm":  # a learned gain that is not all ones
        with torch.no_grad():
            backend.q_weight.copy_(torch.rand(HD, generator=g) + 0.5)
            backend.k_weight.copy_(torch.rand(HD, generator=g) + 0.5)
    pad = torch.ones(2, s, dtype=torch.long)
    if padded:
        pad[1, :2] = 0  # left padding in the second row
    mask = build_attention_mask(pad if padded else None, t, s, q.device)
    allowed = mask if mask is not None else torch.ones(t, s, dtype=torch.bool).tril(s - t)[None, None]
    scale = 1 / math.sqrt(HD)
    out = backend(q, k, v, mask, 0.0, scale)
    ref = naive(q, k, v, allowed, scale, variant, backend)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2.0 ** (-2 * i) for i in range(1, 5)]
    # 6 heads: the 4-head slopes, then every other slope of the 8-head series
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_in_a_model_trains_and_caches(variant):
    torch.manual_seed(0)
    positional = "none" if variant == "alibi" else "rope"
    model = TinyLM(
        vocab_size=31, dim=32, n_layers=2, n_heads=4, attention=variant, positional=positional, extra=OPTIONS
    )
    x = torch.randint(0, 31, (2, 12))
    model(x, labels=x).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    cached = generate(model, x[:, :5], 8, temperature=0)
    uncached = generate(model, x[:, :5], 8, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    cache = StandardCache()  # prefill + one-token steps give the logits of one full forward
    steps = [model(x[:, :6], cache=cache).logits] + [
        model(x[:, i : i + 1], cache=cache).logits for i in range(6, 12)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), model(x).logits, atol=1e-5, rtol=1e-4)


def test_wide_window_and_huge_cap_reduce_to_plain_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, H, 9, HD, generator=g) for _ in range(3))
    cfg = ModelConfig(vocab_size=11, dim=H * HD, n_heads=H, extra={"window": 9, "softcap": 1e6})
    plain = ATTENTION_BACKENDS.get("sdpa")(q, k, v, None, 0.0, 0.3)
    for name in ("sliding_window", "softcap"):
        out = ATTENTION_BACKENDS.get(name)(cfg, 0)(q, k, v, None, 0.0, 0.3)
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-4)
    narrow = ATTENTION_BACKENDS.get("sliding_window")(ModelConfig(extra={"window": 2}), 0)(
        q, k, v, None, 0.0, 0.3
    )
    assert not torch.allclose(narrow, plain)


@pytest.mark.parametrize(("extra", "match"), [({"window": 0}, "window"), ({"softcap": -1.0}, "softcap")])
def test_bad_options_say_what_is_allowed(extra, match):
    attention = "sliding_window" if "window" in extra else "softcap"
    with pytest.raises(ValueError, match=f"model.extra.{match} must be a positive"):
        TinyLM(vocab_size=11, dim=32, n_heads=4, n_layers=1, attention=attention, extra=extra)
