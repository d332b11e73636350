"""tinylm.core: registered components, LLaMA/GPT architectures, TinyLM, checkpoints and HF interop.

from tinylm.core import TinyLM
model = TinyLM(vocab_size=256, architecture="llama", dim=128, n_layers=4, n_heads=4)
"""

from tinylm.core import components  # noqa: F401  (fills the registries)
from tinylm.core.cache import Cache, StandardCache
from tinylm.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinylm.core.config import (
    SIZE_PRESETS,
    ArchitectureConfig,
    ModelConfig,
    get_architecture,
    register_architecture,
)
from tinylm.core.data import (
    DATASETS,
    TOKENIZERS,
    BatchIterator,
    DataConfig,
    PackedBlocks,
    Tokenizer,
    TokenSplits,
    build_data,
    build_tokenizer,
    load_tokenizer,
    prepare_tokens,
    register_dataset,
)
from tinylm.core.hf import from_hf, to_hf
from tinylm.core.model import LMOutput, TinyLM
from tinylm.core.registry import (
    ACTIVATIONS,
    ARCHITECTURES,
    ATTENTION_BACKENDS,
    BLOCKS,
    CACHES,
    MLPS,
    NORMS,
    POSITIONALS,
    QUANT_SCHEMES,
    ROUTERS,
    Registry,
    UnknownNameError,
)

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "ATTENTION_BACKENDS",
    "BLOCKS",
    "CACHES",
    "DATASETS",
    "MLPS",
    "NORMS",
    "POSITIONALS",
    "QUANT_SCHEMES",
    "ROUTERS",
    "SIZE_PRESETS",
    "TOKENIZERS",
    "ArchitectureConfig",
    "BatchIterator",
    "Cache",
    "CheckpointError",
    "DataConfig",
    "LMOutput",
    "ModelConfig",
    "PackedBlocks",
    "Registry",
    "StandardCache",
    "TinyLM",
    "TokenSplits",
    "Tokenizer",
    "UnknownNameError",
    "build_data",
    "build_tokenizer",
    "from_hf",
    "get_architecture",
    "load_checkpoint",
    "load_tokenizer",
    "prepare_tokens",
    "register_architecture",
    "register_dataset",
    "save_checkpoint",
    "to_hf",
]
