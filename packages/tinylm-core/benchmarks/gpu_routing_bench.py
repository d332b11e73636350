"""Train-step cost of routers and attention variants against the dense sdpa baseline, same run, same card.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python packages/tinylm-core/benchmarks/gpu_routing_bench.py

Per variant: correctness first (cached greedy generation == recomputation, float32, on the device),
then a train step (forward, backward, AdamW) under bf16 autocast, timed with CUDA events (warm-up,
median of repeats): ms, tokens/s, peak memory, and the ratio to the dense baseline measured in the same
process. Writes routing_bench.json, .md (printed) and .png to $OUT or --out.
``--tiny`` runs small sizes on the CPU (wall clock) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from tinylm.core import ModelConfig, TinyLM
from tinylm.core.generate import generate

VARIANTS = {
    "dense (sdpa)": {},
    "sliding_window 128": {"attention": "sliding_window", "extra": {"window": 128}},
    "alibi": {"attention": "alibi", "positional": "none"},
    "qk_norm": {"attention": "qk_norm"},
    "softcap 50": {"attention": "softcap", "extra": {"softcap": 50.0}},
    "moe 4x top-2": {"mlp": "moe", "extra": {"moe": {"experts": 4, "top_k": 2}}},
    "moe 8x top-1": {"mlp": "moe", "extra": {"moe": {"experts": 8, "top_k": 1}}},
    "mod 0.5 every 2": {"router": "mod", "extra": {"mod": {"capacity": 0.5, "every": 2}}},
    "mod 0.125 every 2": {"router": "mod", "extra": {"mod": {"capacity": 0.125, "every": 2}}},
    "heads top-3/6": {"router": "heads", "extra": {"heads": {"top_k": 3}}},
}


def check(base: dict, overrides: dict, device: torch.device) -> bool:
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(**{**base, **overrides})).to(device).eval()
    with torch.no_grad():
        for m in model.modules():  # MoD: a predictor that selects some tokens and skips others
            if hasattr(m, "predictor"):
                m.predictor.weight.normal_(0, 1.0)
        x = torch.randint(0, base["vocab_size"], (2, 12), device=device)
        return torch.equal(
            generate(model, x, 16, temperature=0), generate(model, x, 16, temperature=0, use_cache=False)
        )


def time_train_step(
    base: dict, overrides: dict, batch: int, seq: int, device: torch.device, reps: int
) -> dict:
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(**{**base, **overrides})).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, base["vocab_size"], (batch, seq), device=device)
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {"ms": ms, "tokens_per_s": batch * seq / ms * 1e3, "params": params, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out_routing_bench"))
    parser.add_argument("--tiny", action="store_true", help="small sizes on the CPU: checks the script")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        base, batch, seq, reps = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=64), 2, 32, 2
    else:
        base, batch, seq, reps = (
            dict(vocab_size=32000, dim=384, n_layers=6, n_heads=6, max_seq_len=512),
            32,
            512,
            20,
        )
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    rows = []
    for name, overrides in VARIANTS.items():
        ok = check({**base, "vocab_size": 97, "max_seq_len": 64}, overrides, device)
        r = time_train_step(base, overrides, batch, seq, device, reps)
        rows.append({"variant": name, "cached_equals_recompute": ok, **r})
        print(f"{name}: {r['ms']:.2f} ms, cached==recompute {ok}", flush=True)
    base_ms = rows[0]["ms"]
    for r in rows:
        r["vs_dense"] = r["ms"] / base_ms
    amp = "bf16 autocast" if device.type == "cuda" else "float32"
    head = f"card: {card}, torch {torch.__version__}, batch {batch} x {seq}, {amp}, median of {reps}\n\n"
    table = "| variant | params | ms/step | tokens/s | x dense time | peak MiB | cached == recompute |\n"
    table += "|---|---|---|---|---|---|---|\n"
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        table += (
            f"| {r['variant']} | {r['params'] / 1e6:.1f}M | {r['ms']:.2f} | {r['tokens_per_s']:,.0f} | "
            f"{r['vs_dense']:.2f} | {peak} | {r['cached_equals_recompute']} |\n"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing_bench.json").write_text(
        json.dumps({"card": card, "torch": torch.__version__, "rows": rows}, indent=2)
    )
    (out / "routing_bench.md").write_text(head + table)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.barh([r["variant"] for r in rows][::-1], [r["ms"] for r in rows][::-1])
        ax.set_xlabel(f"train step ms ({card}, {batch}x{seq}, bf16)")
        fig.tight_layout()
        fig.savefig(out / "routing_bench.png")
    except ImportError:
        pass
    print(head + table)
    if not all(r["cached_equals_recompute"] for r in rows):
        raise SystemExit("correctness check failed: a variant's cached generation differs from recomputation")


if __name__ == "__main__":
    main()
