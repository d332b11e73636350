"""Registered building blocks of TinyLM; importing this package fills the component registries."""

from tinylm.core.components import (
    activations,
    attention,
    attention_variants,
    blocks,
    head_routing,
    mlp,
    mod,
    moe,
    norms,
    positional,
    routing,
)

__all__ = [
    "activations",
    "attention",
    "attention_variants",
    "blocks",
    "head_routing",
    "mlp",
    "mod",
    "moe",
    "norms",
    "positional",
    "routing",
]
