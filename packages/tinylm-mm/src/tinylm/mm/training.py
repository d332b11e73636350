"""Train and evaluate a captioner: build the model for a data set, fit (VQ tokenizer first), measure accuracy.

The text Trainer (tinylm-dist) consumes ``(x, y)`` token batches; a caption batch carries pixels or samples,
so captioners train with this short loop instead: AdamW, linear warm-up + cosine decay, gradient clipping,
periodic held-out loss, then exact-match caption accuracy against two baselines (chance = one over the
number of distinct captions, majority = always the most common training caption).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tinylm.core.data import CharTokenizer
from tinylm.mm.data import CaptionData, batches, collate
from tinylm.mm.model import MultimodalConfig, MultimodalLM, save_captioner


@dataclass
class CaptionTrainConfig:
    """Hyperparameters of ``train_captioner``."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 200
    vq_steps: int = 400  # discrete encoders: VQ-VAE training steps before the LM
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")


def build_captioner(
    train: CaptionData, lm: dict[str, Any], encoders: dict[str, dict]
) -> tuple[MultimodalLM, Any]:
    """A char tokenizer over the training captions and a ``MultimodalLM`` reading ``train``'s modality.

    ``encoders`` maps modalities to encoder specs; only the data's modality is used. Image geometry and the
    audio sample rate come from the data (``train.preprocess``), so the model yaml stays data-agnostic.
    """
    if train.modality not in encoders:
        raise ValueError(f"the model config has no encoder for {train.modality!r} (has {sorted(encoders)})")
    spec = dict(encoders[train.modality])
    pre = train.preprocess
    if spec.get("name") == "patch":
        spec.update(image_size=pre["image_size"], channels=pre.get("channels", 1))
    elif spec.get("name") == "vq_image":
        spec.update(in_channels=pre.get("channels", 1))
    elif train.modality == "audio":
        spec["mel"] = {**spec.get("mel", {}), "sample_rate": pre["sample_rate"]}
    tokenizer = CharTokenizer.build(train.captions)
    config = MultimodalConfig(
        lm=dict(lm), text_vocab_size=tokenizer.vocab_size, encoders={train.modality: spec},
        bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, preprocess=dict(pre),
    )  # fmt: skip
    return MultimodalLM(config), tokenizer


@torch.no_grad()
def caption_accuracy(model: MultimodalLM, tokenizer: Any, data: CaptionData, batch_size: int = 256) -> dict:
    """Greedy captions for ``data``: exact-match accuracy and a few examples."""
    device = next(model.parameters()).device
    max_len = max(len(tokenizer.encode(c)) for c in data.captions) + 4
    predictions = []
    for start in range(0, len(data), batch_size):
        media = data.media[start : start + batch_size].to(device)
        predictions += [tokenizer.decode(ids) for ids in model.generate(data.modality, media, max_len)]
    correct = sum(p == c for p, c in zip(predictions, data.captions, strict=True))
    examples = [
        {"target": c, "predicted": p} for p, c in zip(predictions[:8], data.captions[:8], strict=True)
    ]
    return {"accuracy": correct / len(data), "n": len(data), "examples": examples}


def baselines(train: CaptionData, test: CaptionData) -> dict[str, float]:
    """Chance (1 / distinct training captions) and majority-caption accuracy on ``test``."""
    counts = Counter(train.captions)
    majority = counts.most_common(1)[0][0]
    return {"chance": 1 / len(counts), "majority": sum(c == majority for c in test.captions) / len(test)}


@torch.no_grad()
def held_out_loss(model: MultimodalLM, tokenizer: Any, data: CaptionData, device: torch.device) -> float:
    """Mean loss per text target over ``data``."""
    was_training = model.training
    model.eval()
    total, targets = 0.0, 0
    for start in range(0, len(data), 256):
        batch = collate(data, list(range(start, min(start + 256, len(data)))), tokenizer).to(device)
        total += float(model(batch, loss_reduction="sum").loss)
        targets += int(batch.text_mask.sum())
    model.train(was_training)
    return total / targets


def lr_at(step: int, cfg: CaptionTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def train_captioner(
    model: MultimodalLM,
    tokenizer: Any,
    train: CaptionData,
    test: CaptionData,
    cfg: CaptionTrainConfig,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Fit ``model`` on ``train`` and evaluate on ``test``; with ``out_dir`` write the checkpoint + metrics.

    Returns a summary: losses, held-out loss, VQ reconstruction report (discrete encoders), accuracy and
    baselines.
    """
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    summary: dict[str, Any] = {"config": asdict(cfg), "modality": train.modality}
    encoder = model.encoder(train.modality)
    if encoder.discrete:
        summary["vq"] = encoder.fit(train.media, test.media, cfg.vq_steps, seed=cfg.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    summary["initial_test_loss"] = held_out_loss(model, tokenizer, test, device)
    stream = batches(train, min(cfg.batch_size, len(train)), tokenizer, seed=cfg.seed)
    losses, evals = [], [{"step": 0, "test_loss": summary["initial_test_loss"]}]
    bar = tqdm(range(cfg.steps), desc=f"captioner ({train.modality})", disable=not cfg.progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(next(stream).to(device)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
            evals.append({"step": step + 1, "test_loss": held_out_loss(model, tokenizer, test, device)})
            bar.set_postfix(loss=f"{losses[-1]:.3f}", test=f"{evals[-1]['test_loss']:.3f}")
    summary.update(train_losses=losses, evals=evals, final_test_loss=evals[-1]["test_loss"])
    summary["test"] = caption_accuracy(model, tokenizer, test)
    summary["baselines"] = baselines(train, test)
    if out_dir is not None:
        out = Path(out_dir)
        save_captioner(model, tokenizer, out / "captioner")
        (out / "mm_metrics.json").write_text(json.dumps(summary, indent=2))
        plot_losses(losses, evals, out / "loss.png")
    return summary


def plot_losses(losses: list[float], evals: list[dict], path: Path) -> Path | None:
    """Training and held-out loss curves as a PNG (skipped when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), losses, label="train", alpha=0.7)
    ax.plot([e["step"] for e in evals], [e["test_loss"] for e in evals], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="loss per text token", yscale="log", title="captioner training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
