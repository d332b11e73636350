"""Quality, size and speed of quantization schemes on one checkpoint, against the unquantized model.

``python -m tinylm.quant.eval --ckpt models/shakespeare --data tinyshakespeare --val-split end \
    --data-path ../shared/data/tinyshakespeare.txt --schemes int8_weight_only,intx4_weight_only``

For the float model and each scheme (on a fresh copy of the same weights): validation loss and perplexity
over non-overlapping ``block_size`` windows of the validation tokens (the same split the model was trained
with: pass the training run's data options), bytes of the linear weights (and their ratio to the same
weights in bfloat16) and of the whole model, greedy decode tokens/s at batch 1 with the standard KV cache,
and each one's change against the float model.
``--extra NAME=DIR`` adds rows for other checkpoints of the same model (a ``save_quantized`` directory,
e.g. a QAT-converted model, or a float checkpoint) measured on the same tokens. Prints a markdown table,
and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tinylm.core import CheckpointError, DataConfig, load_checkpoint, load_tokenizer, prepare_tokens
from tinylm.core.bench.timing import measure
from tinylm.core.cache import StandardCache
from tinylm.core.generate import stream
from tinylm.core.registry import QUANT_SCHEMES
from tinylm.quant.api import model_bytes, quantize
from tinylm.quant.schemes import SCHEMES, SchemeUnavailableError
from tinylm.quant.serialization import is_quantized_checkpoint, load_quantized

MIB = 2**20


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokens: np.ndarray | torch.Tensor,
    block_size: int,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = False,
) -> tuple[float, float]:
    """(mean next-token cross-entropy, its exp) over non-overlapping ``block_size`` windows of ``tokens``."""
    device = next(model.parameters()).device
    data = torch.from_numpy(np.array(tokens[: max_tokens + 1] if max_tokens else tokens, dtype=np.int64))
    n_blocks = (len(data) - 1) // block_size
    if n_blocks < 1:
        raise ValueError(f"{len(data)} validation tokens are fewer than one block of {block_size} + 1")
    x = data[: n_blocks * block_size].view(n_blocks, block_size)
    y = data[1 : n_blocks * block_size + 1].view(n_blocks, block_size)
    total, count = 0.0, 0
    for i in tqdm(range(0, n_blocks, batch_size), desc="perplexity", disable=not progress, leave=False):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        loss = model(xb, labels=yb, loss_reduction="sum").loss
        total, count = total + float(loss), count + yb.numel()
    mean = total / count
    return mean, math.exp(mean)


def decode_tokens_per_s(
    model: nn.Module, prompt_len: int = 16, new_tokens: int = 64, warmup: int = 1, repeats: int = 3
) -> float:
    """Greedy decode tokens/s at batch 1 with a standard KV cache: (n tokens - first token) / time."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)

    def run(n: int) -> Any:
        def go() -> None:
            for _ in stream(model, ids, n, temperature=0.0, cache=StandardCache()):
                pass

        return go

    full = measure(run(new_tokens), warmup, repeats, device).median
    first = measure(run(1), warmup, repeats, device).median
    return (new_tokens - 1) / max((full - first) * 1e-3, 1e-9)


def measure_model(
    name: str, model: nn.Module, tokens: Any, block_size: int, opts: dict[str, Any]
) -> dict[str, Any]:
    """One table row: loss, perplexity, bytes and decode speed of ``model``."""
    model.eval()
    loss, ppl = perplexity(model, tokens, block_size, opts["batch_size"], opts["max_tokens"], True)
    speed = decode_tokens_per_s(model, new_tokens=opts["new_tokens"]) if opts["new_tokens"] > 1 else None
    return {
        "scheme": name,
        "val_loss": loss,
        "perplexity": ppl,
        "linear_weights_mib": model_bytes(model, linear_only=True) / MIB,
        "linear_params": sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)),
        "model_mib": model_bytes(model) / MIB,
        "decode_tokens_per_s": speed,
    }


