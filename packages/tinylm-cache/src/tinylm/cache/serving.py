"""Serve text prompts through the continuous-batching ``Engine`` (what ``infer.py --engine`` runs)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from tinylm.cache.engine import Engine


def serve_prompts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    block_size: int = 8,
    max_batch: int = 32,
    seed: int = 0,
    **sampling: Any,
) -> Iterator[tuple[int, str]]:
    """``(prompt index, completion text)`` as each request finishes. Empty prompts are skipped; each
    request's token limit is clipped to the model's context; ``sampling``: temperature, top_k, top_p."""
    limit = model.pos.max_positions or model.config.max_seq_len
    requests = []
    for i, text in enumerate(prompts):
        if not text.strip():
            continue
        ids = tokenizer.encode(text, add_bos=True)
        if len(ids) >= limit:
            raise ValueError(f"prompt {i} is {len(ids)} tokens but the model's context is {limit}")
        requests.append((i, ids, min(max_new_tokens, limit - len(ids))))
    if not requests:
        raise ValueError("no prompts to serve (every line was empty)")
    per_request = max(math.ceil((len(ids) + n) / block_size) for _, ids, n in requests)
    engine = Engine(model, num_blocks=per_request * min(max_batch, len(requests)), block_size=block_size,
                    max_batch=max_batch)  # fmt: skip
    index = {}
    for i, ids, n in requests:
        rid = engine.add_request(ids, n, stop_tokens=[tokenizer.eos_id], seed=seed + i, **sampling)
        index[rid] = i
    while engine.has_work:
        before = set(engine.finished)
        engine.step()
        for rid in sorted(set(engine.finished) - before):
            out = engine.finished[rid].output
            if out and out[-1] == tokenizer.eos_id:
                out = out[:-1]
            yield index[rid], tokenizer.decode(out)
