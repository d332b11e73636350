"""Shared fixtures: tiny configs that keep the suite fast on 2 CPU cores."""

import pytest
import torch

from tinylm.core import ModelConfig, TinyLM


def _tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    return ModelConfig(**{**base, **overrides})


def _tiny_model(seed: int = 0, **overrides) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(_tiny_config(**overrides)).eval()


@pytest.fixture
def tiny_config():
    """Factory: a 2-layer, 64-wide config with overrides."""
    return _tiny_config


@pytest.fixture
def tiny_model():
    """Factory: a seeded 2-layer, 64-wide model in eval mode, with config overrides."""
    return _tiny_model


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
