"""tinylm.cache: KV caches for TinyLM behind core's ``Cache`` protocol, registered in ``CACHES`` on import.

``standard`` (core), ``static`` (fixed shapes for CUDA graphs), ``paged`` (block pool, prefix sharing,
copy-on-write), ``quantized`` / ``quantized_int4`` (int8/int4 codes, per-token per-head scales),
``sliding_window`` (ring buffer + attention sinks), ``c2c`` (cache-to-cache fusion between two models);
``Engine``: continuous batching over the paged cache.
"""

from tinylm.cache.block_allocator import BlockAllocator, PoolExhaustedError
from tinylm.cache.c2c import C2CFuser, c2c_generate, c2c_loss
from tinylm.cache.engine import Engine, Request
from tinylm.cache.paged import PagedCache
from tinylm.cache.quantized import QuantizedCache
from tinylm.cache.serving import serve_prompts
from tinylm.cache.sliding_window import SlidingWindowCache
from tinylm.cache.static import StaticCache, decode_step

__all__ = [
    "BlockAllocator",
    "C2CFuser",
    "Engine",
    "PagedCache",
    "PoolExhaustedError",
    "QuantizedCache",
    "Request",
    "SlidingWindowCache",
    "StaticCache",
    "c2c_generate",
    "c2c_loss",
    "decode_step",
    "serve_prompts",
]
