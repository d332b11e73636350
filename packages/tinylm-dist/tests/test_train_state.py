"""Training checkpoints: RNG round trips, weights_only loading, atomic writes, clear errors."""

import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from tinylm.core.checkpoint import CheckpointError, load_checkpoint, write_model_files
from tinylm.dist import (
    capture_rng_state,
    load_train_state,
    load_trainer_config,
    restore_rng_state,
    save_training_checkpoint,
)


def draws() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(3),
    )


def test_rng_state_round_trip_replays_every_generator():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian behind
    np.random.randn()
    state = capture_rng_state(torch.device("cpu"))
    first = draws()
    restore_rng_state(state)
    second = draws()
    assert first[:4] == second[:4] and torch.equal(first[4], second[4])


def test_checkpoint_holds_only_weights_only_safe_types_and_loads_back(tmp_path, tiny_model, byte_tokenizer):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    state = {
        "step": 3,
        "best_val_loss": None,
        "optimizer": opt.state_dict(),
        "rng": capture_rng_state(),
        "data": {"train": {"epoch": 0, "index": 8, "seed": 0}, "val": None},
    }
    path = save_training_checkpoint(
        tmp_path / "ckpt", lambda d: write_model_files(model, d), state, {"lr": 0.1}, tokenizer=byte_tokenizer
    )
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "train_state.pt", "trainer.json"]
    loaded = load_train_state(path)  # weights_only=True inside: a non-allowlisted type would fail here
    assert loaded["version"] == 1 and loaded["step"] == 3 and loaded["best_val_loss"] is None
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert torch.load(path / "train_state.pt", weights_only=True)["data"]["train"]["index"] == 8
    assert load_trainer_config(path) == {"lr": 0.1}
    assert torch.equal(load_checkpoint(path).tok_emb.weight, model.tok_emb.weight)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, tiny_model):
    model = tiny_model()
    path = save_training_checkpoint(tmp_path / "last", lambda d: write_model_files(model, d), {"step": 1}, {})

    def broken(directory):
        write_model_files(model, directory)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_training_checkpoint(path, broken, {"step": 2}, {})
    assert load_train_state(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary directory left behind


def test_missing_corrupt_and_foreign_states_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="train_state.pt: missing"):
        load_train_state(tmp_path)
    (tmp_path / "train_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read the training state"):
        load_train_state(tmp_path)
    torch.save({"version": 99}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_train_state(tmp_path)
    with pytest.raises(CheckpointError, match="trainer.json: missing"):
        load_trainer_config(tmp_path)


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"version": 1, "evil": Fraction(1, 3)}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_train_state(tmp_path)
