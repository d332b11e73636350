"""Shared fixtures: a tiny model, synthetic token data, a fast TrainConfig and a fake byte tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.core import TinyLM
from tinylm.core.data import BatchIterator, PackedBlocks
from tinylm.dist import TrainConfig

VOCAB, BLOCK = 64, 16


class ByteTokenizer:
    """The duck type the Trainer needs (encode / decode / save), over bytes folded into the vocab."""

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return [0] * add_bos + [b % VOCAB for b in text.encode()] + [1] * add_eos

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(65 + i % 26) for i in ids)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "tokenizer.json").write_text(json.dumps({"type": "byte", "vocab_size": VOCAB}))


def _tiny_model(seed: int = 0, **overrides) -> TinyLM:
    torch.manual_seed(seed)
    base = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, max_seq_len=32)
    return TinyLM(**{**base, **overrides})


def _tokens(n: int = 6000, seed: int = 0, learnable: bool = True) -> np.ndarray:
    """Random tokens; ``learnable``: a noisy counting pattern (next = previous + 1) a model can pick up."""
    rng = np.random.default_rng(seed)
    if not learnable:
        return rng.integers(0, VOCAB, n, dtype=np.int64)
    tokens = np.arange(n, dtype=np.int64) % VOCAB
    noise = rng.random(n) < 0.1
    tokens[noise] = rng.integers(0, VOCAB, int(noise.sum()))
    return tokens


def _batches(batch_size: int = 4, seed: int = 0, n: int = 6000, data_seed: int = 0, **kw) -> BatchIterator:
    return BatchIterator(PackedBlocks(_tokens(n, data_seed, **kw), BLOCK), batch_size, seed=seed)


def _train_config(**overrides) -> TrainConfig:
    base = dict(
        max_steps=12,
        batch_size=4,
        grad_accum_steps=2,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        eval_interval=6,
        eval_batches=2,
        log_interval=1,
        device="cpu",
        progress=False,
        sample_tokens=6,
        seed=7,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP workers that wait
    for each other make every op many times slower; run each test on one thread, then put it back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    """Factory: a seeded 2-layer, 32-wide llama-style TinyLM over a 64-token vocab, with overrides."""
    return _tiny_model


@pytest.fixture
def batches():
    """Factory: a BatchIterator of (B, 16) blocks over synthetic tokens (learnable by default)."""
    return _batches


@pytest.fixture
def train_config():
    """Factory: a 12-step CPU TrainConfig (accumulation 2, eval every 6, log every step), with overrides."""
    return _train_config


class SimulatedKill(Exception):
    """Stands in for SIGKILL or a lost node: the process dies between two optimizer steps."""


def _kill_before_step(trainer, step: int) -> None:
    train_step = trainer.train_step

    def dying_train_step():
        if trainer.step == step - 1:
            raise SimulatedKill(f"simulated kill before step {step}")
        return train_step()

    trainer.train_step = dying_train_step


@pytest.fixture
def kill_before_step():
    """``kill_before_step(trainer, n)``: ``trainer.fit()`` dies (SimulatedKill) as step ``n`` would start."""
    return _kill_before_step


@pytest.fixture
def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()
