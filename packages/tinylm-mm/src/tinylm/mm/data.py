"""Captioning data: built-in tiny sets (8x8 digits, synthesized audio), local image/audio folders, batches.

``mm_digits``: scikit-learn's bundled 8x8 digits (1797 images, no download) -> the digit's name ("seven").
``mm_audio``: seeded synthetic clips (a tone, a major chord, a rising or falling octave chirp on one of five
notes, random level, phase, detune and noise) -> their description ("rising chirp A4"): 20 classes.
``imagefolder`` / ``audiofolder``: the Hugging Face ``datasets`` folder layouts, read in plain Python
(PIL for images, the stdlib ``wave`` module for 16-bit PCM WAV): either class sub-folders (caption = the
folder name) or a ``metadata.jsonl`` / ``metadata.csv`` with ``file_name`` and ``text`` (or ``caption``).
Every builder returns ``(train, test)`` ``CaptionData`` split by a seeded permutation.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinylm.core.registry import Registry
from tinylm.mm.model import CaptionBatch

MM_DATASETS: Registry = Registry("multimodal dataset")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOTES = {"A3": 220.0, "E4": 329.63, "A4": 440.0, "E5": 659.26, "A5": 880.0}
SOUND_KINDS = ("tone", "major chord", "rising chirp", "falling chirp")
IMAGE_SUFFIXES, AUDIO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif"), (".wav",)


@dataclass
class CaptionData:
    """Media ``(N, ...)`` of one modality with one caption each; ``preprocess`` says how files are read."""

    modality: str
    media: torch.Tensor
    captions: list[str]
    preprocess: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, index: torch.Tensor | list[int]) -> CaptionData:
        index = torch.as_tensor(index, dtype=torch.long)
        return CaptionData(self.modality, self.media[index], [self.captions[i] for i in index.tolist()],
                           self.preprocess)  # fmt: skip


def split(data: CaptionData, test_fraction: float, seed: int) -> tuple[CaptionData, CaptionData]:
    """Seeded random ``(train, test)`` split; at least one example on each side."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(data) < 2:
        raise ValueError(f"need at least 2 examples to split, got {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(len(data) * test_fraction)), len(data) - 1)
    return data.subset(order[n_test:]), data.subset(order[:n_test])


@functools.cache
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

    bunch = load_digits()
    return bunch.images, bunch.target


@MM_DATASETS.register("mm_digits")
def digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[CaptionData, CaptionData]:
    """scikit-learn's 8x8 digits scaled to [0, 1], captioned with the digit's English name."""
    pixels, labels = _sklearn_digits()
    images = torch.tensor(pixels, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    captions = [DIGIT_NAMES[int(t)] for t in labels]
    pre = {"image_size": 8, "channels": 1}
    return split(CaptionData("image", images, captions, pre), test_fraction, seed)


def synth_clip(
    kind: str, note: str, sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """One float32 clip in [-1, 1] of a ``SOUND_KINDS`` sound rooted on ``NOTES[note]``."""
    if kind not in SOUND_KINDS or note not in NOTES:
        raise ValueError(f"unknown sound {kind!r} {note!r}; kinds: {SOUND_KINDS}, notes: {sorted(NOTES)}")
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    f0 = NOTES[note] * (1 + rng.uniform(-0.01, 0.01))  # slight detune

    def partial(freq_ratio: float) -> np.ndarray:
        return np.sin(2 * np.pi * f0 * freq_ratio * t + rng.uniform(0, 2 * np.pi))

    if kind == "tone":
        x = partial(1.0)
    elif kind == "major chord":
        x = sum(partial(2 ** (s / 12)) for s in (0, 4, 7)) / 3
    else:  # exponential chirp over one octave: f(t) = f0 * 2**(+-t / seconds)
        sign = 1.0 if kind == "rising chirp" else -1.0
        phase = 2 * np.pi * f0 * seconds / (sign * math.log(2)) * (2 ** (sign * t / seconds) - 1)
        x = np.sin(phase + rng.uniform(0, 2 * np.pi))
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)  # 20 ms fade in/out
    x = rng.uniform(0.3, 0.9) * fade * x + rng.normal(0, rng.uniform(0.005, 0.05), n)
    return np.clip(x, -1, 1).astype(np.float32)


@MM_DATASETS.register("mm_audio")
def synthetic_audio(
    num_clips: int = 1200,
    sample_rate: int = 8000,
    seconds: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[CaptionData, CaptionData]:
    """Seeded synthetic clips, classes drawn uniformly, captioned ``"<kind> <note>"``."""
    rng = np.random.default_rng(seed)
    clips, captions = [], []
    for _ in range(num_clips):
        kind, note = SOUND_KINDS[rng.integers(len(SOUND_KINDS))], sorted(NOTES)[rng.integers(len(NOTES))]
        clips.append(synth_clip(kind, note, sample_rate, seconds, rng))
        captions.append(f"{kind} {note}")
    media = torch.from_numpy(np.stack(clips))  # (N, samples)
    pre = {"sample_rate": sample_rate, "num_samples": media.size(1)}
    return split(CaptionData("audio", media, captions, pre), test_fraction, seed + 1)


def load_image(path: str | Path, image_size: int, channels: int = 1) -> torch.Tensor:
    """An image file as ``(channels, image_size, image_size)`` floats in [0, 1] (resized, L or RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).reshape(image_size, image_size, channels).permute(2, 0, 1).contiguous()


def load_wav(path: str | Path, sample_rate: int, num_samples: int | None = None) -> torch.Tensor:
    """A 8/16/32-bit PCM WAV as mono floats in [-1, 1], linearly resampled, cut or zero-padded."""
    with wave.open(str(path), "rb") as w:
        width, rate, ch = w.getsampwidth(), w.getframerate(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width not in (1, 2, 4):
        raise ValueError(f"{path}: {8 * width}-bit WAV; only 8, 16 and 32-bit PCM are read")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float64)
    x = (x - 128) / 128 if width == 1 else x / float(2 ** (8 * width - 1))
    x = x.reshape(-1, ch).mean(1)
    if rate != sample_rate and len(x) > 1:
        n_out = max(1, round(len(x) * sample_rate / rate))
        x = np.interp(np.arange(n_out) * (rate / sample_rate), np.arange(len(x)), x)
    if num_samples is not None:
        x = np.pad(x[:num_samples], (0, max(0, num_samples - len(x))))
    return torch.from_numpy(x.astype(np.float32))


def write_wav(path: str | Path, audio: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write mono floats in [-1, 1] as a 16-bit PCM WAV."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float64), -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return Path(path)


def write_png(path: str | Path, image: torch.Tensor) -> Path:
    """Write a ``(1, H, W)`` or ``(3, H, W)`` image in [0, 1] as a PNG."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
    return Path(path)


def folder_items(root: Path, suffixes: tuple[str, ...], builder: str | None = None) -> list[tuple[Path, str]]:
    """``(file, caption)`` pairs from a metadata file, else from class sub-folders.

    With ``datasets`` installed and a ``builder`` (``imagefolder``) the folder is read by
    ``datasets.load_dataset(builder, data_dir=root)`` (files listed, not decoded: decoding is ours);
    without it, by the same layout rules in plain Python.
    """
    items = _plain_items(root, suffixes)  # also the clear errors for a missing or empty folder
    if builder is not None and importlib.util.find_spec("datasets") is not None:
        return _datasets_items(root, builder) or items  # one class folder: datasets drops the label
    return items


def _plain_items(root: Path, suffixes: tuple[str, ...]) -> list[tuple[Path, str]]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    for meta in (root / "metadata.jsonl", root / "metadata.csv"):
        if meta.is_file():
            if meta.suffix == ".jsonl":
                rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
            else:
                rows = list(csv.DictReader(meta.open(newline="")))
            key = next((k for k in ("text", "caption", "label") if rows and k in rows[0]), None)
            if key is None or "file_name" not in rows[0]:
                raise ValueError(f"{meta}: needs a file_name column and a text (or caption/label) column")
            return [(meta.parent / r["file_name"], str(r[key])) for r in rows]
    items = [
        (f, f.parent.name)
        for f in sorted(root.rglob("*"))
        if f.suffix.lower() in suffixes and f.parent != root
    ]
    if not items:
        raise ValueError(
            f"{root}: no metadata.jsonl/metadata.csv and no class sub-folders of {'/'.join(suffixes)} files"
        )
    return items


def _datasets_items(root: Path, builder: str) -> list[tuple[Path, str]] | None:
    import datasets

    column = "image" if builder == "imagefolder" else "audio"
    ds = datasets.load_dataset(builder, data_dir=str(root), split="train")
    ds = ds.cast_column(column, (datasets.Image if column == "image" else datasets.Audio)(decode=False))
    key = next((k for k in ("text", "caption", "label") if k in ds.column_names), None)
    if key is None:
        return None
    captions = ds[key]
    if isinstance(ds.features[key], datasets.ClassLabel):
        captions = [ds.features[key].names[i] for i in captions]
    return [(Path(m["path"]), str(c)) for m, c in zip(ds[column], captions, strict=True)]


@MM_DATASETS.register("imagefolder")
def image_folder(
    path: str, image_size: int = 32, channels: int = 1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[CaptionData, CaptionData]:
    """A local image folder (``datasets`` imagefolder layout)."""
    items = folder_items(Path(path), IMAGE_SUFFIXES, "imagefolder")
    media = torch.stack([load_image(f, image_size, channels) for f, _ in items])
    pre = {"image_size": image_size, "channels": channels}
    return split(CaptionData("image", media, [c for _, c in items], pre), test_fraction, seed)


@MM_DATASETS.register("audiofolder")
def audio_folder(
    path: str, sample_rate: int = 8000, seconds: float = 1.0, test_fraction: float = 0.2, seed: int = 0
) -> tuple[CaptionData, CaptionData]:
    """A local folder of WAV files (``datasets`` audiofolder layout), cut or padded to ``seconds``."""
    # plain reader only: datasets' audiofolder needs the torchcodec package even to list the files
    items = folder_items(Path(path), AUDIO_SUFFIXES)
    n = int(sample_rate * seconds)
    media = torch.stack([load_wav(f, sample_rate, n) for f, _ in items])
    pre = {"sample_rate": sample_rate, "num_samples": n}
    return split(CaptionData("audio", media, [c for _, c in items], pre), test_fraction, seed)


def load_media(path: str | Path, modality: str, preprocess: dict[str, Any]) -> torch.Tensor:
    """One file as the model's input, read the way its training data was (``preprocess``)."""
    if modality == "image":
        return load_image(path, preprocess["image_size"], preprocess.get("channels", 1))
    return load_wav(path, preprocess["sample_rate"], preprocess.get("num_samples"))


def collate(data: CaptionData, index: list[int], tokenizer: Any) -> CaptionBatch:
    """Examples ``index`` as a ``CaptionBatch``: captions + EOS right-padded with the pad id."""
    ids = [tokenizer.encode(data.captions[i], add_eos=True) for i in index]
    width = max(len(t) for t in ids)
    text = torch.full((len(ids), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, t in enumerate(ids):
        text[row, : len(t)], mask[row, : len(t)] = torch.tensor(t), 1
    return CaptionBatch(data.modality, data.media[index], text, mask)


def batches(data: CaptionData, batch_size: int, tokenizer: Any, seed: int = 0) -> Iterator[CaptionBatch]:
    """Endless shuffled batches (a new seeded permutation each epoch)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield collate(data, order[start : start + batch_size], tokenizer)
