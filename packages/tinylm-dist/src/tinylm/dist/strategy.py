"""Where the model runs and how processes cooperate: the seam between the Trainer and DDP/FSDP2.

The Trainer never asks which strategy it has; it calls these methods. ``SingleDevice`` is the one-process
case: collectives are the identity and ``no_sync`` does nothing. A multi-process strategy
(``tinylm.dist.ddp``, ``tinylm.dist.fsdp``) overrides ``setup`` (wrap the model), ``no_sync`` (skip the
gradient all-reduce on all but the last micro-batch), the collectives, and ``save_checkpoint`` (sharded,
through ``torch.distributed.checkpoint``). ``load_checkpoint`` reads either layout on any number of
processes, so a run saved on 2 ranks resumes on 1. Strategies are registered in ``STRATEGIES`` by name
(``dist=single|ddp|fsdp2`` in Hydra). Model preparation follows torchtitan's order: activation checkpointing,
then ``torch.compile``, then the parallel wrapper.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tinylm.core.checkpoint import WEIGHTS_NAME, load_weights, write_model_files
from tinylm.core.registry import STRATEGIES
from tinylm.dist.train_state import load_train_state, save_training_checkpoint


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


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block's activations in backward instead of storing them.

    The block's ``forward`` is replaced in place (no wrapper module), so parameter names, state dicts and
    checkpoints are unchanged.
    """
    for block in transformer_blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``: names are unchanged)."""
    for block in transformer_blocks(model):
        block.compile()


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's ``layers``: the unit for checkpointing, compiling and sharding."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no `layers` ModuleList of transformer blocks")
    return layers


def build_strategy(name: str, device: str = "auto", **options: Any) -> Strategy:
    """The registered strategy ``name`` (single | ddp | fsdp2) built with ``options``; bad keys are named."""
    cls = STRATEGIES.get(name)
    allowed = [p for p in inspect.signature(cls).parameters if p != "device"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown dist.{name} options {unknown}; allowed: {', '.join(allowed)}")
    return cls(device=device, **options)


class Strategy:
    """How a model is placed, how gradients meet across processes, and what each process saves."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    activation_checkpointing: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    def setup(self, model: nn.Module, compile: bool = False) -> nn.Module:
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

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (say, tokenizing into a cache), then the others (reading it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (a run directory, a name): itself on one process."""
        return obj

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm of ``model`` to ``max_norm``; returns the norm before clipping
        (a 0-dim tensor on the device: reading it is left to the caller, it waits for the GPU)."""
        return torch.nn.utils.clip_grad_norm_(self.unwrap(model).parameters(), max_norm)

    def all_finite(self, model: nn.Module) -> str | None:
        """The name of a parameter holding NaN/inf (on any process), or None when all are finite."""
        for name, p in self.unwrap(model).named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # DTensor shard under FSDP2
            if not bool(torch.isfinite(local).all()):
                return name
        return None

    def close(self) -> None:
        """Release what the strategy holds (the process group); nothing for one process."""

    # Checkpoints: save in this strategy's layout; load either layout (``sharded_checkpoint``).
    def save_checkpoint(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        config: dict[str, Any],
        tokenizer: Any = None,
    ) -> Path:
        """Write a training checkpoint directory atomically: the model, optimizer and ``state``."""
        state = {**state, "optimizer": self.optimizer_state(model, optimizer)}
        if self.is_main:
            save_training_checkpoint(
                path,
                lambda d: self.write_model(model, d),
                state,
                config,
                tokenizer=tokenizer,
                state_name=self.train_state_name(),
            )
        self.barrier()
        return path

    def load_checkpoint(
        self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Load model and optimizer from ``path`` (either layout); returns the training state.

        The state's ``rng`` is None when the checkpoint came from a different number of processes.
        """
        from tinylm.dist.sharded_checkpoint import is_sharded, load_sharded_checkpoint

        if is_sharded(path):
            return load_sharded_checkpoint(path, self, model, optimizer)
        if self.world_size > 1:
            raise ValueError(
                f"{path} is a one-process checkpoint; resume it with dist=single, or start the "
                f"{self.world_size}-process run from its weights"
            )
        state = load_train_state(path, self.train_state_name())
        self.load_model(model, path)
        self.load_optimizer_state(model, optimizer, state["optimizer"])
        return state

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


@STRATEGIES.register("single")
class SingleDevice(Strategy):
    """One process, one device (``auto``: CUDA, then MPS, then CPU)."""

    def __init__(self, device: str | torch.device = "auto", activation_checkpointing: bool = False) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.activation_checkpointing = activation_checkpointing

    def setup(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """Move ``model`` to the device (activation checkpointing, ``torch.compile`` of the whole model)."""
        model = model.to(self.device)
        if self.activation_checkpointing:
            apply_activation_checkpointing(model)
        return torch.compile(model) if compile else model

    def __repr__(self) -> str:
        return f"SingleDevice({str(self.device)!r})"
