"""``c2c``: Cache-to-Cache fusion (Fu et al., 2025, arXiv 2510.03215): a sharer model's KV cache, projected
into a receiver model's cache, lets the receiver use what the sharer computed without any text between them.

For receiver layer ``l`` (paired with sharer layer ``m(l)``, aligned at the last layer), each context
token's receiver and sharer keys are concatenated and passed through a small MLP; the result is added as
``K_recv + gate_l * w_h * K_proj`` (likewise for values), with ``w_h`` a learned per-head sigmoid weight
and ``gate_l`` one gate per layer: a Gumbel-sigmoid sample with an annealed temperature while training,
a hard 0/1 at inference. Both models stay frozen; only the ``C2CFuser`` trains, on the receiver's
next-token loss given the fused cache (``c2c_loss``).

Flow: the receiver and the sharer each prefill the context but its last token (plain caches); the fuser
turns the pair into one fused ``StandardCache``; the receiver then continues from the last context token
with that cache (``c2c_generate``). With every gate at 0 this is exactly the receiver alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tinylm.core.cache import StandardCache
from tinylm.core.generate import generate
from tinylm.core.registry import CACHES


def layer_pairs(receiver_layers: int, sharer_layers: int) -> list[int]:
    """Sharer layer for each receiver layer: last layers aligned, earlier ones spread evenly."""
    if sharer_layers >= receiver_layers:
        return [sharer_layers - receiver_layers + i for i in range(receiver_layers)]
    if receiver_layers == 1:
        return [sharer_layers - 1]
    return [round(i * (sharer_layers - 1) / (receiver_layers - 1)) for i in range(receiver_layers)]


class LayerFuser(nn.Module):
    """Fuses one receiver layer's K and V with its paired sharer layer's, token by token."""

    def __init__(self, recv_heads: int, recv_dim: int, share_heads: int, share_dim: int, hidden: int) -> None:
        super().__init__()
        self.recv_heads, self.recv_dim = recv_heads, recv_dim
        width_in, width_out = recv_heads * recv_dim + share_heads * share_dim, recv_heads * recv_dim
        self.k_mlp = nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Linear(hidden, width_out))
        self.v_mlp = nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Linear(hidden, width_out))
        self.k_head_logit = nn.Parameter(torch.zeros(recv_heads))  # w_h = sigmoid(logit): 0.5 at start
        self.v_head_logit = nn.Parameter(torch.zeros(recv_heads))

    def _project(self, mlp: nn.Module, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = own.shape
        x = torch.cat([own.transpose(1, 2).reshape(b, t, -1), other.transpose(1, 2).reshape(b, t, -1)], -1)
        return mlp(x).view(b, t, self.recv_heads, self.recv_dim).transpose(1, 2)  # (B, Hr, T, dr)

    def forward(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_share: torch.Tensor,
        v_share: torch.Tensor,
        gate: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``k, v`` ``(B, Hr, T, dr)`` and the sharer's ``(B, Hs, T, ds)`` -> fused ``(B, Hr, T, dr)``."""
        wk = torch.sigmoid(self.k_head_logit)[None, :, None, None]
        wv = torch.sigmoid(self.v_head_logit)[None, :, None, None]
        k_new = k + gate * wk * self._project(self.k_mlp, k, k_share)
        v_new = v + gate * wv * self._project(self.v_mlp, v, v_share)
        return k_new, v_new


