"""``paged``: keys/values in fixed-size blocks of one shared pool, addressed through per-sequence tables.

PagedAttention (Kwon et al., 2023, arXiv 2309.06180). The pool is one ``(num_blocks * block_size, Hkv, hd)``
tensor per layer; a sequence owns a list of block ids (its block table) and a length. Blocks are shared
between sequences with a common prefix (``add_sequence(tokens=...)`` finds published blocks, ``fork``
shares a whole table) and copied on write when a shared block is about to be written. Attention runs over
keys gathered through the block tables (a plain-PyTorch path that works on every device), with a mask for
ragged rows. A decode step (one new token per row) instead runs tinylm-kernels' ``paged_decode_attention``
straight over the pool when that op has a real kernel for the pool's device (Triton on CUDA, or under
``TRITON_INTERPRET=1``): the Attention module offers the step to ``attend``, which stores the new keys and
values and returns the attention output, so nothing is gathered (``attention_kernel``: "auto", "always",
"never").

Block size: a sequence wastes on average half a block (the unused tail of its last block), so the waste
fraction is about ``(block_size - 1) / 2 / mean_length``: over ~230-token sequences (the engine
benchmark's mean length in flight) block 16 wastes ~3.3% and block 8 ~1.5% (measured there: 3.3%,
1.6%). Smaller blocks mean wider block tables (built on the host and copied each step) and more
prefix-hash work, but the same KV bytes read: the kernel looks up one table entry per position whatever
the block size.

As a drop-in ``Cache`` (``generate(..., cache=PagedCache...)``) each batch row becomes a sequence on the
first forward. The continuous-batching ``Engine`` drives it explicitly: ``add_sequence``, ``set_batch``,
``free_sequence``. Running out of blocks raises ``PoolExhaustedError`` before anything is changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from tinylm.cache.block_allocator import BlockAllocator, block_hashes
from tinylm.cache.static import model_cache_shape
from tinylm.core.registry import CACHES
from tinylm.kernels import choose
from tinylm.kernels import paged_attention_triton as _paged_attention_triton  # noqa: F401  (registers it)
from tinylm.kernels.paged_attention import paged_decode_attention

ATTENTION_KERNEL_MODES = ("auto", "always", "never")


@dataclass
class SequenceState:
    """A sequence's block table and the number of positions it has stored."""

    blocks: list[int] = field(default_factory=list)
    length: int = 0


