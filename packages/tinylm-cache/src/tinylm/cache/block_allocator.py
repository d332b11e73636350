"""Fixed-size KV blocks from one pool: a free list, reference counts and a prefix (content-hash) table.

A block is shared by every sequence whose block table lists it (``refcount``). A full block can be
*published* under a hash of its tokens and of everything before it; a later sequence with the same prefix
finds it with ``lookup`` and shares it instead of recomputing (vLLM's automatic prefix caching, Kwon et
al., 2023, arXiv 2309.06180). A freed block keeps its hash until it is handed out again, so a prefix stays
cached while the pool has room: the free list is least-recently-freed first.
"""

from __future__ import annotations

from collections import OrderedDict


class PoolExhaustedError(RuntimeError):
    """Every block of the pool is in use."""


class BlockAllocator:
    """Hands out block ids ``0..num_blocks-1``; ``free`` them by reference count."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refcount = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_of: dict[int, int] = {}  # block -> published hash
        self._block_of: dict[int, int] = {}  # published hash -> block
        self.prefix_queries = 0  # blocks looked up
        self.prefix_hits = 0  # blocks found

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, n: int = 1) -> list[int]:
        """``n`` fresh blocks (refcount 1), or ``PoolExhaustedError`` without taking any."""
        if n > len(self._free):
            raise PoolExhaustedError(
                f"KV pool exhausted: {n} block(s) of {self.block_size} tokens needed, {len(self._free)} of "
                f"{self.num_blocks} free. Build the cache with more num_blocks, free finished sequences, "
                "or serve through tinylm.cache.Engine, which preempts and resumes sequences"
            )
        blocks = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            if block in self._hash_of:  # its cached prefix is evicted now
                del self._block_of[self._hash_of.pop(block)]
            self.refcount[block] = 1
            blocks.append(block)
        return blocks

    def share(self, block: int) -> None:
        """One more owner of ``block`` (revives a freed, still-cached block)."""
        if self.refcount[block] == 0:
            del self._free[block]
        self.refcount[block] += 1

    def free(self, block: int) -> None:
        """One owner fewer; the block returns to the free list at zero."""
        if self.refcount[block] <= 0:
            raise ValueError(f"block {block} is already free (double free)")
        self.refcount[block] -= 1
        if self.refcount[block] == 0:
            self._free[block] = None

    def publish(self, block_hash: int, block: int) -> None:
        """Make the full ``block`` findable by ``block_hash`` (first publisher wins)."""
        if block_hash not in self._block_of and block not in self._hash_of:
            self._block_of[block_hash] = block
            self._hash_of[block] = block_hash

    def lookup(self, block_hash: int) -> int | None:
        """The cached block with this hash, or None; counted in the hit rate."""
        self.prefix_queries += 1
        block = self._block_of.get(block_hash)
        if block is not None:
            self.prefix_hits += 1
        return block

    @property
    def prefix_hit_rate(self) -> float:
        """Fraction of looked-up full prompt blocks that were found cached."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def block_hashes(tokens: list[int], block_size: int) -> list[int]:
    """One hash per *full* block, each covering all tokens up to the block's end (a hash chain)."""
    hashes, prev = [], 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        prev = hash((prev, tuple(tokens[start : start + block_size])))
        hashes.append(prev)
    return hashes
