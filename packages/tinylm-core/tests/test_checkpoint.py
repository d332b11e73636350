"""Checkpoint round trip, atomic writes, and a clear error for each broken checkpoint."""

import json

import pytest
import torch

from tinylm.core import CheckpointError, load_checkpoint, save_checkpoint
from tinylm.core.checkpoint import write_atomically


@pytest.mark.parametrize("overrides", [dict(architecture="gpt"), dict(tie_embeddings=False, n_kv_heads=1)])
def test_round_trip(tmp_path, ids, overrides, tiny_model):
    model = tiny_model(**overrides)
    path = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(path).eval()
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_overwrite_is_atomic(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model(), tmp_path / "ckpt")
    before = (path / "model.safetensors").read_bytes()

    def crash(tmp):
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, crash)
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind
    save_checkpoint(tiny_model(seed=1), path)
    assert (path / "model.safetensors").read_bytes() != before


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


def test_missing_files(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model(), tmp_path / "c")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing weights file"):
        load_checkpoint(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json: missing"):
        load_checkpoint(path)


def test_truncated_weights(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model(), tmp_path / "c")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: cannot read weights \(truncated or corrupt"
    ):
        load_checkpoint(path)


def test_corrupt_config(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model(), tmp_path / "c")
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not a valid model config"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"dim": 64, "heads": 4}))
    with pytest.raises(CheckpointError, match=r"unknown model config keys \['heads'\]"):
        load_checkpoint(path)


def test_mismatched_weights(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model(), tmp_path / "c")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "hidden_dim": 96}))
    with pytest.raises(CheckpointError, match=r"does not match the model config: shape mismatch .*up_proj"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensors \['layers.2"):
        load_checkpoint(path)
