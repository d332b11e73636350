"""Autoregressive generation: greedy, temperature, top-k, top-p, repetition penalty, stop tokens, batches.

``stream`` yields one token per sequence per step; ``generate`` collects them. With ``use_cache`` the
prompt is run once (prefill) and each step feeds only the new token, reading past keys/values from a
``Cache`` (``StandardCache`` unless one is given, e.g. from tinylm-cache); without it every step reruns
the whole sequence. Both give identical greedy outputs. Prompts of different lengths are left-padded
(``pad_prompts``) and masked, so each row generates as if it were alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from tinylm.core.cache import StandardCache


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)``, both ``(B, max_len)``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (got an empty prompt)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token ``(B,)`` from last-position logits ``(B, vocab)``; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # tokens entirely past the nucleus; the top one is kept
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019): shrink the logits of tokens already in ``seen`` (B, S)."""
    if penalty == 1.0:
        return logits
    prev = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(prev > 0, prev / penalty, prev * penalty))


def check_context(model: Any, prompt_len: int, max_new_tokens: int) -> None:
    """Raise ``ValueError`` when the prompt and the new tokens do not fit the model's context (a model with
    learned positions has one; RoPE models have none)."""
    limit = model.pos.max_positions
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens is longer than the model's "
            f"context ({limit} positions); shorten the prompt or lower max_new_tokens"
        )


@torch.no_grad()
def stream(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_tokens: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    cache: Any = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence ``(B,)`` per step, until ``max_new_tokens`` or all stopped.

    A sequence that produced a stop token yields ``pad_id`` from then on.
    """
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(
            f"input_ids must be a non-empty (batch, seq_len) tensor, got {tuple(input_ids.shape)}"
        )
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    check_context(model, input_ids.size(1), max_new_tokens)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq = input_ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    cache = (cache if cache is not None else StandardCache()) if use_cache else None
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    done = torch.zeros(seq.size(0), dtype=torch.bool, device=device)
    step_input = seq
    try:
        for _ in range(max_new_tokens):
            logits = model(step_input if use_cache else seq, attention_mask=mask, cache=cache).logits[:, -1]
            logits = apply_repetition_penalty(logits, seq, repetition_penalty)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            yield nxt
            done |= torch.isin(nxt, stops)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            step_input = nxt[:, None]
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if bool(done.all()):
                break
    finally:
        model.train(was_training)


def generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """``input_ids`` ``(B, T)`` followed by up to ``max_new_tokens`` generated tokens; see ``stream``."""
    steps = list(stream(model, input_ids, max_new_tokens, **kwargs))
    new = torch.stack(steps, dim=1) if steps else input_ids.new_zeros(input_ids.size(0), 0)
    return torch.cat([input_ids.to(new.device), new], dim=1)