class PagedCache:
    """Block-pool KV cache with prefix sharing and copy-on-write."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int = 16,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        attention_kernel: str = "auto",
    ) -> None:
        if attention_kernel not in ATTENTION_KERNEL_MODES:
            raise ValueError(
                f"attention_kernel must be one of {', '.join(ATTENTION_KERNEL_MODES)}, "
                f"got {attention_kernel!r}"
            )
        self.attention_kernel = attention_kernel  # decode steps: "auto" = the kernel where one runs here
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        shape = (num_blocks * block_size, n_kv_heads, head_dim)  # slot = block * block_size + offset
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.sequences: dict[int, SequenceState] = {}
        self.batch: list[int] | None = None  # sequence id of each row of the next forward
        self.copy_on_write_count = 0
        self._step: dict[str, Any] | None = None
        self._rows_given = False  # rows named by set_batch (the engine) rather than made per forward row
        self._masked_rows = False  # a plain Cache whose rows may hold padding the model's mask hides

    # ---- sequences -------------------------------------------------------------------------------------
    def add_sequence(self, seq_id: int, tokens: list[int] | None = None) -> int:
        """Register a sequence; with its prompt ``tokens``, share cached prefix blocks. Returns the number
        of positions already cached (at most ``len(tokens) - 1``: the last token is always computed)."""
        if seq_id in self.sequences:
            raise ValueError(f"sequence {seq_id} already exists in the paged cache")
        state = SequenceState()
        if tokens:
            hashes = block_hashes(list(tokens), self.block_size)
            for i, h in enumerate(hashes):
                block = self.allocator.lookup(h)
                if block is None:
                    self.allocator.prefix_queries += len(hashes) - i - 1  # the rest of the chain misses too
                    break
                self.allocator.share(block)
                state.blocks.append(block)
            state.length = min(len(state.blocks) * self.block_size, len(tokens) - 1)
        self.sequences[seq_id] = state
        return state.length

    def fork(self, parent_id: int, child_id: int) -> None:
        """``child_id`` starts as a copy of ``parent_id`` sharing all its blocks (copied on first write)."""
        if child_id in self.sequences:
            raise ValueError(f"sequence {child_id} already exists in the paged cache")
        parent = self._get(parent_id)
        for block in parent.blocks:
            self.allocator.share(block)
        self.sequences[child_id] = SequenceState(list(parent.blocks), parent.length)

    def free_sequence(self, seq_id: int) -> None:
        """Drop a sequence; its blocks return to the pool once no other sequence shares them."""
        for block in self._get(seq_id).blocks:
            self.allocator.free(block)
        del self.sequences[seq_id]
        if self.batch is not None and seq_id in self.batch:
            self.batch = None

    def publish_prefix(self, seq_id: int, tokens: list[int]) -> None:
        """Make the sequence's full blocks (whose ``tokens`` are given) findable by later prompts."""
        state = self._get(seq_id)
        hashes = block_hashes(list(tokens)[: state.length], self.block_size)
        for h, block in zip(hashes, state.blocks, strict=False):
            self.allocator.publish(h, block)

    def set_batch(self, seq_ids: list[int]) -> None:
        """Row ``i`` of the next forward belongs to ``seq_ids[i]``."""
        for s in seq_ids:
            self._get(s)
        self.batch = list(seq_ids)
        self._rows_given = True
        self._step = None

    def blocks_needed(self, seq_id: int, n_new: int) -> int:
        """Fresh blocks writing ``n_new`` more positions would take (new blocks + copies of shared ones)."""
        s, bs = self._get(seq_id), self.block_size
        if n_new == 1:  # the decode case, every step for every running sequence: no range arithmetic
            i = s.length // bs
            return 1 if i >= len(s.blocks) else int(self.allocator.refcount[s.blocks[i]] > 1)
        grow = max(0, math.ceil((s.length + n_new) / bs) - len(s.blocks))
        shared = range(s.length // bs, min(len(s.blocks), math.ceil((s.length + n_new) / bs)))
        return grow + sum(self.allocator.refcount[s.blocks[i]] > 1 for i in shared)

    def _get(self, seq_id: int) -> SequenceState:
        if seq_id not in self.sequences:
            raise KeyError(f"unknown sequence {seq_id}; known: {sorted(self.sequences)}")
        return self.sequences[seq_id]

    # ---- the Cache protocol ----------------------------------------------------------------------------
    def get_seq_length(self) -> int:
        if not self.batch:
            return 0
        return max(self.sequences[s].length for s in self.batch)

    def _prepare(self, batch_size: int, t: int, device: torch.device) -> dict[str, Any]:
        if self.batch is None:  # used as a plain Cache: one new sequence per row
            first = max(self.sequences, default=-1) + 1
            for i in range(batch_size):
                self.add_sequence(first + i)
            self.batch = list(range(first, first + batch_size))
            self._rows_given = False
        if len(self.batch) != batch_size:
            raise ValueError(
                f"set_batch named {len(self.batch)} sequences but the input has {batch_size} rows"
            )
        needed = sum(self.blocks_needed(s, t) for s in self.batch)
        if needed > self.allocator.num_free:
            self.allocator.allocate(needed)  # raises PoolExhaustedError with the counts, changes nothing
        bs = self.block_size
        for sid in self.batch:
            s = self.sequences[sid]
            s.blocks += self.allocator.allocate(max(0, math.ceil((s.length + t) / bs) - len(s.blocks)))
            for i in range(s.length // bs, math.ceil((s.length + t) / bs)):
                if self.allocator.refcount[s.blocks[i]] > 1:
                    s.blocks[i] = self._copy_block(s.blocks[i])
        lengths = [self.sequences[s].length for s in self.batch]
        width = max(len(self.sequences[s].blocks) for s in self.batch)
        rows = [self.sequences[s].blocks + [0] * (width - len(self.sequences[s].blocks)) for s in self.batch]
        table = torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)  # (B, blocks)
        old = torch.tensor(lengths).to(device, non_blocking=True)  # (B,)
        pos = old[:, None] + torch.arange(t, device=device)  # (B, T)
        return {
            "write": (table.gather(1, pos // bs) * bs + pos % bs).reshape(-1),  # (B*T,)
            "table": table,
            "old": old,
            "query_index": pos,
            "span": max(lengths) + t,
            "uniform": len(set(lengths)) == 1,
        }

    def _copy_block(self, block: int) -> int:
        (new,) = self.allocator.allocate(1)
        src = slice(block * self.block_size, (block + 1) * self.block_size)
        dst = slice(new * self.block_size, (new + 1) * self.block_size)
        for pool in self.keys + self.values:
            pool[dst] = pool[src]
        self.allocator.free(block)
        self.copy_on_write_count += 1
        return new

    def _write(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
        b, h, t, d = k.shape
        if self._step is None:
            self._step = self._prepare(b, t, k.device)
        kp, vp = self.keys[layer_idx], self.values[layer_idx]
        kp[self._step["write"]] = k.transpose(1, 2).reshape(b * t, h, d).to(kp.dtype)
        vp[self._step["write"]] = v.transpose(1, 2).reshape(b * t, h, d).to(vp.dtype)
        return self._step

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = self._write(layer_idx, k, v)
        if "gather" not in step:
            j = torch.arange(step["span"], device=k.device)
            step["key_index"] = j
            step["gather"] = step["table"][:, j // self.block_size] * self.block_size + j % self.block_size
        gather = step["gather"]  # (B, S)
        return self.keys[layer_idx][gather].transpose(1, 2), self.values[layer_idx][gather].transpose(1, 2)

    def uses_decode_kernel(self, device: torch.device) -> bool:
        """Whether decode steps run ``paged_decode_attention`` (mode "auto": when a kernel, not the
        PyTorch reference, is its backend for ``device``)."""
        if self.attention_kernel != "auto":
            return self.attention_kernel == "always"
        return choose("paged_decode_attention", device=device).name != "torch"

    def _note_mask(self, q: torch.Tensor, ctx: Any) -> None:
        """Remember whether the model's mask may hide stored positions (left padding of a plain
        ``generate`` batch), which the kernel cannot see. Decided once per forward without a device sync
        where possible: a prefill with a mask counts as padded (its mask is causal anyway); only a first
        forward of one token reads its mask. Rows named by ``set_batch`` are whole sequences: never."""
        if self._rows_given or "paged_mask_seen" in ctx.memo:
            return
        ctx.memo["paged_mask_seen"] = True
        if q.shape[2] > 1:
            self._masked_rows = ctx.mask is not None
        elif self.batch is None:
            self._masked_rows = ctx.mask is not None and not bool(ctx.mask.all())

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, ctx: Any
    ) -> torch.Tensor | None:
        """A decode step (T == 1): store ``k``, ``v`` and return attention over the pool (B, H, 1, hd)
        without gathering; None for prefill steps or where the kernel is not used (the caller then
        calls ``update`` and attends as usual)."""
        self._note_mask(q, ctx)
        if q.shape[2] != 1:
            return None
        if self._step is None:
            self._step = self._prepare(q.shape[0], 1, q.device)
        if "kernel" not in self._step:  # decided once per step, not per layer
            self._step["kernel"] = self.uses_decode_kernel(q.device) and (
                self._rows_given or not self._masked_rows
            )
        if not self._step["kernel"]:
            return None
        step = self._write(layer_idx, k, v)
        if "lengths" not in step:
            step["lengths"] = (step["old"] + 1).to(torch.int32)
            step["table32"] = step["table"].to(torch.int32)
        out = paged_decode_attention(
            q[:, :, 0].to(self.keys[layer_idx].dtype), self.keys[layer_idx], self.values[layer_idx],
            step["table32"], step["lengths"], self.block_size, scale,
        )  # fmt: skip
        return out.to(q.dtype)[:, :, None]

    def attention_mask(self, layer_idx: int, ctx: Any) -> torch.Tensor | None:
        """Rows of equal length: the model's own mask. Ragged rows: causal within each row's length."""
        step = self._step
        if step["uniform"]:
            return ctx.mask
        if "paged_mask" not in ctx.memo:
            q, j = step["query_index"], step["key_index"]
            ctx.memo["paged_mask"] = (j[None, None, :] <= q[:, :, None])[:, None]  # (B, 1, T, S)
        return ctx.memo["paged_mask"]

    def advance(self, n: int) -> None:
        for sid in self.batch or []:
            self.sequences[sid].length += n
        self._step = None

    # ---- metrics -----------------------------------------------------------------------------------------
    def used_slots(self) -> tuple[int, int]:
        """``(filled, allocated)`` KV slots over the blocks in use (a shared block counts once)."""
        fill: dict[int, int] = {}
        for s in self.sequences.values():
            for i, block in enumerate(s.blocks):
                n = min(self.block_size, max(0, s.length - i * self.block_size))
                fill[block] = max(fill.get(block, 0), n)
        return sum(fill.values()), len(fill) * self.block_size

    def memory_waste(self) -> float:
        """Fraction of allocated KV slots that hold nothing (only a last partial block per sequence)."""
        filled, allocated = self.used_slots()
        return 1.0 - filled / allocated if allocated else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        return self.allocator.prefix_hit_rate

    def memory_bytes(self) -> int:
        """Bytes of the whole pool (allocated up front)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


@CACHES.register("paged")
def paged_cache(
    config: Any,
    batch_size: int,
    max_seq_len: int,
    device: Any = "cpu",
    dtype: Any = torch.float32,
    block_size: int = 16,
    num_blocks: int | None = None,
    attention_kernel: str = "auto",
    **_: Any,
) -> PagedCache:
    """Factory for ``CACHES``: by default a pool just big enough for ``batch_size`` x ``max_seq_len``."""
    if num_blocks is None:
        num_blocks = batch_size * math.ceil(max_seq_len / block_size)
    return PagedCache(num_blocks=num_blocks, block_size=block_size, device=device, dtype=dtype,
                      attention_kernel=attention_kernel, **model_cache_shape(config))  # fmt: skip
