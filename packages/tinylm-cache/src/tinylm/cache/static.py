"""``static``: key/value buffers preallocated to the maximum batch and length, so every decode step has
the same shapes and can be captured as a CUDA graph (``torch.compile(mode="reduce-overhead")``).

The buffers are ``(B, Hkv, max_seq_len, hd)`` per layer; ``update`` writes the new keys at the current
write position (a device tensor, so no host sync and no shape change) and returns the whole buffer. The
empty tail is masked out by ``attention_mask`` (the hook ``Attention`` calls for caches that own their
layout). ``decode_step`` runs one fixed-shape forward of a ``TinyLM`` for compilation. With
``decode_attention="math"`` a decode step (one new token per row) attends in plain matmul + masked softmax
instead of SDPA: compiled with coordinate-descent tuning, Inductor turns both one-row products into
reductions it generates itself, where SDPA is a prefill-shaped library kernel plus a mask conversion per
layer. With ``decode_attention="kernel"`` a decode step runs tinylm-kernels' ``decode_attention`` (on a GPU
a Triton flash-decoding kernel that reads only the filled slots and stays inside the compiled graph);
``"kernel_rope"`` also moves the RoPE rotation and the cache write into that kernel
(``rope_decode_attention``, through the ``attend_rope`` hook), one kernel fewer per layer and step.
Design after gpt-fast's ``KVCache`` and Hugging Face's ``StaticCache``.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.core.registry import CACHES
from tinylm.kernels import decode_attention as decode_attention_op
from tinylm.kernels import rope_decode_attention

DECODE_ATTENTION = ("sdpa", "math", "kernel", "kernel_rope")


class StaticCache:
    """Fixed-size KV buffers; ``position`` is the next write index (kept on the device)."""

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        decode_attention: str = "sdpa",
    ) -> None:
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be >= 1, got {batch_size}, {max_seq_len}")
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}, got {decode_attention!r}")
        self.decode_attention = decode_attention
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.key_valid = torch.zeros(batch_size, max_seq_len, dtype=torch.bool, device=device)  # not padding
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(max_seq_len, device=device)
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self._len = 0

    def get_seq_length(self) -> int:
        return self._len

    def reset(self) -> None:
        """Empty the cache, keeping its buffers (and their addresses, for captured graphs)."""
        self._len = 0
        self.position.zero_()
        self.key_valid.zero_()

    def memory_bytes(self) -> int:
        """Bytes held by the key/value buffers (allocated up front, whatever the length)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _write_index(self, t: int) -> torch.Tensor:
        return self.position + torch.arange(t, device=self.position.device)  # (T,)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, t, _ = k.shape
        if b != self.batch_size:
            raise ValueError(f"static cache was built for batch {self.batch_size}, got a batch of {b}")
        self._check_room(t)
        idx = self._write_index(t)
        self.keys[layer_idx].index_copy_(2, idx, k.to(self.keys[layer_idx].dtype))
        self.values[layer_idx].index_copy_(2, idx, v.to(self.values[layer_idx].dtype))
        return self.keys[layer_idx], self.values[layer_idx]

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, ctx: Any
    ) -> torch.Tensor | None:
        """One new token per row: store ``k``, ``v`` and attend over the buffer, ``(B, H, 1, hd)``; with
        ``decode_attention="math"`` in matmuls and a masked softmax in (at least) float32, with ``"kernel"``
        through ``decode_attention``. None otherwise (the caller then calls ``update`` and runs its
        attention backend with ``attention_mask``)."""
        if self.decode_attention == "sdpa" or q.shape[2] != 1:
            return None
        keys, values = self.update(layer_idx, k, v)  # (B, Hkv, L, hd)
        if self.decode_attention in ("kernel", "kernel_rope"):
            self._mark_new_slot_valid(ctx)
            out = decode_attention_op(q[:, :, 0], keys, values, self.position, self.key_valid, scale)
            return out[:, :, None]
        mask = self.attention_mask(layer_idx, ctx)  # (B, 1, 1, L): the same mask SDPA would get
        b, h, _, hd = q.shape
        hkv = keys.shape[1]
        acc = torch.promote_types(q.dtype, torch.float32)  # float32 at least
        qg = q.reshape(b, hkv, h // hkv, hd).to(acc)  # query heads grouped by the kv head they read
        scores = (qg @ keys.to(acc).transpose(-1, -2)) * scale  # (B, Hkv, G, L)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (probs @ values.to(acc)).reshape(b, h, 1, hd).to(q.dtype)

    def attend_rope(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, ctx: Any
    ) -> torch.Tensor | None:
        """``decode_attention="kernel_rope"``, one new token per row: ``q``, ``k`` arrive before RoPE and
        one ``rope_decode_attention`` rotates them, stores ``k``, ``v`` and attends; ``(B, H, 1, hd)``.
        None otherwise (the caller rotates and goes on as usual)."""
        if self.decode_attention != "kernel_rope" or q.shape[2] != 1:
            return None
        self._check_room(1)
        key = ("rope", q.dtype)  # the table RoPE.rotate would build and share across layers
        if key not in ctx.memo:
            ctx.memo[key] = ctx.positional.cos_sin(ctx.positions, q.dtype)  # (B, 1, 1, hd)
        cos, sin = (t[:, 0, 0].expand(q.shape[0], -1) for t in ctx.memo[key])
        self._mark_new_slot_valid(ctx)
        out = rope_decode_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], cos, sin, self.keys[layer_idx],
                                    self.values[layer_idx], self.position, self.key_valid, scale)  # fmt: skip
        return out[:, :, None]

    def _check_room(self, t: int) -> None:
        # (skipped while torch.compile traces, so the growing length is no guard: one graph for all steps)
        if not torch.compiler.is_compiling() and self._len + t > self.max_seq_len:
            raise ValueError(
                f"static cache holds {self.max_seq_len} positions; {self._len} stored + {t} new is too many "
                "(build it with a larger max_seq_len)"
            )

    def _mark_new_slot_valid(self, ctx: Any) -> None:
        if "static_valid" not in ctx.memo:  # once per step: the new slot holds a real token
            self.key_valid.index_fill_(1, self._write_index(1), True)
            ctx.memo["static_valid"] = True

    def attention_mask(self, layer_idx: int, ctx: Any) -> torch.Tensor:
        """``(B, 1, T, max_seq_len)``: causal over the filled slots, padding keys off, a query sees itself."""
        if "static_mask" in ctx.memo:
            return ctx.memo["static_mask"]
        t = ctx.positions.shape[-1]
        idx = self._write_index(t)  # (T,) slot of each query
        if ctx.mask is not None:  # last row of the model's mask: real keys vs padding
            real = ctx.mask[:, 0, -1, self._len : self._len + t].expand(self.batch_size, t)
        else:
            real = torch.ones(self.batch_size, t, dtype=torch.bool, device=idx.device)
        self.key_valid.index_copy_(1, idx, real)
        causal = self.slots[None, :] <= idx[:, None]  # (T, L)
        mask = (causal[None] & self.key_valid[:, None, :]) | (self.slots[None, :] == idx[:, None])[None]
        ctx.memo["static_mask"] = mask[:, None]  # (B, 1, T, L)
        return ctx.memo["static_mask"]

    def advance(self, n: int, on_device: bool = True) -> None:
        """``n`` more positions are filled; ``on_device=False``: the device counter was moved already (by a
        recorded CUDA graph), only the host's count moves."""
        self._len += n
        if on_device:
            self.position.add_(n)

    def mark_static_addresses(self) -> None:
        """Tell torch.compile the buffers never move, so CUDA graphs can write them in place."""
        for t in [*self.keys, *self.values, self.key_valid, self.position]:
            torch._dynamo.mark_static_address(t)


