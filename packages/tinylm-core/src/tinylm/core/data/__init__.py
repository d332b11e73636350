"""Data for TinyLM: tokenizers, datasets, packing into blocks and resumable batches."""

from tinylm.core.data.batches import BatchIterator, PackedBlocks

__all__ = ["BatchIterator", "PackedBlocks"]
