"""``BenchConfig``: what one benchmark run measures and how; ``BENCH_MODES``: mode name -> function.

A mode is a function ``(BenchConfig) -> BenchResult`` registered with ``@BENCH_MODES.register(name)``;
core registers train_step, prefill, decode, memory, kernels, quant, compare and time_to_target, and other
packages add theirs the same way. Every field is validated in ``__post_init__``: a bad value raises
``ValueError`` naming ``bench.<field>`` and what is allowed, before anything is built or timed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tinylm.core.config import ModelConfig
from tinylm.core.registry import CACHES, Registry

BENCH_MODES: Registry = Registry("bench mode")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
BASELINES = ("none", "hf")
PEAK_CHOICES = ("measure",)  # or a number (TFLOP/s), or None: no MFU


@dataclass
class BenchConfig:
    """One benchmark run. Only the fields the chosen ``mode`` reads matter; the rest keep their defaults.

    ``block_size`` None means ``model.max_seq_len``. ``peak_tflops``: ``"measure"`` times a large matmul
    in the run's dtype on the same device, a number is taken as given, None leaves MFU out.
    """

    mode: str = "train_step"
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # train_step: autocast dtype; inference modes: the weights' dtype
    compile: bool = False  # train_step only (torch.compile of the model)
    warmup: int = 3
    repeats: int = 10
    seed: int = 0
    batch_size: int = 8  # train_step, memory
    block_size: int | None = None  # train_step, memory: tokens per sequence
    grad_clip: float = 1.0  # train_step: clip the global grad norm as the Trainer does (0 = off)
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 128])  # prefill
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])  # prefill, decode, quant
    prompt_length: int = 64  # decode, quant: prompt tokens before the timed decode steps
    new_tokens: int = 64  # decode, quant: tokens generated per sequence
    caches: list[str] = field(default_factory=lambda: ["standard"])  # CACHES names (prefill, decode)
    peak_tflops: float | str | None = "measure"
    baseline: str = "none"  # none | hf (transformers generate / forward on to_hf(model))
    profile: bool = False  # torch.profiler around the timed region: Chrome trace + top-ops table
    out_dir: str = "bench_out"
    name: str | None = None  # file stem of the results (default: the mode)
    inputs: list[str] = field(default_factory=list)  # compare: result JSONs; time_to_target: metrics
    target: float = 1.47  # time_to_target: the validation loss to reach
    quant_schemes: list[str] = field(default_factory=list)  # quant: QUANT_SCHEMES names (empty: all)
    kernels_dir: str = "packages/tinylm-kernels/benchmarks"  # kernels: where bench_*.py live
    kernels_args: list[str] = field(default_factory=list)  # kernels: extra arguments for every script
    kernels_timeout: int = 600  # kernels: seconds per script

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        self._require("mode", lambda v: v in BENCH_MODES, f"one of {', '.join(BENCH_MODES.names())}")
        self._require("dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
        self._require("baseline", lambda v: v in BASELINES, f"one of {', '.join(BASELINES)}")
        self._require("device", _valid_device, "auto, cpu, cuda, cuda:N or mps")
        for name in ("repeats", "batch_size", "prompt_length", "kernels_timeout"):
            self._require(name, lambda v: _is_int(v) and v > 0, "a positive integer")
        for name in ("warmup", "seed"):
            self._require(name, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        self._require("new_tokens", lambda v: _is_int(v) and v >= 2, "an integer >= 2 (1 prefill + decode)")
        self._require("grad_clip", lambda v: _is_number(v) and v >= 0, "a number >= 0")
        self._require("target", _is_number, "a number")
        for name in ("prompt_lengths", "batch_sizes"):
            self._require(name, _positive_int_list, "a non-empty list of positive integers")
        self._require("caches", _str_list, "a non-empty list of cache names")
        unknown = [c for c in self.caches if c not in CACHES]
        if unknown:
            raise ValueError(
                f"unknown cache {unknown[0]!r} in bench.caches; known: {', '.join(CACHES.names())}"
            )
        self._require(
            "peak_tflops",
            lambda v: v is None or v in PEAK_CHOICES or (_is_number(v) and v > 0),
            "'measure', a number of TFLOP/s > 0, or null (no MFU)",
        )
        for name in ("inputs", "quant_schemes", "kernels_args"):
            self._require(name, lambda v: _str_list(v, allow_empty=True), "a list of strings")
        for name in ("prompt_lengths", "batch_sizes", "caches", "inputs", "quant_schemes", "kernels_args"):
            setattr(self, name, list(getattr(self, name)))  # OmegaConf ListConfig / tuples -> list
        if self.block_size is None:
            self.block_size = self.model.max_seq_len
        self._require(
            "block_size",
            lambda v: _is_int(v) and 0 < v <= self.model.max_seq_len,
            f"a positive integer <= model.max_seq_len={self.model.max_seq_len}",
        )
        if self.mode == "prefill" and max(self.prompt_lengths) > self.model.max_seq_len:
            raise ValueError(
                f"bench.prompt_lengths has {max(self.prompt_lengths)} tokens, over "
                f"model.max_seq_len={self.model.max_seq_len}"
            )
        if self.mode in ("decode", "quant") and self.prompt_length + self.new_tokens > self.model.max_seq_len:
            raise ValueError(
                f"bench.prompt_length + bench.new_tokens = {self.prompt_length + self.new_tokens} is over "
                f"model.max_seq_len={self.model.max_seq_len}"
            )
        if self.mode in ("compare", "time_to_target") and not self.inputs:
            raise ValueError(f"mode={self.mode} needs files to read: pass 'inputs=[a.json,b.json]'")

    def _require(self, name: str, ok: Callable[[Any], bool], allowed: str) -> None:
        value = getattr(self, name)
        if not ok(value):
            raise ValueError(f"bench.{name} must be {allowed}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (the model config nested)."""
        return dataclasses.asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype``."""
        return DTYPES[self.dtype]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; a named device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"bench.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"bench.device={name!r} but Apple MPS is not available; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 0 and all(_is_int(v) and v > 0 for v in value)


def _str_list(value: Any, allow_empty: bool = False) -> bool:
    if not isinstance(value, list | tuple) or (not value and not allow_empty):
        return False
    return all(isinstance(v, str) for v in value)


def _valid_device(device: Any) -> bool:
    if not isinstance(device, str):
        return False
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()
