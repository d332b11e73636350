"""TinyLM: a decoder-only transformer assembled from registered components.

token embedding -> positional ``embed`` hook -> n_layers blocks (attention + MLP) -> final norm -> lm head.
Which norm, MLP, position encoding, attention backend and block ordering are used is decided by the
``ModelConfig`` (registry names), so this file never changes when a component is added.
References: GPT-2 (Radford et al., 2019), LLaMA (Touvron et al., 2023, arXiv 2302.13971);
code shape after nanoGPT's and gpt-fast's ``model.py``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from tinylm.core.components.attention import AttentionContext, build_attention_mask
from tinylm.core.components.routing import collect_aux_loss
from tinylm.core.config import ModelConfig
from tinylm.core.registry import BLOCKS, NORMS, POSITIONALS, ROUTERS

IGNORE_INDEX = -100


class LMOutput(NamedTuple):
    """Logits ``(B, T, vocab)``; with labels, the loss (cross-entropy + auxiliary losses when training).

    ``aux_loss``: the sum of the modules' auxiliary losses (MoE load balancing, ...) per target token, in
    training mode only; already included in ``loss``.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class TinyLM(nn.Module):
    """Decoder-only language model. ``TinyLM(vocab_size=..., architecture="llama"|"gpt", **overrides)``."""

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig(**overrides)
        elif overrides:
            config = ModelConfig.from_dict({**config.to_dict(), **overrides})
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = POSITIONALS.build(cfg.positional, cfg)
        self.drop = nn.Dropout(cfg.dropout)
        # model.router may wrap or modify each block (tinylm.core.components.routing); "none" keeps it
        self.layers = nn.ModuleList(
            ROUTERS.build(cfg.router, cfg, BLOCKS.build(cfg.block, cfg, i), i) for i in range(cfg.n_layers)
        )
        final_norm = BLOCKS.get(cfg.block).final_norm
        self.norm = NORMS.build(cfg.norm, cfg.dim, eps=cfg.norm_eps, bias=cfg.bias) if final_norm else None
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if isinstance(getattr(self.pos, "weight", None), nn.Parameter):
            nn.init.normal_(self.pos.weight, mean=0.0, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @classmethod
    def from_preset(cls, size: str, **overrides: Any) -> TinyLM:
        """A model from a size preset: ``TinyLM.from_preset("small", vocab_size=256)``."""
        return cls(ModelConfig.from_preset(size, **overrides))

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers).
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "residual_projection", False):
                std = std / math.sqrt(2 * self.config.n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` leaves out token and position tables."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            params.pop(id(self.tok_emb.weight), None)
            params.pop(id(getattr(self.pos, "weight", None)), None)
        return sum(p.numel() for p in params.values())

    def forward(
        self,
        input_ids: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: Any = None,
        loss_reduction: str = "mean",
        inputs_embeds: torch.Tensor | None = None,
    ) -> LMOutput:
        """Logits for ``input_ids`` ``(B, T)``; loss against ``labels`` (next-token targets, -100 ignored).

        ``labels`` are already shifted: ``labels[:, t]`` is the token that should follow ``input_ids[:, t]``.
        ``attention_mask`` ``(B, past + T)`` marks real tokens (1) and padding (0); positions then count
        real tokens only. ``cache`` holds past keys/values (``tinylm.core.cache``). ``loss_reduction`` is
        ``mean`` over non-ignored targets or ``sum`` (for exact gradient accumulation). ``inputs_embeds``
        ``(B, T, dim)`` replaces ``input_ids`` (pass ``None``) to feed vectors (image features in tinylm-mm).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (batch, seq_len) and inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.size(-1) != self.config.dim:
                raise ValueError(
                    f"inputs_embeds must be (batch, seq_len, {self.config.dim}), "
                    f"got shape {tuple(inputs_embeds.shape)}"
                )
        elif input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        tokens = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, dim)
        b, t = tokens.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if positions is None:
            if attention_mask is not None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]  # (B, T)
            else:
                positions = torch.arange(past, past + t, device=tokens.device).expand(b, t)
        limit = self.pos.max_positions
        if limit is not None and past + t > limit:
            raise ValueError(
                f"sequence of {past + t} tokens is longer than the model's context ({limit} positions, "
                f"{self.config.positional} positional encoding); shorten the prompt or generation"
            )
        mask = build_attention_mask(attention_mask, t, past + t, tokens.device)
        ctx = AttentionContext(positions=positions, mask=mask, positional=self.pos, cache=cache)
        x = self.drop(self.pos.embed(tokens, positions))  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, ctx)
        if self.norm is not None:
            x = self.norm(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        if cache is not None:
            cache.advance(t)
        aux = collect_aux_loss(self)  # always collected, so no stale value survives into the next forward
        aux = aux if self.training else None
        if labels is None:
            return LMOutput(logits)
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction=loss_reduction,
        )
        if aux is not None:  # per-token auxiliary losses: scaled to a sum like the cross-entropy
            loss = loss + aux * ((labels != IGNORE_INDEX).sum() if loss_reduction == "sum" else 1)
        return LMOutput(logits, loss, aux)
