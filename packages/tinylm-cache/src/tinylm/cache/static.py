"""``static``: key/value buffers preallocated to the maximum batch and length, so every decode step has
the same shapes and can be captured as a CUDA graph (``torch.compile(mode="reduce-overhead")``).

The buffers are ``(B, L, Hkv, hd)`` per layer (token-major, ``L`` rounded up to whole blocks of 16):
``update`` writes the new keys at the current write position (a device tensor, so no host sync and no
shape change) and returns the whole buffer as ``(B, Hkv, L, hd)``. The empty tail is masked out by
``attention_mask`` (the hook ``Attention`` calls for caches that own their layout). A decode step (one new
token) on a GPU attends through ``attend`` instead: the buffer is a paged pool whose block table is the
identity, so tinylm-kernels' ``paged_decode_attention`` reads each row up to its length with no mask at
all. ``decode_step`` runs one fixed-shape forward of a ``TinyLM`` for compilation. Design after gpt-fast's
``KVCache`` and Hugging Face's ``StaticCache``.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.core.registry import CACHES
from tinylm.kernels import choose
from tinylm.kernels.paged_attention import paged_decode_attention


class StaticCache:
    """Fixed-size KV buffers; ``position`` is the next write index (kept on the device).

    ``attention_kernel``: "auto" runs decode steps through ``paged_decode_attention`` where a kernel (not
    the PyTorch reference) is its backend on ``device``; "always" / "never" force it on / off (tests).
    """

    BLOCK = 16

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        attention_kernel: str = "auto",
    ) -> None:
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be >= 1, got {batch_size}, {max_seq_len}")
        if attention_kernel not in ("auto", "always", "never"):
            raise ValueError(f"attention_kernel must be auto, always or never, got {attention_kernel!r}")
        blocks = -(-max_seq_len // self.BLOCK)
        capacity = blocks * self.BLOCK
        shape = (batch_size, capacity, n_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.key_valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)  # not padding
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(capacity, device=device)
        rows = torch.arange(batch_size, device=device)[:, None] * blocks
        self.block_table = (rows + torch.arange(blocks, device=device)).to(torch.int32)  # identity pages
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self._len = 0
        self._padded = False  # a padding mask was seen: the length-only kernel cannot be used
        if attention_kernel == "auto":
            self.use_kernel = choose("paged_decode_attention", device=torch.device(device)).name != "torch"
        else:
            self.use_kernel = attention_kernel == "always"

    def get_seq_length(self) -> int:
        return self._len

    def reset(self) -> None:
        """Empty the cache, keeping its buffers (and their addresses, for captured graphs)."""
        self._len = 0
        self._padded = False
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
        # (skipped while torch.compile traces, so the growing length is no guard: one graph for all steps)
        if not torch.compiler.is_compiling() and self._len + t > self.max_seq_len:
            raise ValueError(
                f"static cache holds {self.max_seq_len} positions; {self._len} stored + {t} new is too many "
                "(build it with a larger max_seq_len)"
            )
        idx = self._write_index(t)
        kb, vb = self.keys[layer_idx], self.values[layer_idx]
        kb.index_copy_(1, idx, k.transpose(1, 2).to(kb.dtype))
        vb.index_copy_(1, idx, v.transpose(1, 2).to(vb.dtype))
        return kb.transpose(1, 2), vb.transpose(1, 2)  # (B, Hkv, L, hd) views

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, ctx: Any
    ) -> torch.Tensor | None:
        """A decode step without padding: store ``k``, ``v``, attend over each row's filled prefix with the
        paged decode kernel; (B, H, 1, hd). None (the caller then masks and attends) otherwise."""
        if q.shape[2] != 1 or self._padded or not self.use_kernel:
            return None
        kb, vb = self.keys[layer_idx], self.values[layer_idx]
        self.update(layer_idx, k, v)
        if "static_lengths" not in ctx.memo:  # every row holds position + 1 keys, the new one included
            ctx.memo["static_lengths"] = (self.position + 1).to(torch.int32).expand(self.batch_size)
            self.key_valid.index_fill_(1, self.position, True)  # for a later masked step
        b, cap, hkv, hd = kb.shape
        out = paged_decode_attention(
            q[:, :, 0].to(kb.dtype), kb.view(b * cap, hkv, hd), vb.view(b * cap, hkv, hd),
            self.block_table, ctx.memo["static_lengths"], self.BLOCK, scale,
        )  # fmt: skip
        return out.to(q.dtype)[:, :, None]

    def attention_mask(self, layer_idx: int, ctx: Any) -> torch.Tensor:
        """``(B, 1, T, max_seq_len)``: causal over the filled slots, padding keys off, a query sees itself."""
        if "static_mask" in ctx.memo:
            return ctx.memo["static_mask"]
        t = ctx.positions.shape[-1]
        idx = self._write_index(t)  # (T,) slot of each query
        if ctx.mask is not None:  # last row of the model's mask: real keys vs padding
            # a prefill's mask, or one per row, may hide padding, which only the masked path sees
            self._padded = self._padded or t > 1 or ctx.mask.shape[0] > 1
            real = ctx.mask[:, 0, -1, self._len : self._len + t].expand(self.batch_size, t)
        else:
            real = torch.ones(self.batch_size, t, dtype=torch.bool, device=idx.device)
        self.key_valid.index_copy_(1, idx, real)
        causal = self.slots[None, :] <= idx[:, None]  # (T, L)
        mask = (causal[None] & self.key_valid[:, None, :]) | (self.slots[None, :] == idx[:, None])[None]
        ctx.memo["static_mask"] = mask[:, None]  # (B, 1, T, L)
        return ctx.memo["static_mask"]

    def advance(self, n: int) -> None:
        self._len += n
        self.position.add_(n)

    def mark_static_addresses(self) -> None:
        """Tell torch.compile the buffers never move, so CUDA graphs can write them in place."""
        for t in [*self.keys, *self.values, self.key_valid, self.position, self.block_table]:
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
    config: Any, batch_size: int, max_seq_len: int, device: Any = "cpu", dtype: Any = torch.float32, **_: Any
) -> StaticCache:
    """Factory for ``CACHES``: buffers for ``batch_size`` rows of ``max_seq_len`` positions."""
    shape = model_cache_shape(config)
    return StaticCache(batch_size=batch_size, max_seq_len=max_seq_len, device=device, dtype=dtype, **shape)
