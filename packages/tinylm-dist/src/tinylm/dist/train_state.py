"""Training checkpoints: a model checkpoint plus everything needed to continue the run exactly.

A training checkpoint is a directory written atomically (a crash mid-write leaves the previous one intact):

    model.safetensors, config.json   the model (tinylm.core.checkpoint; loadable with load_checkpoint)
    tokenizer.json                   when the run has a tokenizer
    trainer.json                     the TrainConfig, as JSON
    train_state.pt                   step, optimizer, GradScaler, RNG states, data positions, best val loss

``train_state.pt`` holds only tensors, dicts, lists, strings and numbers, so it loads with
``torch.load(weights_only=True)``: nothing is unpickled. NumPy's and Python's RNG states are converted
into such types here and back.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinylm.core.checkpoint import CheckpointError, write_atomically

TRAIN_STATE_VERSION = 1
TRAINER_CONFIG_NAME = "trainer.json"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices') global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch (CPU; CUDA or MPS when ``device`` is one) RNG states, weights_only-safe."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device is not None and device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``. CUDA states are restored only when the device count matches."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def save_training_checkpoint(
    directory: str | Path,
    write_model: Callable[[Path], None],
    train_state: dict[str, Any],
    config: dict[str, Any],
    tokenizer: Any = None,
    state_name: str = "train_state.pt",
) -> Path:
    """Write a training checkpoint directory atomically; returns its path.

    ``write_model(dir)`` writes the model files (``Strategy.write_model``); ``train_state`` is the dict that
    ``load_train_state`` returns; ``config`` is the ``TrainConfig`` as a dict.
    """

    def fill(tmp: Path) -> None:
        write_model(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        (tmp / TRAINER_CONFIG_NAME).write_text(json.dumps(config, indent=2))
        torch.save({"version": TRAIN_STATE_VERSION, **train_state}, tmp / state_name)

    return write_atomically(directory, fill)


def load_train_state(directory: str | Path, state_name: str = "train_state.pt") -> dict[str, Any]:
    """Read ``train_state.pt`` from a training checkpoint (``weights_only=True``: nothing is unpickled)."""
    file = Path(directory) / state_name
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing; is {directory} a training checkpoint written by the Trainer?"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"{file}: cannot read the training state: {e}") from None
    if not isinstance(state, dict) or state.get("version") != TRAIN_STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{file}: training state version {found!r}, this tinylm-dist reads version {TRAIN_STATE_VERSION}"
        )
    return state


def load_trainer_config(directory: str | Path) -> dict[str, Any]:
    """The ``TrainConfig`` dict saved in a training checkpoint (``TrainConfig.from_dict`` rebuilds it)."""
    file = Path(directory) / TRAINER_CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing; is {directory} a training checkpoint written by the Trainer?"
        )
    return json.loads(file.read_text())
