"""``paged``: keys/values in fixed-size blocks of one shared pool, addressed through per-sequence tables.

PagedAttention (Kwon et al., 2023, arXiv 2309.06180). The pool is one ``(num_blocks * block_size, Hkv, hd)``
tensor per layer; a sequence owns a list of block ids (its block table) and a length. Blocks are shared
between sequences with a common prefix (``add_sequence(tokens=...)`` finds published blocks, ``fork``
shares a whole table) and copied on write when a shared block is about to be written. Attention runs over
keys gathered through the block tables (a plain-PyTorch path that works on every device), with a mask for
ragged rows.

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
    ) -> None:
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        shape = (num_blocks * block_size, n_kv_heads, head_dim)  # slot = block * block_size + offset
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.sequences: dict[int, SequenceState] = {}
        self.batch: list[int] | None = None  # sequence id of each row of the next forward
        self.copy_on_write_count = 0
        self._step: dict[str, Any] | None = None

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
        self._step = None

    def blocks_needed(self, seq_id: int, n_new: int) -> int:
        """Fresh blocks writing ``n_new`` more positions would take (new blocks + copies of shared ones)."""
        s, bs = self._get(seq_id), self.block_size
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
        old = torch.tensor([self.sequences[s].length for s in self.batch], device=device)  # (B,)
        width = max(len(self.sequences[s].blocks) for s in self.batch)
        table = torch.zeros(batch_size, width, dtype=torch.long, device=device)  # (B, blocks)
        for row, sid in enumerate(self.batch):
            blocks = self.sequences[sid].blocks
            table[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
        pos = old[:, None] + torch.arange(t, device=device)  # (B, T)
        span = int(old.max()) + t
        j = torch.arange(span, device=device)
        return {
            "write": (table.gather(1, pos // bs) * bs + pos % bs).reshape(-1),  # (B*T,)
            "gather": table[:, j // bs] * bs + j % bs,  # (B, S)
            "query_index": pos,
            "key_index": j,
            "uniform": bool((old == old[0]).all()),
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

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, t, d = k.shape
        if self._step is None:
            self._step = self._prepare(b, t, k.device)
        kp, vp = self.keys[layer_idx], self.values[layer_idx]
        kp[self._step["write"]] = k.transpose(1, 2).reshape(b * t, h, d).to(kp.dtype)
        vp[self._step["write"]] = v.transpose(1, 2).reshape(b * t, h, d).to(vp.dtype)
        gather = self._step["gather"]
        return kp[gather].transpose(1, 2), vp[gather].transpose(1, 2)  # (B, Hkv, S, hd)

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
    **_: Any,
) -> PagedCache:
    """Factory for ``CACHES``: by default a pool just big enough for ``batch_size`` x ``max_seq_len``."""
    if num_blocks is None:
        num_blocks = batch_size * math.ceil(max_seq_len / block_size)
    return PagedCache(
        num_blocks=num_blocks, block_size=block_size, device=device, dtype=dtype, **model_cache_shape(config)
    )
