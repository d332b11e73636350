"""A registry is a dict from a config string to a factory, filled by decorators at import time.

Every pluggable part of TinyLM-Lab (norms, attention backends, caches, datasets, ...) lives in one, so a
new idea is one file and one ``@REGISTRY.register("name")``. Duplicates raise; an unknown name raises an
error that lists the names that are known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> factory mapping with loud errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name``."""

        def wrap(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        """The factory registered as ``name``; a miss lists the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind} names: {', '.join(sorted(self._entries))}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a temporary entry)."""
        self.get(name)
        del self._entries[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


ACTIVATIONS: Registry = Registry("activation")
NORMS: Registry = Registry("norm")
MLPS: Registry = Registry("mlp")
POSITIONALS: Registry = Registry("positional")
ATTENTION_BACKENDS: Registry = Registry("attention backend")
BLOCKS: Registry = Registry("block")
ARCHITECTURES: Registry = Registry("architecture")
TOKENIZERS: Registry = Registry("tokenizer")
DATASETS: Registry = Registry("dataset")
# Cache factories: called with keyword arguments config, batch_size, max_seq_len, device, dtype (a factory
# takes what it needs and ignores the rest via **kwargs); each returns a fresh object with the Cache protocol.
CACHES: Registry = Registry("cache")
# Quantization schemes (filled by tinylm-quant): name -> function(model, **options) -> quantized model.
QUANT_SCHEMES: Registry = Registry("quantization scheme")
# Training strategies (filled by tinylm-dist): name -> Strategy class, built with (device=..., **options).
STRATEGIES: Registry = Registry("training strategy")
# Routers (tinylm.core.components.routing): name -> function(cfg, block, layer_idx) -> module used as that
# layer. ``none`` returns the block; others wrap it (mixture-of-depths) or change its parts (head routing).
ROUTERS: Registry = Registry("router")
# Synthetic tasks (tinylm.core.data.tasks): name -> function(random.Random) -> (text, answer positions).
TASKS: Registry = Registry("task")
