"""``torch.distributed`` from torchrun's environment, and what every multi-process strategy shares.

torchrun (``torch.distributed.run``) sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` for each process; ``init_distributed`` reads them and starts the default process group:
NCCL when the process has a CUDA device (``cuda:LOCAL_RANK``), Gloo on CPU. Without torchrun's variables
it makes a one-process group (in-memory store), so ``dist=ddp`` also runs as a plain ``python`` process.

A rank that dies takes the job down rather than leaving the others waiting: torchrun's agent stops the
remaining workers when one exits with an error (and restarts them all with ``--max-restarts``), and every
collective has a timeout (``timeout_s``) after which a stuck process raises instead of hanging forever.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tinylm.dist.strategy import Strategy, resolve_device

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun_env() -> dict[str, int] | None:
    """``{"rank", "local_rank", "world_size"}`` from torchrun's variables, or None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"RANK and WORLD_SIZE are set but {missing} are not; launch with torchrun")
    return {
        "rank": int(os.environ["RANK"]),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
    }


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> tuple[int, int, torch.device]:
    """Start (or join an already started) default process group; returns ``(rank, world_size, device)``.

    ``device``: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cpu`` forces Gloo.
    """
    env = torchrun_env()
    local_rank = env["local_rank"] if env else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    if dev.type == "mps":
        raise ValueError("distributed training runs on cuda or cpu, not mps; use train.device=cpu")
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if env is None:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            # Keys of each torchrun restart under their own prefix: the agent's store outlives a failed
            # attempt, and a restarted rank could otherwise read a dead peer's Gloo address from it.
            store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"tinylm/attempt_{attempt}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), dev


class ProcessGroupStrategy(Strategy):
    """Collectives over the default process group; subclasses wrap the model (DDP, FSDP2)."""

    def __init__(
        self, device: str = "auto", activation_checkpointing: bool = False, timeout_s: float = 600.0
    ) -> None:
        self.rank, self.world_size, self.device = init_distributed(device, timeout_s)
        self.activation_checkpointing = activation_checkpointing

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over all processes (a new tensor)."""
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def barrier(self) -> None:
        """Wait for every process."""
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable, built by this program, never read from a file) on every process."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm (a DTensor under FSDP2: its full value is returned)."""
        norm = torch.nn.utils.clip_grad_norm_(self.unwrap(model).parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def all_finite(self, model: nn.Module) -> str | None:
        """The first parameter holding NaN/inf on any process (all processes agree), or None."""
        bad = super().all_finite(model)
        flag = torch.tensor(0.0 if bad is None else 1.0, device=self.device)
        if float(self.reduce_mean(flag)) == 0.0:
            return None
        return bad if bad is not None else "(a parameter shard on another rank)"

    def save_checkpoint(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        config: dict[str, Any],
        tokenizer: Any = None,
    ) -> Path:
        """Sharded: every process writes its part through ``torch.distributed.checkpoint``."""
        from tinylm.dist.sharded_checkpoint import save_sharded_checkpoint

        return save_sharded_checkpoint(path, self, model, optimizer, state, config, tokenizer)

    def close(self) -> None:
        """Destroy the default process group (idempotent)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, device={self.device})"
