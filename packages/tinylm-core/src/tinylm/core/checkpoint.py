"""Model checkpoints: ``model.safetensors`` + ``config.json`` in a directory, written atomically.

Nothing is unpickled: weights are safetensors, the config is JSON. Tied weights are stored once. A
missing, truncated or mismatched checkpoint raises ``CheckpointError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinylm.core.config import ModelConfig
from tinylm.core.model.transformer import TinyLM

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def write_atomically(path: str | os.PathLike, fill: Any) -> Path:
    """Create directory ``path`` by calling ``fill(tmp_dir)`` on a temporary sibling, then renaming it.

    A crash mid-write leaves the previous ``path`` (if any) intact. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        fill(tmp)
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def model_state(model: TinyLM) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers, tied weights once, contiguous and on CPU."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_model_files(model: TinyLM, directory: str | os.PathLike) -> None:
    """Write ``model.safetensors`` and ``config.json`` into an existing directory (not atomic by itself)."""
    directory = Path(directory)
    save_file(model_state(model), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))


def save_checkpoint(model: TinyLM, path: str | os.PathLike) -> Path:
    """Save ``model`` to directory ``path`` atomically; returns the path."""
    return write_atomically(path, lambda tmp: write_model_files(model, tmp))


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Read ``config.json`` from a checkpoint directory."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing; a checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    try:
        return ModelConfig.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: not a valid model config: {e}") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> TinyLM:
    """Build a ``TinyLM`` from a checkpoint directory written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    model = TinyLM(load_config(path))
    load_weights(model, path / WEIGHTS_NAME)
    return model.to(device)


def load_weights(model: TinyLM, file: str | os.PathLike) -> None:
    """Load safetensors weights into ``model`` with strict key and shape checks."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: missing weights file")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read weights (truncated or corrupt?): {e}") from None
    expected = model_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{file}: does not match the model config: " + ", ".join(parts))
    model.load_state_dict(state, strict=False)
