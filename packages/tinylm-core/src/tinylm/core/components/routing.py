"""Routers (``model.router``) and the generic hooks that every routed component uses.

A router is a function ``(cfg, block, layer_idx) -> nn.Module`` registered in ``ROUTERS``; ``TinyLM`` passes
each freshly built block through it, so a router can return the block (``none``), wrap it (mixture-of-depths,
``mod.py``) or swap one of its parts (mixture-of-heads, ``head_routing.py``). Mixture-of-experts is an MLP
(``model.mlp=moe``, ``moe.py``).

Hooks shared by all routed components (none of them is specific to one router):

- ``aux_loss``: a module that sets ``self.aux_loss`` (a scalar, already weighted) in its forward has it
  added to the training loss by ``TinyLM`` (``collect_aux_loss``), per target token.
- ``stats``: a dict of detached tensors (expert utilisation, fraction of tokens processed, ...) that
  ``routing_stats`` gathers for logs and reports.
- options: plug-in options live in ``ModelConfig.extra[<name>]`` (``model.extra.moe.experts=8``) and are
  read with ``plugin_options``, which rejects unknown keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tinylm.core.registry import ROUTERS

if TYPE_CHECKING:
    from tinylm.core.config import ModelConfig


def plugin_options(cfg: ModelConfig, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``cfg.extra[name]``; an unknown key raises naming the allowed ones."""
    given = cfg.extra.get(name) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"model.extra.{name} must be a mapping of options, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown model.extra.{name} options {unknown}; allowed: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **dict(given)}


def collect_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the ``aux_loss`` every module set in the last forward (None if none did); clears them."""
    total = None
    for module in model.modules():
        aux = getattr(module, "aux_loss", None)
        if aux is not None:
            total = aux if total is None else total + aux
            module.aux_loss = None
    return total


def routing_stats(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: stats}`` for every module exposing a non-empty ``stats`` dict (floats / lists)."""
    out = {}
    for name, module in model.named_modules():
        stats = getattr(module, "stats", None)
        if isinstance(stats, dict) and stats:
            out[name] = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}
    return out


@ROUTERS.register("none")
def no_router(cfg: ModelConfig, block: nn.Module, layer_idx: int) -> nn.Module:
    """Every token goes through every block (the dense transformer)."""
    return block
