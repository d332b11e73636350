"""What a benchmark runs on: a seeded ``TinyLM`` from the config, random token batches, a fresh cache.

Timing does not depend on the weights' values or on which tokens are fed (no data-dependent control
flow in the model), so random weights and random tokens measure the same work a trained model does.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.core.bench.config import BenchConfig
from tinylm.core.model.transformer import TinyLM
from tinylm.core.registry import CACHES


def build_model(cfg: BenchConfig, device: torch.device, dtype: torch.dtype | None = None) -> TinyLM:
    """A ``TinyLM(cfg.model)`` seeded with ``cfg.seed`` on ``device``, weights cast to ``dtype`` if given."""
    torch.manual_seed(cfg.seed)
    model = TinyLM(cfg.model)
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def random_tokens(
    cfg: BenchConfig, batch: int, length: int, device: torch.device, offset: int = 0
) -> torch.Tensor:
    """``(batch, length)`` token ids, seeded by ``cfg.seed + offset`` (the same on every run)."""
    gen = torch.Generator().manual_seed(cfg.seed + offset)
    return torch.randint(0, cfg.model.vocab_size, (batch, length), generator=gen).to(device)


def new_cache(
    name: str, cfg: BenchConfig, batch: int, max_seq_len: int, device: torch.device, dtype: torch.dtype
) -> Any:
    """A fresh cache from ``CACHES`` with the context its factory may need."""
    return CACHES.build(
        name, config=cfg.model, batch_size=batch, max_seq_len=max_seq_len, device=device, dtype=dtype
    )


def model_label(model: TinyLM) -> str:
    """``llama 6x384 (10.6M)``: architecture, layers x width and parameter count."""
    c = model.config
    return f"{c.architecture} {c.n_layers}x{c.dim} ({model.num_parameters() / 1e6:.1f}M)"
