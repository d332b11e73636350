"""``TrainConfig``: every knob of a training run, one plain dataclass (Hydra's ``conf/training`` fills it).

Validation happens in ``__post_init__``: a bad value raises ``ValueError`` naming ``train.<field>`` and
what is allowed, so a typo in a YAML file fails before any model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tinylm.core.config import dataclass_from_dict
from tinylm.dist.schedules import SCHEDULES

DECAY_SHAPES = ("linear", "sqrt")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """A training run: optimisation, precision, device, evaluation, sampling, checkpointing.

    One optimizer step sees ``batch_size * grad_accum_steps`` sequences. Steps count from 1;
    ``eval_interval``, ``log_interval`` and ``checkpoint_interval`` are in optimizer steps.
    """

    max_steps: int = 1000
    batch_size: int = 8  # micro-batch: sequences per forward/backward
    grad_accum_steps: int = 1
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5
    warmup_steps: int = 100
    schedule: str = "cosine"  # a SCHEDULES name: cosine | linear | constant | wsd
    decay_fraction: float = 0.2  # wsd: the last fraction of steps that decays
    decay_shape: str = "linear"  # wsd: linear | sqrt (1 - sqrt, Hägele et al. 2024)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    dtype: str = "float32"  # autocast dtype: float32 | bfloat16 | float16 (GradScaler on CUDA)
    compile: bool = False
    cuda_graph: bool = False  # replay forward+backward from CUDA graphs (single CUDA device, no compile)
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    eval_interval: int = 200
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int | None = None  # None: same as eval_interval
    sample_prompts: list[str] = field(default_factory=list)
    sample_tokens: int = 64
    sample_temperature: float = 0.8
    sample_top_k: int | None = 50
    seed: int = 1337
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint_interval is None:
            self.checkpoint_interval = self.eval_interval
        positive = ("max_steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_batches")
        for name in (*positive, "log_interval", "checkpoint_interval"):
            self._require(name, lambda v: _is_int(v) and v > 0, "a positive integer")
        for name in ("warmup_steps", "sample_tokens", "seed"):
            self._require(name, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        for name in ("lr", "eps"):
            self._require(name, lambda v: _is_number(v) and v > 0, "a number > 0")
        for name in ("weight_decay", "grad_clip", "sample_temperature"):
            self._require(name, lambda v: _is_number(v) and v >= 0, "a number >= 0")
        for name in ("beta1", "beta2"):
            self._require(name, lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        self._require(
            "min_lr", lambda v: _is_number(v) and 0 <= v <= self.lr, f"a number in [0, lr={self.lr}]"
        )
        self._require("decay_fraction", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")
        self._require("schedule", lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES.names())}")
        self._require("decay_shape", lambda v: v in DECAY_SHAPES, f"one of {', '.join(DECAY_SHAPES)}")
        self._require("dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
        self._require("device", _valid_device, "auto, cpu, cuda, cuda:N or mps")
        self._require(
            "sample_top_k", lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or None"
        )
        self._require(
            "sample_prompts",
            lambda v: isinstance(v, list | tuple) and all(isinstance(p, str) for p in v),
            "a list of strings",
        )
        self.sample_prompts = list(self.sample_prompts)

    def _require(self, name: str, ok: Callable[[Any], bool], allowed: str) -> None:
        value = getattr(self, name)
        if not ok(value):
            raise ValueError(f"train.{name} must be {allowed}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys raise an error naming them and the allowed keys."""
        return dataclass_from_dict(cls, data, "train")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid_device(device: Any) -> bool:
    if not isinstance(device, str):
        return False
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()
