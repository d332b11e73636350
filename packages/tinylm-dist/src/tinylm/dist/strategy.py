"""Where the model runs and how processes cooperate: the seam between the Trainer and DDP/FSDP2.

The Trainer never asks which strategy it has; it calls these methods. ``SingleDevice`` is the one-process
case: collectives are the identity and ``no_sync`` does nothing. A multi-process strategy overrides
``setup`` (wrap the model), ``no_sync`` (skip the gradient all-reduce on all but the last micro-batch),
``reduce_mean`` / ``barrier`` (collectives), and the state hooks (which shards to save and load).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinylm.core.checkpoint import WEIGHTS_NAME, load_weights, write_model_files


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; other names are checked to exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train.device={name!r} but Apple MPS is not available; use 'auto' or 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return device


class Strategy:
    """How a model is placed, how gradients meet across processes, and what each process saves."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    def setup(self, model: nn.Module) -> nn.Module:
        """Place (and, for parallel strategies, wrap) ``model``; returns the module to train."""
        raise NotImplementedError

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain model inside whatever ``setup`` (or ``torch.compile``) wrapped around it."""
        while True:
            if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
                model = model._orig_mod
            elif isinstance(getattr(model, "module", None), nn.Module):  # DistributedDataParallel
                model = model.module
            else:
                return model

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (already scaled by the caller for accumulation / fp16)."""
        loss.backward()

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A context in which backward does not synchronise gradients (all but the last micro-batch)."""
        return contextlib.nullcontext()

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over all processes (the identity on one)."""
        return tensor

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for on one)."""

    # State hooks: what a checkpoint holds from this process, and how it is put back.
    def write_model(self, model: nn.Module, directory: Path) -> None:
        """Write ``model.safetensors`` + ``config.json`` for ``model`` into ``directory`` (main process)."""
        write_model_files(self.unwrap(model), directory)

    def load_model(self, model: nn.Module, directory: Path) -> None:
        """Load the weights that ``write_model`` wrote back into ``model`` (strict key and shape checks)."""
        load_weights(self.unwrap(model), Path(directory) / WEIGHTS_NAME)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state to save (a parallel strategy gathers or keeps its shard)."""
        return optimizer.state_dict()

    def load_optimizer_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Put back what ``optimizer_state`` returned."""
        optimizer.load_state_dict(state)

    def train_state_name(self) -> str:
        """The file, inside a checkpoint directory, holding this process's training state."""
        return "train_state.pt" if self.world_size == 1 else f"train_state_rank{self.rank}.pt"


class SingleDevice(Strategy):
    """One process, one device (``auto``: CUDA, then MPS, then CPU)."""

    def __init__(self, device: str | torch.device = "auto") -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    def setup(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device; nothing to wrap."""
        return model.to(self.device)

    def __repr__(self) -> str:
        return f"SingleDevice({str(self.device)!r})"
