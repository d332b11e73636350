"""Sliding-window cache: ring buffer + sinks equal full attention under the window mask; constant memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tinylm.cache import SlidingWindowCache
from tinylm.cache.conformance import tiny_model
from tinylm.core.cache import StandardCache
from tinylm.core.generate import generate, pad_prompts


class WindowMaskReference(StandardCache):
    """Keeps every key (the standard cache) and masks out what a window + sinks would have dropped."""

    def __init__(self, window: int, n_sink: int) -> None:
        super().__init__()
        self.window, self.n_sink = window, n_sink

    def attention_mask(self, layer_idx: int, ctx: Any) -> torch.Tensor:
        t = ctx.positions.shape[-1]
        past = self.get_seq_length()
        q = torch.arange(past, past + t)[:, None]
        s = torch.arange(past + t)[None, :]
        keep = (s <= q) & ((s > q - self.window) | (s < self.n_sink))
        return keep[None, None] if ctx.mask is None else (ctx.mask & keep) | (s == q)


def make(model, batch: int, window: int, n_sink: int) -> SlidingWindowCache:
    c = model.config
    shape = (c.n_layers, batch, c.n_kv_heads, c.head_dim)
    return SlidingWindowCache(*shape, window, n_sink, dtype=torch.float64)


@pytest.mark.parametrize(("window", "n_sink", "prefill"), [(5, 2, 3), (5, 2, 11), (4, 0, 9), (7, 3, 2)])
def test_logits_equal_full_attention_under_window_mask(window: int, n_sink: int, prefill: int) -> None:
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(4))
    outs = []
    for cache in (make(model, 2, window, n_sink), WindowMaskReference(window, n_sink)):
        with torch.no_grad():
            got = [model(ids[:, :prefill], cache=cache).logits]
            got += [model(ids[:, t : t + 1], cache=cache).logits for t in range(prefill, 24)]
        outs.append(torch.cat(got, dim=1))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=0)


def test_ragged_batch_greedy_matches_reference() -> None:
    model = tiny_model(seed=5)
    g = torch.Generator().manual_seed(5)
    ids, mask = pad_prompts([torch.randint(0, 97, (n,), generator=g).tolist() for n in (2, 7, 4)], 0)
    kw = dict(temperature=0.0, attention_mask=mask)
    got = generate(model, ids, 20, cache=make(model, 3, 6, 2), **kw)
    ref = generate(model, ids, 20, cache=WindowMaskReference(6, 2), **kw)
    assert torch.equal(got, ref)


def test_generates_past_the_context_length_at_constant_memory() -> None:
    model = tiny_model(max_seq_len=32)  # RoPE: no hard position limit; the training context was 32
    cache = make(model, 1, 16, 4)
    before = cache.memory_bytes()
    out = generate(model, torch.tensor([[1, 2, 3]]), 100, temperature=0.0, cache=cache)
    assert out.shape == (1, 103)
    assert cache.memory_bytes() == before and cache.keys[0].shape[2] == 20
    assert cache.get_seq_length() == 102
    assert sorted(cache.slot_index.tolist()) == [0, 1, 2, 3, *range(86, 102)]


def test_bad_window_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="window must be >= 1"):
        SlidingWindowCache(1, 1, 1, 8, window=0)
