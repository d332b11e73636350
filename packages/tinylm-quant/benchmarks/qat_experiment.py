"""Does QAT recover what post-training quantization loses? Fine-tune a trained model both ways and compare.

    uv run python packages/tinylm-quant/benchmarks/qat_experiment.py --steps 200 --out outputs/qat

A composition script (like apps/): it uses tinylm-dist's Trainer, which tinylm-quant itself never imports.
From the same trained checkpoint (default: the shipped shakespeare model) and for each QAT scheme:

- control: ``steps`` of ordinary fine-tuning, then post-training quantization (PTQ) with the target scheme;
- QAT: the same ``steps`` (same data order, seed and schedule) with ``prepare_qat``, then ``convert_qat``.

Both start from the same weights and see the same batches, so the only difference is the fake
quantization during training. All rows are scored on the same validation tokens with
``tinylm.quant.eval`` (the float control's perplexity is the reference), printed as a markdown table and
written as JSON + PNG to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from tinylm.core import (
    BatchIterator,
    DataConfig,
    PackedBlocks,
    load_checkpoint,
    load_tokenizer,
    prepare_tokens,
)
from tinylm.dist import TrainConfig, Trainer
from tinylm.quant import QAT_SCHEMES, convert_qat, prepare_qat, quantize
from tinylm.quant.eval import add_deltas, measure_model, to_markdown

# (label, QAT scheme, options): int4 with one scale per row, and an aggressive 2-bit case
EXPERIMENTS = {
    "int4_per_row": ("qat_int4", {"group_size": None}),
    "int4_g32": ("qat_int4", {}),
    "int2_g32": ("qat_int4", {"bits": 2}),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="models/shakespeare")
    p.add_argument("--data", default="tinyshakespeare")
    p.add_argument("--data-path", default="../shared/data/tinyshakespeare.txt")
    p.add_argument("--val-split", default="end")
    p.add_argument("--sample-by", default="document")
    p.add_argument("--experiments", default="int4_per_row,int2_g32", help=", ".join(EXPERIMENTS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-tokens", type=int, default=50_000, help="validation tokens scored per row")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/qat_experiment")
    return p.parse_args()


def fine_tune(model: torch.nn.Module, splits, args: argparse.Namespace, out: Path) -> torch.nn.Module:
    cfg = TrainConfig(
        max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10, warmup_steps=10,
        eval_interval=args.steps, eval_batches=4, log_interval=10, device=args.device, seed=1337,
    )  # fmt: skip
    train = BatchIterator(PackedBlocks(splits.train, args.block_size), args.batch_size, seed=cfg.seed)
    val = BatchIterator(PackedBlocks(splits.val, args.block_size), args.batch_size, seed=cfg.seed + 1)
    Trainer(model, cfg, train, val, out_dir=out).fit()
    return model.eval()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = DataConfig(
        name=args.data, path=args.data_path, val_split=args.val_split, sample_by=args.sample_by
    )
    splits = prepare_tokens(data_cfg, load_tokenizer(args.ckpt))
    base = load_checkpoint(args.ckpt, device=args.device)
    opts = {"batch_size": 16, "max_tokens": args.eval_tokens, "new_tokens": 1}
    score = lambda name, m: measure_model(name, m, splits.val, args.block_size, opts)  # noqa: E731
    control = fine_tune(copy.deepcopy(base), splits, args, out / "control")
    rows = [score("float, fine-tuned (reference)", control)]
    for label in [e for e in args.experiments.split(",") if e]:
        scheme, options = EXPERIMENTS[label]
        target = QAT_SCHEMES[scheme]
        rows.append(score(f"{label} PTQ ({target})", quantize(copy.deepcopy(control), target, **options)))
        qat = fine_tune(prepare_qat(copy.deepcopy(base), scheme, **options), splits, args, out / label)
        rows.append(score(f"{label} QAT ({scheme} -> {target})", convert_qat(qat)))
    rows = add_deltas(rows)
    table = to_markdown(rows)
    print(table)
    (out / "qat.md").write_text(table + "\n")
    (out / "qat.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    try:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh([r["scheme"] for r in rows][::-1], [r["perplexity_delta_pct"] for r in rows][::-1])
        ax.set_xlabel("perplexity change vs float (%)")
        fig.tight_layout()
        fig.savefig(out / "qat.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
