"""tinylm.cache: KV caches for TinyLM: standard, static, paged (blocks), quantized, sliding window and C2C cache-to-cache fusion; a continuous-batching engine."""
