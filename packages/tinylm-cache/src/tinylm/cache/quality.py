"""How much a lossy cache changes a model's predictions: teacher-forced decoding through the cache.

``stepwise_nll`` prefills ``prefill_len`` tokens, then feeds the rest one token at a time (so each
prediction reads the past from the cache, as in generation) and returns the mean negative log-likelihood
of the next tokens and the top-1 predictions. ``cache_quality`` compares a cache against the standard
one on the same tokens: NLL delta (nats/token), perplexity ratio and top-1 agreement.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from tinylm.core.cache import StandardCache


@torch.no_grad()
def stepwise_nll(model: Any, ids: torch.Tensor, cache: Any, prefill_len: int) -> tuple[float, torch.Tensor]:
    """Mean NLL of ``ids[:, prefill_len:]`` predicted step by step through ``cache``; top-1 ``(B, T-P)``."""
    if not 0 < prefill_len < ids.size(1):
        raise ValueError(f"prefill_len must be in 1..{ids.size(1) - 1}, got {prefill_len}")
    logits = [model(ids[:, :prefill_len], cache=cache).logits[:, -1:]]
    for t in range(prefill_len, ids.size(1) - 1):
        logits.append(model(ids[:, t : t + 1], cache=cache).logits)
    pred = torch.cat(logits, dim=1).float()  # (B, T-P, vocab): predictions of ids[:, P:]
    nll = F.cross_entropy(pred.flatten(0, 1), ids[:, prefill_len:].flatten())
    return nll.item(), pred.argmax(-1)


def cache_quality(model: Any, ids: torch.Tensor, cache: Any, prefill_len: int) -> dict[str, float]:
    """``cache`` vs ``StandardCache`` on the same tokens: NLLs, delta, perplexity ratio, top-1 agreement."""
    base, base_top1 = stepwise_nll(model, ids, StandardCache(), prefill_len)
    got, top1 = stepwise_nll(model, ids, cache, prefill_len)
    return {
        "nll_standard": base,
        "nll": got,
        "nll_delta": got - base,
        "ppl_ratio": math.exp(got - base),
        "top1_agreement": (top1 == base_top1).float().mean().item(),
    }
