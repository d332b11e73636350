"""Short end-to-end captioner training: the held-out text loss falls, checkpoints and metrics are written."""

import json

import pytest
import torch

from tinylm.mm import MM_DATASETS, CaptionTrainConfig, build_captioner, load_captioner, train_captioner
from tinylm.mm.training import baselines, lr_at

LM = dict(dim=32, n_layers=1, n_heads=2, max_seq_len=64)
ENCODERS = {
    "image": {"name": "patch", "patch_size": 4, "width": 32, "n_layers": 1, "n_heads": 2},
    "audio": {"name": "whisper_conv", "width": 32, "n_layers": 0, "mel": {"n_mels": 24}},
}


def small(data, n):
    return data.subset(list(range(n)))


@pytest.mark.parametrize("name", ["mm_digits", "mm_audio"])
def test_short_training_lowers_held_out_loss(name, tmp_path):
    torch.manual_seed(0)
    options = {"num_clips": 300} if name == "mm_audio" else {}
    train, test = MM_DATASETS.build(name, **options)
    train, test = small(train, 240), small(test, 60)
    model, tok = build_captioner(train, LM, ENCODERS)
    cfg = CaptionTrainConfig(
        steps=60, batch_size=16, lr=5e-3, warmup_steps=5, eval_interval=30, progress=False
    )
    summary = train_captioner(model, tok, train, test, cfg, out_dir=tmp_path)
    assert summary["final_test_loss"] < 0.6 * summary["initial_test_loss"]
    assert summary["train_losses"][-1] < summary["train_losses"][0]
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and summary["test"]["n"] == 60
    saved = json.loads((tmp_path / "mm_metrics.json").read_text())
    assert saved["final_test_loss"] == summary["final_test_loss"]
    loaded, _ = load_captioner(tmp_path / "captioner")
    media = test.media[:4]
    assert loaded.generate(test.modality, media) == model.generate(test.modality, media)


def test_discrete_image_codes_train_the_tokenizer_first(tmp_path):
    torch.manual_seed(0)
    train, test = MM_DATASETS.build("mm_digits")
    train, test = small(train, 240), small(test, 60)
    encoders = {"image": {"name": "vq_image", "hidden": 16, "code_dim": 8, "codebook_size": 16}}
    model, tok = build_captioner(train, LM, encoders)
    cfg = CaptionTrainConfig(steps=40, batch_size=16, lr=5e-3, warmup_steps=5, vq_steps=40, progress=False)
    summary = train_captioner(model, tok, train, test, cfg)
    assert {"mse", "mean_baseline_mse", "codes_used"} <= set(summary["vq"])
    assert summary["final_test_loss"] < 0.6 * summary["initial_test_loss"]
    assert not any(p.requires_grad for p in model.encoders["image"].parameters())


def test_baselines_and_schedule():
    train, test = MM_DATASETS.build("mm_digits")
    b = baselines(train, test)
    assert b["chance"] == 0.1 and 0.05 < b["majority"] < 0.15
    cfg = CaptionTrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="positive"):
        CaptionTrainConfig(steps=0)


def test_build_captioner_needs_an_encoder_for_the_data():
    train, _ = MM_DATASETS.build("mm_digits")
    with pytest.raises(ValueError, match="no encoder for 'image'"):
        build_captioner(train, LM, {"audio": ENCODERS["audio"]})
