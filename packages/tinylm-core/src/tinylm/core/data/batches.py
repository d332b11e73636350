"""Fixed-length training blocks from a 1-D token array, and a resumable, shardable batch iterator.

``PackedBlocks`` cuts a token stream (documents joined with EOS, as stored in the memmap cache) into
non-overlapping blocks of ``block_size + 1`` tokens; block ``i`` gives ``x = tokens[i*T : i*T+T]`` and
``y = tokens[i*T+1 : i*T+T+1]`` (next-token targets, nanoGPT's layout). ``BatchIterator`` walks the blocks
in a seeded permutation per epoch, each rank taking every ``world_size``-th block (each block seen once per
epoch across ranks), and its position is a small ``state_dict`` so training resumes exactly. When
shuffling, every epoch also shifts the block boundaries by a seeded offset in ``[0, T)``, so a small corpus
is not cut the same way every epoch (nanoGPT gets the same effect by sampling random windows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class PackedBlocks:
    """Non-overlapping ``(x, y)`` blocks of ``block_size`` tokens over a 1-D token array (memmap ok)."""

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if len(tokens) < block_size + 1:
            raise ValueError(
                f"{len(tokens)} tokens cannot fill one block of {block_size} (+1 target) tokens; "
                "use more data or a smaller block_size"
            )
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block(i)

    def block(self, i: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``i`` of the stream cut after its first ``offset`` tokens."""
        if not 0 <= i < (len(self.tokens) - 1 - offset) // self.block_size:
            raise IndexError(f"block {i} out of range at offset {offset}")
        start = offset + i * self.block_size
        chunk = torch.from_numpy(np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def batch(self, indices: list[int], offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``indices`` stacked into ``(x, y)`` of shape ``(len(indices), T)``, in one gather."""
        n = (len(self.tokens) - 1 - offset) // self.block_size
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"blocks {bad[:5]} out of range at offset {offset} ({n} blocks)")
        starts = offset + np.asarray(indices, dtype=np.int64) * self.block_size
        rows = np.asarray(self.tokens)[starts[:, None] + np.arange(self.block_size + 1)]
        chunk = torch.from_numpy(rows.astype(np.int64, copy=False))
        return chunk[:, :-1], chunk[:, 1:]


class BatchIterator:
    """Endless ``(x, y)`` batches ``(B, T)`` over ``PackedBlocks``; reshuffled each epoch, resumable.

    The order depends only on ``(seed, epoch)``, so ``load_state_dict(state_dict())`` continues exactly.
    With ``world_size > 1`` each rank reads a disjoint, equal share of every epoch's permutation.
    """

    def __init__(
        self,
        blocks: PackedBlocks,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        fewest = (len(blocks.tokens) - blocks.block_size) // blocks.block_size if shuffle else len(blocks)
        per_rank = fewest // world_size  # blocks per rank in the epoch with the largest offset
        if per_rank < batch_size:
            raise ValueError(
                f"{len(blocks)} blocks of {blocks.block_size} tokens over {world_size} rank(s) cannot fill a "
                f"batch of {batch_size}; use more data, a smaller batch or a smaller block_size"
            )
        self.blocks, self.batch_size, self.seed, self.shuffle = blocks, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0  # index: next position in this rank's share of the epoch
        self._offset = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        n, t = len(self.blocks), self.blocks.block_size
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._offset = int(torch.randint(0, t, (1,), generator=g)) if n > 1 else 0
            n = (len(self.blocks.tokens) - 1 - self._offset) // t  # the same n, or one block fewer
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per_rank = n // self.world_size
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index + self.batch_size > len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order()
        idx = self._order[self.index : self.index + self.batch_size].tolist()
        self.index += self.batch_size
        return self.blocks.batch(idx, self._offset)

    def state_dict(self) -> dict[str, Any]:
        """Where the iterator is: enough to continue the same sequence of batches."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data state was saved with seed {state['seed']}, this iterator has {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._epoch_order()
