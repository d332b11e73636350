"""FSDP2: parameters, gradients and optimizer state sharded across processes (``fully_shard``).

``setup`` applies activation checkpointing per block, ``torch.compile`` per block, then ``fully_shard``
on each transformer block and finally on the root (embeddings, final norm, head), as torchtitan does.
Each block's parameters are all-gathered just before its forward and backward and freed again after
(``reshard_after_forward=False`` keeps them gathered between forward and backward: more memory, one
all-gather fewer). Gradients are reduce-scattered, so each process keeps only its shard of gradients and
AdamW state. ``param_dtype`` / ``reduce_dtype`` set the ``MixedPrecisionPolicy``: e.g. bf16 compute with
fp32 gradient reduction and fp32 sharded master weights. During accumulation gradient reduction is
switched off (``set_requires_gradient_sync(False)``) for all micro-batches but the last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from tinylm.core.registry import STRATEGIES
from tinylm.dist.distributed import ProcessGroupStrategy
from tinylm.dist.strategy import apply_activation_checkpointing, compile_blocks, transformer_blocks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None, what: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"dist.{what} must be null or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


@STRATEGIES.register("fsdp2")
class FSDP2(ProcessGroupStrategy):
    """Fully sharded data parallel, per transformer block (``torch.distributed.fsdp.fully_shard``)."""

    def __init__(
        self,
        device: str = "auto",
        activation_checkpointing: bool = False,
        timeout_s: float = 600.0,
        reshard_after_forward: bool = True,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
    ) -> None:
        # imported here: torch.distributed.fsdp costs seconds of start-up (sympy) for every other strategy
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        super().__init__(device, activation_checkpointing, timeout_s)
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = MixedPrecisionPolicy(
            param_dtype=_dtype(param_dtype, "param_dtype"), reduce_dtype=_dtype(reduce_dtype, "reduce_dtype")
        )
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))

    def setup(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """Rank 0's weights everywhere, activation checkpointing and compile per block, then shard."""
        from torch.distributed.fsdp import fully_shard

        model = model.to(self.device)
        with torch.no_grad():  # unlike DDP, fully_shard keeps each rank's own values: start from rank 0's
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor, src=0)
        if self.activation_checkpointing:
            apply_activation_checkpointing(model)
        if compile:
            compile_blocks(model)
        options = dict(mesh=self.mesh, mp_policy=self.mp_policy)
        for block in transformer_blocks(model):
            fully_shard(block, reshard_after_forward=self.reshard_after_forward, **options)
        fully_shard(model, reshard_after_forward=self.reshard_after_forward, **options)
        return model

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """No gradient reduce-scatter inside (gradients accumulate unsharded, then sync on the last)."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