class C2CFuser(nn.Module):
    """One ``LayerFuser`` per receiver layer and one gate per layer; the only trainable part of C2C."""

    def __init__(self, receiver_config: Any, sharer_config: Any, hidden: int = 128, gate_init: float = 1.0):
        super().__init__()
        r, s = receiver_config, sharer_config
        self.pairs = layer_pairs(r.n_layers, s.n_layers)
        self.layers = nn.ModuleList(
            LayerFuser(r.n_kv_heads, r.head_dim, s.n_kv_heads, s.head_dim, hidden) for _ in self.pairs
        )
        self.gate_logits = nn.Parameter(torch.full((r.n_layers,), gate_init))
        self.temperature = 1.0  # Gumbel-sigmoid temperature, annealed by the training loop

    def gates(self) -> torch.Tensor:
        """Per-layer gates: a Gumbel-sigmoid sample while training, hard 0/1 in eval mode."""
        if not self.training:
            return (self.gate_logits > 0).to(self.gate_logits.dtype)
        u = torch.rand_like(self.gate_logits).clamp(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)  # logistic noise = difference of two Gumbels
        return torch.sigmoid((self.gate_logits + noise) / self.temperature)

    def fuse(self, receiver_cache: StandardCache, sharer_cache: StandardCache) -> StandardCache:
        """A new cache holding the receiver's keys/values with the sharer's fused in."""
        if receiver_cache.get_seq_length() != sharer_cache.get_seq_length():
            raise ValueError(
                f"receiver and sharer caches cover {receiver_cache.get_seq_length()} and "
                f"{sharer_cache.get_seq_length()} tokens; C2C fuses the same context token by token"
            )
        gates = self.gates()
        fused = StandardCache()
        for layer, (share_layer, fuser) in enumerate(zip(self.pairs, self.layers, strict=True)):
            k, v = fuser(
                receiver_cache.keys[layer], receiver_cache.values[layer],
                sharer_cache.keys[share_layer], sharer_cache.values[share_layer], gates[layer],
            )  # fmt: skip
            fused.keys[layer], fused.values[layer] = k, v
        fused.advance(receiver_cache.get_seq_length())
        return fused


def prefill_caches(
    receiver: nn.Module, sharer: nn.Module, context: torch.Tensor
) -> tuple[StandardCache, ...]:
    """Plain caches of ``context`` ``(B, P)`` from both (frozen) models, without gradients."""
    rc, sc = StandardCache(), StandardCache()
    with torch.no_grad():
        receiver(context, cache=rc)
        sharer(context, cache=sc)
    return rc, sc


def c2c_loss(
    receiver: nn.Module, sharer: nn.Module, fuser: C2CFuser, ids: torch.Tensor, context_len: int
) -> torch.Tensor:
    """Receiver's next-token loss on ``ids[:, context_len:]`` given the fused cache of the context.

    The context but its last token is prefilled by both models and fused; the receiver then reads from the
    last context token on. Gradients reach only the fuser.
    """
    if not 1 < context_len < ids.size(1):
        raise ValueError(f"context_len must be in 2..{ids.size(1) - 1}, got {context_len}")
    fused = fuser.fuse(*prefill_caches(receiver, sharer, ids[:, : context_len - 1]))
    return receiver(ids[:, context_len - 1 : -1], labels=ids[:, context_len:], cache=fused).loss


@torch.no_grad()
def c2c_generate(
    receiver: nn.Module, sharer: nn.Module, fuser: C2CFuser, context: torch.Tensor, max_new_tokens: int,
    **kwargs: Any,
) -> torch.Tensor:  # fmt: skip
    """``context`` + the receiver's tokens generated over the fused cache (kwargs go to ``generate``)."""
    if context.size(1) < 2:
        raise ValueError("C2C needs a context of at least 2 tokens (all but the last are fused)")
    fused = fuser.fuse(*prefill_caches(receiver, sharer, context[:, :-1]))
    out = generate(receiver, context[:, -1:], max_new_tokens, cache=fused, **kwargs)
    return torch.cat([context[:, :-1], out], dim=1)


@CACHES.register("c2c")
def c2c_cache(
    receiver: Any = None, sharer: Any = None, fuser: C2CFuser | None = None, context: Any = None, **_: Any
) -> StandardCache:
    """Factory for ``CACHES``: the fused cache of ``context`` (all but its last token); needs the two models
    and a trained fuser, which a generic call (config, batch size, ...) cannot supply."""
    if receiver is None or sharer is None or fuser is None or context is None:
        raise ValueError(
            "the c2c cache is built from two models: pass receiver=, sharer=, fuser= (a trained C2CFuser) "
            "and context= (B, P) token ids; or use tinylm.cache.c2c.c2c_generate"
        )
    fuser.eval()
    with torch.no_grad():
        return fuser.fuse(*prefill_caches(receiver, sharer, context[:, :-1]))
