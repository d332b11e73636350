"""One conformance suite for the ``Cache`` protocol: every cache's tests subclass ``CacheConformance``.

Each check compares a cache against full recomputation (no cache) on a tiny random TinyLM in float64:
logits of a prefill followed by one-token steps, greedy generation for one row and for a left-padded
ragged batch, and the stored length. Lossy caches set ``exact = False`` and a ``logits_atol``; their own
test files add the quality checks that fit them. Usage::

    class TestMyCache(CacheConformance):
        name = "my_cache"          # the CACHES name
        cache_kwargs = {"window": 64}
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tinylm.core import CACHES, TinyLM
from tinylm.core.cache import Cache
from tinylm.core.generate import generate, pad_prompts

DTYPE = torch.float64


def tiny_model(seed: int = 0, **overrides: Any) -> TinyLM:
    """2 layers, width 64, grouped-query (4 heads, 2 kv heads), float64, with weights large enough that
    greedy choices are not near-ties."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, init_std=0.15)
    return TinyLM(**{**cfg, **overrides}).to(DTYPE).eval()


class CacheConformance:
    """The checks every registered cache passes (pytest collects them through ``Test*`` subclasses)."""

    name: ClassVar[str] = ""
    cache_kwargs: ClassVar[dict[str, Any]] = {}
    exact: ClassVar[bool] = True
    logits_atol: ClassVar[float] = 1e-9

    def make_cache(self, model: TinyLM, batch_size: int, max_seq_len: int) -> Any:
        return CACHES.build(
            self.name, config=model.config, batch_size=batch_size, max_seq_len=max_seq_len,
            device=torch.device("cpu"), dtype=DTYPE, **self.cache_kwargs,
        )  # fmt: skip

    def test_registered_and_follows_protocol(self) -> None:
        assert self.name in CACHES
        cache = self.make_cache(tiny_model(), 1, 16)
        assert isinstance(cache, Cache)
        assert cache.get_seq_length() == 0

    def test_prefill_then_steps_match_full_forward(self) -> None:
        model = tiny_model()
        ids = torch.randint(0, 97, (2, 14), generator=torch.Generator().manual_seed(1))
        full = model(ids).logits  # (B, T, vocab)
        cache = self.make_cache(model, 2, 14)
        with torch.no_grad():
            got = [model(ids[:, :9], cache=cache).logits]
            for t in range(9, 14):
                got.append(model(ids[:, t : t + 1], cache=cache).logits)
        assert cache.get_seq_length() == 14
        torch.testing.assert_close(torch.cat(got, dim=1), full, atol=self.logits_atol, rtol=0)

    def test_greedy_generation_batch_one(self) -> None:
        model = tiny_model()
        prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
        reference = generate(model, prompt, 24, temperature=0.0, use_cache=False)
        got = generate(model, prompt, 24, temperature=0.0, cache=self.make_cache(model, 1, 29))
        self.check_tokens(got, reference)

    def test_greedy_generation_ragged_batch(self) -> None:
        model = tiny_model(seed=3)
        g = torch.Generator().manual_seed(3)
        prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 9, 6)]
        ids, mask = pad_prompts(prompts, pad_id=0)
        kw = dict(temperature=0.0, attention_mask=mask)
        reference = generate(model, ids, 16, use_cache=False, **kw)
        got = generate(model, ids, 16, cache=self.make_cache(model, 3, ids.size(1) + 16), **kw)
        self.check_tokens(got, reference)

    def check_tokens(self, got: torch.Tensor, reference: torch.Tensor) -> None:
        """Exact caches: identical tokens. Lossy ones override (e.g. agreement over a prefix)."""
        assert torch.equal(got, reference), f"cache {self.name!r} diverged:\n{got}\nvs\n{reference}"
