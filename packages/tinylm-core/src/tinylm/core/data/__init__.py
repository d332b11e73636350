"""Data for TinyLM: tokenizers, datasets, tokenized caches, packing into blocks and resumable batches.

Importing this package registers every tokenizer (``TOKENIZERS``) and dataset (``DATASETS``).

    from tinylm.core.data import DataConfig, build_data, PackedBlocks, BatchIterator
    tokenizer, splits = build_data(DataConfig(num_documents=2000), "bpe", vocab_size=512, cache_dir="cache/")
    batches = BatchIterator(PackedBlocks(splits.train, block_size=128), batch_size=16)
"""

from tinylm.core.data.batches import BatchIterator, PackedBlocks
from tinylm.core.data.bpe_tokenizer import BPETokenizer
from tinylm.core.data.datasets import (
    DataConfig,
    DataPathError,
    DatasetUnavailableError,
    dataset_identity,
    iter_documents,
    register_dataset,
)
from tinylm.core.data.synthetic_stories import generate_stories
from tinylm.core.data.tasks import TASKS, evaluate_task, register_task
from tinylm.core.data.token_cache import (
    TokenSplits,
    build_data,
    default_cache_dir,
    prepare_tokens,
    split_documents,
    training_texts,
)
from tinylm.core.data.tokenizers import ByteLevelTokenizer, Tokenizer, build_tokenizer, load_tokenizer
from tinylm.core.data.vocab_tokenizers import CharTokenizer, WhitespaceTokenizer
from tinylm.core.registry import DATASETS, TOKENIZERS

__all__ = [
    "DATASETS",
    "TASKS",
    "TOKENIZERS",
    "BPETokenizer",
    "BatchIterator",
    "ByteLevelTokenizer",
    "CharTokenizer",
    "DataConfig",
    "DataPathError",
    "DatasetUnavailableError",
    "PackedBlocks",
    "TokenSplits",
    "Tokenizer",
    "WhitespaceTokenizer",
    "build_data",
    "build_tokenizer",
    "dataset_identity",
    "default_cache_dir",
    "evaluate_task",
    "generate_stories",
    "iter_documents",
    "load_tokenizer",
    "prepare_tokens",
    "register_dataset",
    "register_task",
    "split_documents",
    "training_texts",
]
