"""Model configuration: architectures (component choices) and sizes, as plain data.

An ``ArchitectureConfig`` names the components a family uses (``llama``: RMSNorm, RoPE, SwiGLU, no
biases; ``gpt``: LayerNorm, learned positions, GELU, biases, tied embeddings). A ``ModelConfig`` adds the
sizes and takes every component field from its architecture unless overridden, so
``ModelConfig(architecture="gpt", norm="rmsnorm")`` is a GPT with RMSNorm. Component choices are registry
names, so a config serialises to JSON/YAML and back. Validation happens in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from tinylm.core.registry import (
    ACTIVATIONS,
    ARCHITECTURES,
    ATTENTION_BACKENDS,
    BLOCKS,
    MLPS,
    NORMS,
    POSITIONALS,
    ROUTERS,
)


@dataclass
class ArchitectureConfig:
    """The component choices that make a model family."""

    norm: str = "rmsnorm"
    positional: str = "rope"
    mlp: str = "gated"
    activation: str = "silu"
    attention: str = "sdpa"
    block: str = "prenorm"
    bias: bool = False
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0


ARCH_FIELDS = tuple(f.name for f in fields(ArchitectureConfig))


def dataclass_from_dict(cls: type, data: dict[str, Any], label: str) -> Any:
    """``cls(**data)``, but unknown keys raise one error naming them and the allowed keys."""
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown {label} config keys {unknown}; allowed: {', '.join(sorted(allowed))}")
    return cls(**data)


def register_architecture(name: str, config: ArchitectureConfig | None = None, **choices: Any) -> None:
    """Register an architecture preset, from a config or from keyword component choices."""
    ARCHITECTURES.register(name)(config if config is not None else ArchitectureConfig(**choices))


def get_architecture(name: str) -> ArchitectureConfig:
    """A copy of the architecture preset ``name`` (unknown names list the known ones)."""
    return dataclasses.replace(ARCHITECTURES.get(name))


register_architecture("llama", ArchitectureConfig())
register_architecture(
    "gpt",
    ArchitectureConfig(
        norm="layernorm",
        positional="learned",
        mlp="standard",
        activation="gelu_tanh",
        bias=True,
        tie_embeddings=True,
    ),
)

# Sizes as data (dim, layers, heads); vocab and everything else come from the caller.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, max_seq_len=256),
    "small": dict(dim=384, n_layers=6, n_heads=6, max_seq_len=512),
    "medium": dict(dim=512, n_layers=8, n_heads=8, max_seq_len=1024),
    "large": dict(dim=768, n_layers=12, n_heads=12, max_seq_len=1024),  # ~110M with a 16K vocab
    "xl": dict(dim=1024, n_layers=24, n_heads=16, max_seq_len=1024),  # ~340M with a 16K vocab
}


@dataclass
class ModelConfig:
    """Everything needed to build a ``TinyLM``. ``None`` component fields come from ``architecture``."""

    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: multi-head; 1: multi-query; else grouped-query
    head_dim: int | None = None  # None: dim // n_heads
    hidden_dim: int | None = None  # MLP width; None: 4*dim, or 2/3 of that for gated MLPs
    multiple_of: int = 32  # derived hidden_dim is rounded up to a multiple of this
    max_seq_len: int = 256
    dropout: float = 0.0
    init_std: float = 0.02
    architecture: str = "llama"
    norm: str | None = None
    positional: str | None = None
    mlp: str | None = None
    activation: str | None = None
    attention: str | None = None
    block: str | None = None
    bias: bool | None = None
    tie_embeddings: bool | None = None
    norm_eps: float | None = None
    rope_theta: float | None = None
    router: str = "none"  # ROUTERS name: none, mod (mixture-of-depths), heads (mixture-of-heads attention)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form options for plug-in components

    def __post_init__(self) -> None:
        arch = get_architecture(self.architecture)
        for name in ARCH_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(arch, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "multiple_of"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(
                    f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}; "
                    "choose n_heads dividing dim (or set head_dim)"
                )
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}; "
                "n_kv_heads must divide n_heads (1 = multi-query, n_heads = multi-head)"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name, registry in (
            ("norm", NORMS),
            ("positional", POSITIONALS),
            ("mlp", MLPS),
            ("activation", ACTIVATIONS),
            ("attention", ATTENTION_BACKENDS),
            ("block", BLOCKS),
            ("router", ROUTERS),
        ):
            value = getattr(self, name)
            if value not in registry:
                raise ValueError(
                    f"unknown {registry.kind} {value!r} (model.{name}); known: {', '.join(registry.names())}"
                )
        if self.hidden_dim is None:
            hidden = int(getattr(MLPS.get(self.mlp), "hidden_ratio", 4.0) * self.dim)
            self.hidden_dim = self.multiple_of * -(-hidden // self.multiple_of)

    @classmethod
    def from_preset(cls, size: str, **overrides: Any) -> ModelConfig:
        """A config from a size preset (tiny/small/medium/large) plus overrides."""
        if size not in SIZE_PRESETS:
            raise KeyError(f"unknown model size {size!r}; known sizes: {', '.join(SIZE_PRESETS)}")
        return cls(**{**SIZE_PRESETS[size], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys raise an error naming them and the allowed keys."""
        return dataclass_from_dict(cls, data, "model")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every (resolved) field."""
        return dataclasses.asdict(self)
