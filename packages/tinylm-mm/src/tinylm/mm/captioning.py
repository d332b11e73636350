"""The two jobs apps/ compose: train a captioner from plain config dicts, caption one image or audio file.

``run_captioner(data, model, out_dir)`` takes the ``data`` and ``model`` config groups as dicts (what
``conf/data/mm_*.yaml`` and ``conf/model/mm_*.yaml`` hold), so apps/train.py stays a few lines and Hydra
stays out of this package. ``caption_file(checkpoint, path, modality)`` reads a file the way the training
data was read (``MultimodalConfig.preprocess``) and returns the generated caption.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tinylm.mm.data import MM_DATASETS, load_media
from tinylm.mm.model import load_captioner
from tinylm.mm.training import CaptionTrainConfig, build_captioner, train_captioner


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_captioner(
    data: dict[str, Any], model: dict[str, Any], out_dir: str | Path, device: str = "auto"
) -> dict[str, Any]:
    """Build ``MM_DATASETS[data.name](**data.options)``, train per ``data.train``; write into ``out_dir``.

    ``model`` holds ``lm`` (``ModelConfig`` fields) and ``encoders`` (modality -> encoder spec). Prints the
    held-out accuracy next to its baselines and returns the summary (also in ``out_dir/mm_metrics.json``).
    """
    if "lm" not in model or "encoders" not in model:
        raise ValueError(
            f"data={data.get('name')} trains a captioner: choose a multimodal model config "
            "(model=mm_tiny or model=mm_tiny_vq), which holds lm and encoders"
        )
    unknown = sorted(set(data) - {"name", "options", "train"})
    if unknown:
        raise ValueError(f"unknown multimodal data keys {unknown}; allowed: name, options, train")
    train_args = dict(data.get("train") or {})
    train_args.setdefault("device", resolve_device(device))
    cfg = CaptionTrainConfig(**train_args)
    train, test = MM_DATASETS.build(data["name"], **(data.get("options") or {}))
    torch.manual_seed(cfg.seed)  # the initial weights too: a run is reproducible from its config
    captioner, tokenizer = build_captioner(train, model["lm"], model["encoders"])
    n_params = sum(p.numel() for p in captioner.parameters())
    print(f"{data['name']}: {len(train)} train / {len(test)} held-out {train.modality} examples, "
          f"captioner of {n_params / 1e6:.2f}M parameters")  # fmt: skip
    summary = train_captioner(captioner, tokenizer, train, test, cfg, out_dir=out_dir)
    if "vq" in summary:
        vq = summary["vq"]
        codes = f"{vq['codes_used']}/{vq['codebook_size']} codes used"
        print(f"VQ tokenizer: held-out reconstruction MSE {vq['mse']:.4f} (baseline of predicting the mean: "
              f"{vq['mean_baseline_mse']:.4f}), {codes}")  # fmt: skip
    acc, base = summary["test"]["accuracy"], summary["baselines"]
    losses = f"{summary['initial_test_loss']:.3f} -> {summary['final_test_loss']:.3f}"
    print(f"held-out caption accuracy {acc:.1%} (chance {base['chance']:.1%}, "
          f"majority {base['majority']:.1%}); held-out loss {losses}")  # fmt: skip
    for example in summary["test"]["examples"][:4]:
        print(f"  {example['target']!r} -> {example['predicted']!r}")
    print(f"captioner saved to {Path(out_dir) / 'captioner'}")
    return summary


def caption_file(
    checkpoint: str | Path,
    path: str | Path,
    modality: str,
    device: str = "auto",
    temperature: float = 0.0,
    seed: int = 1337,
) -> str:
    """The caption a saved captioner generates for one image (PNG/JPEG/...) or audio (WAV) file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such {modality} file")
    model, tokenizer = load_captioner(checkpoint, resolve_device(device))
    if modality not in model.encoders:
        raise ValueError(f"{checkpoint} captions {sorted(model.encoders)}, not {modality}")
    media = load_media(path, modality, model.config.preprocess)[None]
    device_ = next(model.parameters()).device
    generator = torch.Generator(device=device_).manual_seed(seed)
    ids = model.generate(modality, media.to(device_), 32, temperature=temperature, generator=generator)[0]
    return tokenizer.decode(ids)


def write_examples(directory: str | Path, count: int = 4) -> list[dict[str, str]]:
    """Write held-out digits (PNG) and synthetic clips (WAV) with their captions, for trying apps/infer.py."""
    from tinylm.mm.data import write_png, write_wav

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _, digits = MM_DATASETS.build("mm_digits")
    _, clips = MM_DATASETS.build("mm_audio")
    written = []
    for i in range(count):
        png = write_png(directory / f"digit_{i}.png", digits.media[i])
        wav = write_wav(directory / f"sound_{i}.wav", clips.media[i], clips.preprocess["sample_rate"])
        written += [
            {"file": str(png), "caption": digits.captions[i]},
            {"file": str(wav), "caption": clips.captions[i]},
        ]
    (directory / "captions.json").write_text(json.dumps(written, indent=2))
    return written