def decode_step(
    model: Any, cache: StaticCache, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Logits ``(B, 1, vocab)`` of one fixed-shape decode step; the caller then calls ``cache.advance(1)``.

    The body of ``TinyLM.forward`` without its Python-int bookkeeping (past length, mask of growing width),
    so ``torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)`` captures one graph for all
    steps. ``tokens``, ``positions``: ``(B, 1)``.
    """
    from tinylm.core.components.attention import AttentionContext

    ctx = AttentionContext(positions=positions, mask=None, positional=model.pos, cache=cache)
    x = model.pos.embed(model.tok_emb(tokens), positions)  # (B, 1, dim)
    for layer in model.layers:
        x = layer(x, ctx)
    if model.norm is not None:
        x = model.norm(x)
    return model.lm_head(x)


@torch.no_grad()
def static_greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    step_fn: Any = None,
    cache: StaticCache | None = None,
) -> torch.Tensor:
    """Greedy ``input_ids`` ``(B, P)`` + ``max_new_tokens`` tokens through a ``StaticCache``: one prefill
    with ``model``, then ``step_fn`` (default ``decode_step``; pass a ``torch.compile``d one) per token.
    Pass ``cache`` to reuse its buffers (it is reset first), as CUDA graphs need."""
    step_fn = step_fn or decode_step
    b, p = input_ids.shape
    param = next(model.parameters())
    if cache is None:
        cache = StaticCache(b, p + max_new_tokens, device=param.device, dtype=param.dtype,
                            **model_cache_shape(model.config))  # fmt: skip
    cache.reset()
    nxt = model(input_ids, cache=cache).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    out = [nxt]
    pos = torch.full((b, 1), p, dtype=torch.long, device=param.device)
    for _ in range(max_new_tokens - 1):
        nxt = step_fn(model, cache, nxt, pos)[:, -1].argmax(-1, keepdim=True)
        cache.advance(1)
        pos = pos + 1
        out.append(nxt)
    return torch.cat([input_ids, *out], dim=1)


def model_cache_shape(config: Any) -> dict[str, int]:
    """``n_layers``, ``n_kv_heads`` and ``head_dim`` of a ``ModelConfig``."""
    return {"n_layers": config.n_layers, "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim}


@CACHES.register("static")
def static_cache(
    config: Any,
    batch_size: int,
    max_seq_len: int,
    device: Any = "cpu",
    dtype: Any = torch.float32,
    decode_attention: str = "sdpa",
    **_: Any,
) -> StaticCache:
    """Factory for ``CACHES``: buffers for ``batch_size`` rows of ``max_seq_len`` positions."""
    shape = model_cache_shape(config)
    return StaticCache(batch_size=batch_size, max_seq_len=max_seq_len, device=device, dtype=dtype,
                       decode_attention=decode_attention, **shape)  # fmt: skip