def add_deltas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Perplexity change (%) and speed ratio against ``rows[0]``; linear bytes against bf16 weights."""
    base = rows[0]
    bf16_mib = 2 * base["linear_params"] / MIB
    for row in rows:
        row["perplexity_delta_pct"] = 100.0 * (row["perplexity"] / base["perplexity"] - 1.0)
        row["linear_bytes_vs_bf16"] = row["linear_weights_mib"] / bf16_mib
        if row["decode_tokens_per_s"] and base["decode_tokens_per_s"]:
            row["speed_ratio"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    return rows


def evaluate(
    ckpt: str | Path,
    schemes: list[str],
    tokens: Any,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    block_size: int | None = None,
    extra: dict[str, str] | None = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    new_tokens: int = 64,
) -> list[dict[str, Any]]:
    """Rows for the float model (first), each scheme, and each ``extra`` checkpoint; see the module doc."""
    for name in schemes:
        QUANT_SCHEMES.get(name)  # unknown names fail before any work
    base = load_checkpoint(ckpt, device=device).to(dtype).eval()
    block = block_size or base.config.max_seq_len or 256
    opts = {"batch_size": batch_size, "max_tokens": max_tokens, "new_tokens": new_tokens}
    rows = [measure_model(f"float ({str(dtype).removeprefix('torch.')})", base, tokens, block, opts)]
    for name in tqdm(schemes, desc="schemes"):
        try:
            model = quantize(copy.deepcopy(base), name)
        except SchemeUnavailableError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        rows.append(measure_model(name, model, tokens, block, opts))
    for name, path in (extra or {}).items():
        if is_quantized_checkpoint(path):
            model = load_quantized(path, device=device)
        else:
            model = load_checkpoint(path, device=device).to(dtype)
        rows.append(measure_model(name, model, tokens, block, opts))
    return add_deltas(rows)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| scheme | val loss | perplexity | ppl change | linear weights MiB | vs bf16 | model MiB "
        "| decode tok/s | speed ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-"
        ratio = f"{r['speed_ratio']:.2f}x" if r.get("speed_ratio") else "-"
        lines.append(
            f"| {r['scheme']} | {r['val_loss']:.4f} | {r['perplexity']:.4f} "
            f"| {r['perplexity_delta_pct']:+.2f}% | {r['linear_weights_mib']:.3f} "
            f"| {r['linear_bytes_vs_bf16']:.2f}x | {r['model_mib']:.3f} "
            f"| {speed} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tinylm.quant.eval", description=__doc__.splitlines()[0])
    p.add_argument(
        "--ckpt", required=True, help="float checkpoint directory (model.safetensors + config.json)"
    )
    cpu = [n for n, s in SCHEMES.items() if s.cuda_capability is None and n != "none"]
    p.add_argument("--schemes", default=",".join(cpu), help=f"comma list; known: {', '.join(SCHEMES)}")
    p.add_argument("--extra", action="append", default=[], help="NAME=DIR: another checkpoint to compare")
    p.add_argument("--data", default="synthetic_stories", help="dataset the model was trained on")
    p.add_argument("--data-path", default=None)
    p.add_argument("--val-split", default="spread", help="spread | end (as in training)")
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--sample-by", default=None)
    p.add_argument("--block-size", type=int, default=None, help="default: the model's max_seq_len")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many val tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="decode tokens timed (1 = no timing)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (int4_weight_only needs bfloat16)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data_opts = {"path": args.data_path, "val_fraction": args.val_fraction, "sample_by": args.sample_by}
        data_cfg = DataConfig(
            name=args.data, val_split=args.val_split, **{k: v for k, v in data_opts.items() if v is not None}
        )
        tokens = prepare_tokens(data_cfg, load_tokenizer(args.ckpt)).val
        extra = dict(item.split("=", 1) for item in args.extra)
        if not isinstance(getattr(torch, args.dtype, None), torch.dtype):
            raise ValueError(f"--dtype {args.dtype!r} is not a torch dtype (float32, bfloat16)")
        rows = evaluate(
            args.ckpt, [s for s in args.schemes.split(",") if s], tokens, args.device,
            getattr(torch, args.dtype), args.block_size, extra, args.batch_size, args.max_tokens,
            args.new_tokens,
        )  # fmt: skip
    except (CheckpointError, ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
