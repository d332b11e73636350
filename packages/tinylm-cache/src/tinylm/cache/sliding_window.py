"""``sliding_window``: a ring buffer of the last ``window`` tokens plus ``n_sink`` attention-sink tokens.

StreamingLLM (Xiao et al., 2023, arXiv 2309.17453): keeping the first few tokens ("sinks") next to a
window of recent ones lets a model generate far past its training context at constant memory. Slots
``0..n_sink-1`` hold the first ``n_sink`` tokens for good; token ``i >= n_sink`` lives in slot
``n_sink + (i - n_sink) % window``. Keys keep the RoPE rotation of their original position (relative
distances stay right inside the window; StreamingLLM re-rotates in-cache positions instead).

A query at sequence index ``q`` attends to key ``s`` iff ``s <= q`` and (``s > q - window`` or
``s < n_sink``), and ``s`` is not padding. ``update`` returns the buffer *before* this forward's writes
concatenated with the new keys, so a prefill longer than the window still attends correctly.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.cache.static import model_cache_shape
from tinylm.core.registry import CACHES


class SlidingWindowCache:
    """Constant-memory KV cache: ``n_sink`` first tokens + a ring of the last ``window`` tokens."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        window: int,
        n_sink: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if window < 1 or n_sink < 0:
            raise ValueError(f"window must be >= 1 and n_sink >= 0, got window={window}, n_sink={n_sink}")
        self.window, self.n_sink, self.batch_size = window, n_sink, batch_size
        size = n_sink + window
        shape = (batch_size, n_kv_heads, size, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.slot_index = torch.full((size,), -1, dtype=torch.long, device=device)  # seq index; -1: empty
        self.slot_real = torch.zeros(batch_size, size, dtype=torch.bool, device=device)  # not padding
        self._len = 0
        self._plan: tuple[torch.Tensor, torch.Tensor] | None = None  # (slots, offsets in new) this forward

    def get_seq_length(self) -> int:
        return self._len

    def memory_bytes(self) -> int:
        """Bytes of the key/value buffers: fixed, however long the sequence grows."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def slot_of(self, index: int) -> int:
        """The buffer slot of sequence index ``index``."""
        if index < self.n_sink:
            return index
        return self.n_sink + (index - self.n_sink) % self.window

    def _write_plan(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Which of the ``t`` new tokens survive this forward and the slot each goes to."""
        if self._plan is None:
            new = range(self._len, self._len + t)
            kept = [i for i in new if i < self.n_sink or i >= self._len + t - self.window]
            slots = torch.tensor([self.slot_of(i) for i in kept], dtype=torch.long, device=device)
            offsets = torch.tensor([i - self._len for i in kept], dtype=torch.long, device=device)
            self._plan = (slots, offsets)
        return self._plan

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[0] != self.batch_size:
            raise ValueError(f"sliding-window cache was built for batch {self.batch_size}, got {k.shape[0]}")
        kb, vb = self.keys[layer_idx], self.values[layer_idx]
        k_all = torch.cat([kb, k.to(kb.dtype)], dim=2)  # (B, Hkv, sink + window + T, hd)
        v_all = torch.cat([vb, v.to(vb.dtype)], dim=2)
        slots, offsets = self._write_plan(k.shape[2], k.device)
        kb.index_copy_(2, slots, k.index_select(2, offsets).to(kb.dtype))
        vb.index_copy_(2, slots, v.index_select(2, offsets).to(vb.dtype))
        return k_all, v_all

    def attention_mask(self, layer_idx: int, ctx: Any) -> torch.Tensor:
        """``(B, 1, T, sink + window + T)`` for the keys ``update`` returned."""
        if "window_mask" in ctx.memo:
            return ctx.memo["window_mask"]
        t = ctx.positions.shape[-1]
        device = self.slot_index.device
        new_index = torch.arange(self._len, self._len + t, device=device)
        if ctx.mask is not None:  # last query row of the model's mask: which new keys are real tokens
            new_real = ctx.mask[:, 0, -1, self._len : self._len + t].expand(self.batch_size, t)
        else:
            new_real = torch.ones(self.batch_size, t, dtype=torch.bool, device=device)
        key_index = torch.cat([self.slot_index, new_index])  # (S,)
        key_real = torch.cat([self.slot_real, new_real], dim=1)  # (B, S)
        q = new_index[:, None]  # (T, 1)
        s = key_index[None, :]  # (1, S)
        seen = (s >= 0) & (s <= q) & ((s > q - self.window) | (s < self.n_sink))  # (T, S)
        mask = (seen[None] & key_real[:, None, :]) | (s == q)[None]  # (B, T, S)
        slots, offsets = self._write_plan(t, device)
        self.slot_index[slots] = new_index[offsets]
        self.slot_real[:, slots] = new_real[:, offsets]
        ctx.memo["window_mask"] = mask[:, None]
        return ctx.memo["window_mask"]

    def advance(self, n: int) -> None:
        self._len += n
        self._plan = None


@CACHES.register("sliding_window")
def sliding_window_cache(
    config: Any,
    batch_size: int,
    max_seq_len: int = 0,
    device: Any = "cpu",
    dtype: Any = torch.float32,
    window: int = 256,
    n_sink: int = 4,
    **_: Any,
) -> SlidingWindowCache:
    """Factory for ``CACHES``: ``window`` recent tokens (default 256) + ``n_sink`` sinks (default 4)."""
    return SlidingWindowCache(
        batch_size=batch_size, window=window, n_sink=n_sink, device=device, dtype=dtype,
        **model_cache_shape(config),
    )  # fmt: skip
