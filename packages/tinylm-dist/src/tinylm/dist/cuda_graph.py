"""The training forward and backward replayed from CUDA graphs: one launch each instead of hundreds.

A small model's training step is bound by the CPU launching kernels, not by the GPU running them (on an
H100 the 10.7M-parameter shakespeare model spends ~22 ms per eager step for ~9 ms of GPU work). With
``TrainConfig.cuda_graph`` the Trainer wraps its model in ``CUDAGraphTrainModel``: the first training call
of each input shape captures the loss's forward and backward with ``torch.cuda.make_graphed_callables``,
and later calls copy the batch into the graph's static inputs and replay. Dropout stays random (CUDA
graphs draw fresh Philox offsets per replay), gradients accumulate into ``.grad`` as usual, and the
optimizer, clipping and schedule run eagerly as before, so the step is the same computation. Gradients are
zeroed in place between steps (not set to None), see ``forward``.

Limits, checked with clear errors by ``check_cuda_graph_config``: a CUDA device, no ``torch.compile`` (it
has its own ``mode="reduce-overhead"`` graphs), a single process, and static shapes (each new shape is one
more capture, up to ``max_graphs``; beyond that calls run eagerly). Autocast runs inside the graph with its
weight-cast cache off, as capture requires, so every replay casts the current weights.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch import nn


class GraphedOutput(NamedTuple):
    """What a graphed training call returns: the loss (the logits stay inside the graph)."""

    loss: torch.Tensor


class _LossOf(nn.Module):
    """``model(x, labels=y, loss_reduction=...).loss`` under autocast without its cast cache."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None, reduction: str) -> None:
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.reduction = reduction

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        amp = (
            torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=False)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            return self.model(x, labels=y, loss_reduction=self.reduction).loss


class CUDAGraphTrainModel(nn.Module):
    """Calls like the model (``m(x, labels=y, loss_reduction="sum").loss``), replaying captured graphs.

    Training calls with ``labels`` and no other arguments are graphed; anything else (evaluation, other
    keyword arguments, more than ``max_graphs`` shapes) runs the wrapped model eagerly.
    """

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None = None, max_graphs: int = 4) -> None:
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.max_graphs = max_graphs
        self._graphs: dict[tuple[Any, ...], Any] = {}

    @property
    def captured(self) -> int:
        """How many input shapes have a captured graph."""
        return len(self._graphs)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, loss_reduction: str = "mean", **kwargs: Any
    ) -> Any:
        if labels is None or kwargs or not self.model.training or not torch.is_grad_enabled():
            return self.model(x, labels=labels, loss_reduction=loss_reduction, **kwargs)
        key = (tuple(x.shape), x.dtype, tuple(labels.shape), labels.dtype, loss_reduction)
        graphed = self._graphs.get(key)
        if graphed is None and len(self._graphs) >= self.max_graphs:
            return self.model(x, labels=labels, loss_reduction=loss_reduction)
        # The graph's backward returns its static gradient buffers; a parameter whose .grad is None would
        # take such a buffer as its .grad (autograd steals it), and the next replay would overwrite it:
        # with existing .grad tensors, accumulation adds into them instead.
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        # A caller's autocast (with its cast cache) is switched off around capture and replay: the graph
        # holds its own autocast (cache off), and make_graphed_callables refuses a caching one.
        with torch.autocast("cuda", enabled=False):
            if graphed is None:
                graphed = torch.cuda.make_graphed_callables(
                    _LossOf(self.model, self.amp_dtype, loss_reduction), (x, labels)
                )
                self._graphs[key] = graphed
            return GraphedOutput(graphed(x, labels))


def check_cuda_graph_config(device: torch.device, compile: bool, world_size: int) -> None:
    """Raise ``ValueError`` saying why ``cuda_graph=true`` cannot be used here (None if it can)."""
    if device.type != "cuda":
        raise ValueError(f"training.cuda_graph needs a CUDA device; this run is on {device.type}")
    if compile:
        raise ValueError(
            "training.cuda_graph and training.compile are alternatives: pick one (compile has its own "
            "CUDA graphs with mode='reduce-overhead')"
        )
    if world_size != 1:
        raise ValueError(f"training.cuda_graph runs in a single process; this run has {world_size}")
