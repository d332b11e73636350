"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP), resumable on any world size.

A multi-process strategy writes (to a temporary sibling, renamed only once every rank has finished, so
a rank dying mid-save leaves the previous checkpoint whole):

    dcp/                             model + AdamW state; each rank writes its own shards (DCP format)
    model.safetensors, config.json   the consolidated model (gathered to rank 0): apps/infer.py loads it
    tokenizer.json, trainer.json     as in a one-process checkpoint
    train_state.pt                   step, counters, GradScaler, world_size, rank 0's RNG and data positions
    rank_state_<r>.pt                rank r's RNG states and data positions

DCP stores tensors by name with their global shapes, so loading reshards: a checkpoint saved by 2 FSDP2
ranks loads into 1 process, into DDP replicas or into 2 FSDP2 ranks alike. On the same world size every
rank gets its own RNG and data position back (the run continues bit for bit). On another world size the
data positions are rescaled to the same point in the global sample order (``BatchIterator`` gives rank
``r`` every ``world_size``-th block of one permutation, so with the same global batch the same samples
follow) and the returned ``rng`` is None (the Trainer reseeds per rank). Everything is read with
``weights_only=True``; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tinylm.core.checkpoint import CheckpointError, load_config, save_checkpoint, write_model_files
from tinylm.core.model.transformer import TinyLM
from tinylm.dist.strategy import Strategy
from tinylm.dist.train_state import TRAIN_STATE_VERSION, TRAINER_CONFIG_NAME, load_train_state

DCP_DIR = "dcp"
SHARED_STATE = "train_state.pt"


def rank_state_name(rank: int) -> str:
    """The file holding one rank's RNG states and data positions."""
    return f"rank_state_{rank}.pt"


def is_sharded(path: str | Path) -> bool:
    """True when ``path`` is a checkpoint written by ``save_sharded_checkpoint``."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def save_sharded_checkpoint(
    path: str | Path,
    strategy: Strategy,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any],
    tokenizer: Any = None,
) -> Path:
    """Write a sharded training checkpoint (collective: every rank calls it). Returns ``path``."""
    import torch.distributed.checkpoint as dcp  # lazy: seconds of start-up for runs that never use it
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-sharded")
    if strategy.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a run that died mid-save
        tmp.mkdir(parents=True)
    strategy.barrier()
    plain = strategy.unwrap(model)
    model_state, optim_state = get_state_dict(plain, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / DCP_DIR)
    mine = {"version": TRAIN_STATE_VERSION, "rng": state["rng"], "data": state["data"]}
    torch.save(mine, tmp / rank_state_name(strategy.rank))
    full = get_model_state_dict(plain, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if strategy.is_main:
        write_consolidated(full, plain, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        (tmp / TRAINER_CONFIG_NAME).write_text(json.dumps(config, indent=2))
        shared = {"version": TRAIN_STATE_VERSION, **state, "world_size": strategy.world_size}
        torch.save(shared, tmp / SHARED_STATE)
    strategy.barrier()  # every shard is on disk before the checkpoint becomes visible
    if strategy.is_main:
        _replace(tmp, path)
    strategy.barrier()
    return path


def write_consolidated(full_state: dict[str, torch.Tensor], model: nn.Module, directory: Path) -> None:
    """``model.safetensors`` + ``config.json`` (tinylm.core format) from a full ``TinyLM`` state dict."""
    with torch.device("meta"):  # no memory, no init: the tensors are the gathered ones
        shell = TinyLM(model.config)
    shell.load_state_dict(full_state, assign=True)
    write_model_files(shell, directory)


def _replace(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_sharded_checkpoint(
    path: str | Path, strategy: Strategy, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load model and optimizer from a sharded checkpoint into this strategy's layout; returns the state.

    Works on any number of processes (resharding); see the module docstring for RNG and data positions.
    """
    import torch.distributed.checkpoint as dcp  # lazy: seconds of start-up for runs that never use it
    from torch.distributed.checkpoint.state_dict import (
        get_state_dict,
        set_state_dict,
    )

    path = Path(path)
    shared = load_train_state(path, SHARED_STATE)
    saved_world = int(shared["world_size"])
    plain = strategy.unwrap(model)
    model_state, optim_state = get_state_dict(plain, optimizer)
    both = {"model": model_state, "optim": optim_state}
    try:
        with _single_process_quiet():
            dcp.load(both, checkpoint_id=path / DCP_DIR, no_dist=not dist.is_initialized())
    except Exception as e:  # missing shard, another model's checkpoint, ...
        raise CheckpointError(f"{path / DCP_DIR}: cannot load the sharded state: {e}") from None
    set_state_dict(plain, optimizer, model_state_dict=both["model"], optim_state_dict=both["optim"])
    if saved_world == strategy.world_size:
        mine = load_train_state(path, rank_state_name(strategy.rank))
        rng, data = mine["rng"], mine["data"]
    else:
        rng = None
        data = {k: rescale_data_state(v, saved_world, strategy.world_size) for k, v in shared["data"].items()}
    return {**shared, "rng": rng, "data": data}


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    with warnings.catch_warnings():  # loading on one process without a process group is what we mean
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def rescale_data_state(state: dict[str, Any] | None, old_world: int, new_world: int) -> dict[str, Any] | None:
    """A ``BatchIterator`` position saved on ``old_world`` ranks, as the position on ``new_world`` ranks.

    Each of ``old_world`` ranks had consumed ``index`` blocks of the epoch's permutation, so
    ``index * old_world`` blocks of the global order are done; each new rank has done its share of them.
    """
    if state is None:
        return None
    done = int(state["index"]) * old_world
    if done % new_world:
        raise ValueError(
            f"cannot resume on {new_world} process(es): {done} samples of the epoch were used on "
            f"{old_world}, not a multiple of {new_world}; resume on {old_world} or a divisor of {done}"
        )
    return {**state, "index": done // new_world}


def export_consolidated(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """One process, no process group: a sharded checkpoint's model as a plain safetensors checkpoint.

    Reads ``dcp/`` (not the ``model.safetensors`` written at save time) into a ``TinyLM`` built from
    ``config.json`` and writes ``model.safetensors`` + ``config.json`` (+ ``tokenizer.json``) to ``out_dir``,
    which ``tinylm.core.load_checkpoint`` and ``apps/infer.py`` load.
    """
    import torch.distributed.checkpoint as dcp  # lazy: seconds of start-up for runs that never use it

    checkpoint = Path(checkpoint)
    if not is_sharded(checkpoint):
        raise CheckpointError(f"{checkpoint}: not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    model = TinyLM(load_config(checkpoint))
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight: load it once
    with _single_process_quiet():
        dcp.load({"model": state}, checkpoint_id=checkpoint / DCP_DIR, no_dist=True)
    out = save_checkpoint(model, out_dir)
    if (checkpoint / "tokenizer.json").is_file():
        shutil.copy(checkpoint / "tokenizer.json", out / "tokenizer.json")
    return out
