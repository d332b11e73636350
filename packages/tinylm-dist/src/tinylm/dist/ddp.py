"""DDP: every process holds the whole model; gradients are all-reduced in buckets during backward.

``setup`` applies, in torchtitan's order, activation checkpointing per block, ``torch.compile`` per block,
then ``DistributedDataParallel`` (which broadcasts rank 0's weights, so every replica starts equal).
During gradient accumulation ``no_sync`` skips the all-reduce for all micro-batches but the last.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tinylm.core.registry import STRATEGIES
from tinylm.dist.distributed import ProcessGroupStrategy
from tinylm.dist.strategy import apply_activation_checkpointing, compile_blocks


@STRATEGIES.register("ddp")
class DDP(ProcessGroupStrategy):
    """Data parallel with whole replicas (``torch.nn.parallel.DistributedDataParallel``).

    ``bucket_cap_mb``: gradient bucket size for the all-reduce; ``gradient_as_bucket_view`` saves one copy
    of the gradients; ``static_graph`` lets DDP skip per-step graph checks (the block structure is fixed).
    """

    def __init__(
        self,
        device: str = "auto",
        activation_checkpointing: bool = False,
        timeout_s: float = 600.0,
        bucket_cap_mb: float = 25.0,
        gradient_as_bucket_view: bool = True,
        static_graph: bool = False,
    ) -> None:
        super().__init__(device, activation_checkpointing, timeout_s)
        if not bucket_cap_mb > 0:
            raise ValueError(f"dist.bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.gradient_as_bucket_view, self.static_graph = gradient_as_bucket_view, static_graph

    def setup(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """Activation checkpointing and compile per block, then the DDP wrapper."""
        model = model.to(self.device)
        if self.activation_checkpointing:
            apply_activation_checkpointing(model)
        if compile:
            compile_blocks(model)
        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            bucket_cap_mb=self.bucket_cap_mb,
            gradient_as_bucket_view=self.gradient_as_bucket_view,
            static_graph=self.static_graph,
        )

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """DDP's own ``no_sync``: gradients accumulate locally until a backward outside it."""
        return model.no_sync()
