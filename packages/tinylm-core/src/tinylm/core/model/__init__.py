"""The TinyLM model."""

from tinylm.core.model.transformer import LMOutput, TinyLM

__all__ = ["LMOutput", "TinyLM"]
