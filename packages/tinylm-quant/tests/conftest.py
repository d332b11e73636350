"""Shared fixtures: a seeded tiny TinyLM (2 layers, 64 wide) and a batch of token ids."""

import pytest
import torch

from tinylm.core import TinyLM


def make_tiny(seed: int = 0, **overrides) -> TinyLM:
    torch.manual_seed(seed)
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    return TinyLM(**{**base, **overrides}).eval()


@pytest.fixture
def tiny():
    """Factory: a seeded tiny model in eval mode, with config overrides."""
    return make_tiny


@pytest.fixture
def ids():
    return torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
