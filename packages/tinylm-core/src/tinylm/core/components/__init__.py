"""Registered building blocks of TinyLM; importing this package fills the component registries."""

from tinylm.core.components import activations, attention, blocks, mlp, norms, positional

__all__ = ["activations", "attention", "blocks", "mlp", "norms", "positional"]
