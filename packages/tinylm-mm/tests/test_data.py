"""Captioning data: built-in digits and synthetic audio, image/audio folders, WAV/PNG I/O, batching."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from tinylm.core.data import CharTokenizer
from tinylm.core.registry import UnknownNameError
from tinylm.mm import MM_DATASETS, batches, collate, load_media, write_png, write_wav
from tinylm.mm.data import NOTES, SOUND_KINDS, load_wav, synth_clip


def test_digits_split_and_captions():
    train, test = MM_DATASETS.build("mm_digits", test_fraction=0.2, seed=3)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.media.shape[1:] == (1, 8, 8) and 0 <= train.media.min() and train.media.max() <= 1
    assert set(train.captions) == {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }
    again, _ = MM_DATASETS.build("mm_digits", test_fraction=0.2, seed=3)
    assert torch.equal(again.media, train.media) and again.captions == train.captions


def test_synthetic_audio_is_seeded_and_described():
    train, test = MM_DATASETS.build("mm_audio", num_clips=40, seed=1)
    assert train.media.shape == (32, 4000) and len(test) == 8
    assert all(c.rsplit(" ", 1)[0] in SOUND_KINDS and c.rsplit(" ", 1)[1] in NOTES for c in train.captions)
    again, _ = MM_DATASETS.build("mm_audio", num_clips=40, seed=1)
    assert torch.equal(again.media, train.media)


@pytest.mark.parametrize("kind", SOUND_KINDS)
def test_synth_clip_has_energy_at_the_described_pitch(kind):
    sr = 8000
    x = synth_clip(kind, "A4", sr, 0.5, np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    peak = freqs[spectrum.argmax()]
    if kind == "tone":
        assert abs(peak - 440) < 10
    elif kind == "major chord":  # root, major third, fifth
        top3 = np.sort(freqs[np.argsort(spectrum)[-40:]])
        for f in (440.0, 440 * 2 ** (4 / 12), 440 * 2 ** (7 / 12)):
            assert np.min(np.abs(top3 - f)) < 10
    else:
        assert 400 < peak < 900 if kind == "rising chirp" else 200 < peak < 460
        half = len(x) // 2
        first, second = (freqs[np.abs(np.fft.rfft(p)).argmax()] for p in (x[:half], x[half:]))
        assert (second > first) == (kind == "rising chirp")


def test_image_folder_layouts(tmp_path):
    for label, value in (("dark", 0.1), ("bright", 0.9)):
        (tmp_path / "classes" / label).mkdir(parents=True)
        for i in range(3):
            write_png(tmp_path / "classes" / label / f"{i}.png", torch.full((1, 16, 16), value))
    train, test = MM_DATASETS.build("imagefolder", path=str(tmp_path / "classes"), image_size=8)
    assert len(train) + len(test) == 6 and train.media.shape[1:] == (1, 8, 8)
    for img, caption in zip(train.media, train.captions, strict=True):
        assert abs(float(img.mean()) - (0.1 if caption == "dark" else 0.9)) < 0.01
    meta = tmp_path / "meta"
    meta.mkdir()
    rows = []
    for i in range(4):
        write_png(meta / f"{i}.png", torch.rand(3, 10, 10))
        rows.append({"file_name": f"{i}.png", "text": f"picture {i}"})
    (meta / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    train, test = MM_DATASETS.build(
        "imagefolder", path=str(meta), image_size=10, channels=3, test_fraction=0.25
    )
    assert sorted(train.captions + test.captions) == [f"picture {i}" for i in range(4)]
    assert train.media.shape[1:] == (3, 10, 10)


def test_audio_folder_and_wav_round_trip(tmp_path):
    sr = 16000
    tone = np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr) * 0.5
    (tmp_path / "a").mkdir()
    write_wav(tmp_path / "a" / "x.wav", tone, sr)
    write_wav(tmp_path / "a" / "y.wav", tone, sr)
    back = load_wav(tmp_path / "a" / "x.wav", sr)
    np.testing.assert_allclose(back.numpy(), tone, atol=1e-4)
    resampled = load_wav(tmp_path / "a" / "x.wav", 8000, num_samples=5000)
    assert resampled.shape == (5000,) and float(resampled[4000:].abs().max()) == 0.0  # padded after 0.5 s
    np.testing.assert_allclose(resampled[:3990].numpy(), tone[::2][:3990], atol=2e-3)
    train, test = MM_DATASETS.build("audiofolder", path=str(tmp_path), sample_rate=8000, seconds=0.25)
    assert train.media.shape == (1, 2000) and train.captions == ["a"] and test.captions == ["a"]
    assert load_media(tmp_path / "a" / "x.wav", "audio", train.preprocess).shape == (2000,)


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        MM_DATASETS.build("imagefolder", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no metadata"):
        MM_DATASETS.build("audiofolder", path=str(tmp_path))
    with pytest.raises(UnknownNameError, match="mm_digits"):
        MM_DATASETS.build("nope")


def test_collate_pads_with_eos_and_mask():
    train, _ = MM_DATASETS.build("mm_digits")
    tok = CharTokenizer.build(train.captions)
    batch = collate(train, [0, 1, 2], tok)
    lengths = [len(train.captions[i]) + 1 for i in range(3)]
    assert batch.text.shape == (3, max(lengths)) and batch.text_mask.sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert (
            batch.text[row, n - 1] == tok.eos_id
            and tok.decode(batch.text[row, : n - 1]) == train.captions[row]
        )
    stream = batches(train, 16, tok, seed=0)
    first = next(stream)
    assert first.media.shape == (16, 1, 8, 8) and first.modality == "image"


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs the datasets package")
def test_folders_read_through_datasets_match_the_plain_reader(tmp_path):
    from tinylm.mm.data import IMAGE_SUFFIXES, _datasets_items, _plain_items

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            write_png(tmp_path / label / f"{i}.png", torch.rand(1, 4, 4))
    via_datasets = _datasets_items(tmp_path, "imagefolder")
    assert via_datasets is not None and sorted(via_datasets) == sorted(_plain_items(tmp_path, IMAGE_SUFFIXES))
