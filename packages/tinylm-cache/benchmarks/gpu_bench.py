"""tinylm-cache on one GPU: decode tokens/s per cache (and static + torch.compile CUDA graphs vs standard),
engine vs static batching and paged waste on a mixed request set, quantized-KV memory and quality, C2C demo.

Run from the repository root (packages on PYTHONPATH from source):
    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python3 packages/tinylm-cache/benchmarks/gpu_bench.py --out $OUT
``--quick`` runs tiny sizes (also on CPU) to check the script. Writes cache_bench.json, prints a markdown
table per section, and PNGs when matplotlib imports. Every timing: CUDA events via tinylm.core.bench's
``measure`` (warm-up, median); every baseline in the same run on the same card.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from engine_bench import (
    ENGINE_COLS,
    KERNEL_COLS,
    WASTE_COLS,
    engine_vs_static_batching,
    paged_kernel_speed,
    paged_waste,
)
from plain_decode_loop import plain_loop_row

import tinylm.cache  # noqa: F401  (registers the caches)
from tinylm.cache.c2c_demo import run_c2c_demo
from tinylm.cache.quality import cache_quality
from tinylm.cache.static import StaticCache, decode_step, model_cache_shape, static_greedy_generate
from tinylm.core import CACHES, TinyLM
from tinylm.core.bench.timing import measure
from tinylm.core.generate import generate, stream

ROOT = Path(__file__).resolve().parents[3]
MODELS = {  # the two LLaMA configs (tied head for 110M)
    "10.6M": dict(vocab_size=65, dim=384, n_layers=6, n_heads=6, hidden_dim=1024, max_seq_len=1024),
    "110M": dict(
        vocab_size=32000,
        dim=768,
        n_layers=12,
        n_heads=12,
        hidden_dim=2048,
        tie_embeddings=True,
        max_seq_len=1024,
    ),
    "quick": dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=256),
}
DECODE_COLS = (
    "model batch cache tokens_per_s step_ms prefill_ms speedup_vs_standard compile_s agreement_vs_tinylm "
    "agreement_vs_eager_static error"
).split()
CACHE_NAMES = ["standard", "static", "paged", "quantized", "quantized_int4", "sliding_window"]


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return (
            f"{v:,.3g}"
            if isinstance(v, float) and abs(v) < 100
            else (f"{v:,.0f}" if isinstance(v, float) else str(v))
        )

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def build(name: str, device: torch.device, dtype: torch.dtype) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(**MODELS[name]).to(device=device, dtype=dtype).eval()


@torch.no_grad()
def correctness(model: TinyLM, device: torch.device) -> list[dict]:
    """fp32 teacher-forced logits through each cache vs one full forward (max |diff|), greedy agreement."""
    ids = torch.randint(0, model.config.vocab_size, (2, 48), device=device)
    full = model(ids).logits
    ref = generate(model, ids[:, :16], 32, temperature=0.0, use_cache=False)
    rows = []
    for name in CACHE_NAMES:
        c = CACHES.build(
            name, config=model.config, batch_size=2, max_seq_len=48, device=device, dtype=torch.float32
        )
        got = [model(ids[:, :16], cache=c).logits] + [
            model(ids[:, t : t + 1], cache=c).logits for t in range(16, 48)
        ]
        c2 = CACHES.build(
            name, config=model.config, batch_size=2, max_seq_len=48, device=device, dtype=torch.float32
        )
        toks = generate(model, ids[:, :16], 32, temperature=0.0, cache=c2)
        rows.append(
            {
                "cache": name,
                "max_abs_logit_diff": (torch.cat(got, 1) - full).abs().max().item(),
                "greedy_agreement": (toks == ref).float().mean().item(),
            }
        )
    return rows


def decode_speed(model: TinyLM, label: str, batch: int, args, device: torch.device, dtype) -> list[dict]:
    """Greedy decode of ``new_tokens`` after a ``prompt`` prompt; tokens/s of the decode steps only."""
    ids = torch.randint(0, model.config.vocab_size, (batch, args.prompt), device=device)
    max_len = args.prompt + args.new_tokens
    rows = []

    def rate(make_run) -> dict:
        full = measure(make_run(args.new_tokens), args.warmup, args.repeats, device).median
        first = measure(make_run(1), args.warmup, args.repeats, device).median
        if full <= first:
            raise RuntimeError(f"timing noise: t({args.new_tokens} tokens) <= t(1 token); raise --repeats")
        decode_ms = full - first
        return {
            "prefill_ms": first,
            "step_ms": decode_ms / (args.new_tokens - 1),
            "tokens_per_s": batch * (args.new_tokens - 1) / decode_ms * 1e3,
        }

    for name in CACHE_NAMES:

        def make_run(n, name=name):
            def run():
                c = CACHES.build(
                    name,
                    config=model.config,
                    batch_size=batch,
                    max_seq_len=max_len,
                    device=device,
                    dtype=dtype,
                )
                for _ in stream(model, ids, n, temperature=0.0, cache=c):
                    pass

            return run

        try:
            rows.append({"model": label, "batch": batch, "cache": name, **rate(make_run)})
        except Exception as e:
            rows.append({"model": label, "batch": batch, "cache": name, "error": repr(e)[:200]})
    # static + torch.compile(mode="reduce-overhead"): one CUDA graph per decode step
    try:
        torch._dynamo.reset()
        cache = StaticCache(batch, max_len, device=device, dtype=dtype, **model_cache_shape(model.config))
        cache.mark_static_addresses()
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        step = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
        t0 = time.perf_counter()
        compiled_out = static_greedy_generate(model, ids, args.new_tokens, step_fn=step, cache=cache)
        compile_s = time.perf_counter() - t0
        eager_out = static_greedy_generate(model, ids, args.new_tokens)
        agree = (compiled_out == eager_out).float().mean().item()

        def make_run(n):
            return lambda: static_greedy_generate(model, ids, n, step_fn=step, cache=cache)

        rows.append(
            {
                "model": label,
                "batch": batch,
                "cache": "static+compile",
                **rate(make_run),
                "compile_s": compile_s,
                "agreement_vs_eager_static": agree,
            }
        )
    except Exception as e:
        rows.append({"model": label, "batch": batch, "cache": "static+compile", "error": repr(e)[:200]})
    try:  # baseline: gpt-fast-style plain loop (static KV, SDPA, compiled step) on the same weights
        rows.append({"model": label, "batch": batch, "cache": "plain loop+compile",
                     **plain_loop_row(model, ids, args.new_tokens, rate)})  # fmt: skip
    except Exception as e:
        rows.append({"model": label, "batch": batch, "cache": "plain loop+compile", "error": repr(e)[:200]})
    try:  # baseline: transformers generate (default dynamic cache) on the same weights, same run
        from tinylm.core.bench.inference import hf_generator
        from tinylm.core.hf import to_hf

        hf = to_hf(model).to(device=device, dtype=dtype).eval()
        rows.append({"model": label, "batch": batch, "cache": "HF generate", **rate(hf_generator(hf, ids))})
    except Exception as e:
        rows.append({"model": label, "batch": batch, "cache": "HF generate", "error": repr(e)[:200]})
    base = rows[0].get("tokens_per_s")
    for r in rows:
        if "tokens_per_s" in r and base:
            r["speedup_vs_standard"] = r["tokens_per_s"] / base
    return rows


def quantized_quality(device: torch.device, n_rows: int = 8, length: int = 256) -> list[dict]:
    """Shipped models in fp32: int8/int4 KV memory saved and NLL delta on held-out text."""
    from tinylm.core import load_checkpoint
    from tinylm.core.data import load_tokenizer
    from tinylm.core.data.synthetic_stories import generate_stories

    texts = {
        "stories": lambda: " ".join(generate_stories(60, seed=999)),
        "shakespeare": lambda: (ROOT.parent / "shared/data/tinyshakespeare.txt").read_text()[-40000:],
    }
    rows = []
    for name, text in texts.items():
        path = ROOT / "models" / name
        try:
            model, tok = load_checkpoint(path, device=device).eval(), load_tokenizer(path)
            ids = torch.tensor(tok.encode(text())[: n_rows * length], device=device).view(n_rows, length)
        except Exception as e:
            rows.append({"model": name, "error": repr(e)[:200]})
            continue
        for cache_name in ("quantized", "quantized_int4"):
            cache = CACHES.build(cache_name)
            q = cache_quality(model, ids, cache, 16)
            rows.append(
                {
                    "model": name,
                    "cache": cache_name,
                    "kv_bytes": cache.memory_bytes(),
                    "fp32_kv_bytes": cache.full_precision_bytes(),
                    "saved_vs_fp32": 1 - cache.memory_bytes() / cache.full_precision_bytes(),
                    "saved_vs_bf16": 1 - cache.memory_bytes() / (cache.full_precision_bytes() / 2),
                    **q,
                }
            )
    return rows


def save(out: Path, res: dict, md: list[str]) -> None:
    """Write what is measured so far (a run cut short keeps its finished sections)."""
    (out / "cache_bench.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "cache_bench.md").write_text("\n\n".join(md) + "\n")


def plots(out: Path, decode_rows: list[dict], c2c: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    groups = sorted({(r["model"], r["batch"]) for r in decode_rows})
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
        for ax, (m, b) in zip(axes[0], groups, strict=True):
            rs = [r for r in decode_rows if (r["model"], r["batch"]) == (m, b) and "tokens_per_s" in r]
            ax.barh([r["cache"] for r in rs], [r["tokens_per_s"] for r in rs])
            ax.set_title(f"{m}, batch {b}: decode tokens/s")
        fig.tight_layout()
        fig.savefig(out / "decode_tokens_per_s.png", dpi=120)
    if not c2c["gates"]:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(len(c2c["gates"])), c2c["gates"]), ax.set_xticks(range(len(c2c["gates"])))
    ax.set(xlabel="receiver layer", ylabel="sigmoid(gate logit)", title="C2C learned per-layer gates")
    fig.savefig(out / "c2c_gates.png", dpi=120, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "outputs/cache_bench"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, any device: checks the script")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["decode", "kernel", "engine", "waste", "quant", "c2c"]
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--workloads", nargs="*", default=["10.6M:1", "110M:1", "110M:32"], help="MODEL:BATCH")
    args = p.parse_args()
    q = args.quick
    args.prompt, args.new_tokens = (8, 12) if q else (16, 256)
    args.warmup, args.repeats = 1, (1 if q else args.repeats)
    args.requests, args.max_prompt, args.max_new, args.static_batch = (
        (8, 24, 24, 4) if q else (96, 256, 256, 16)
    )
    device, out = torch.device(args.device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    workloads = [(w.split(":")[0], int(w.split(":")[1])) for w in args.workloads]
    workloads = [("quick", 1), ("quick", 4)] if q else workloads
    res: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "args": vars(args),
    }
    md = [f"# tinylm-cache benchmarks on {res['device']} (torch {torch.__version__}, {dtype})"]
    if "decode" not in args.skip:
        res["correctness_fp32"] = correctness(build("quick" if q else "10.6M", device, torch.float32), device)
        md += [
            "## correctness (fp32, vs full recomputation)",
            table(res["correctness_fp32"], ["cache", "max_abs_logit_diff", "greedy_agreement"]),
        ]
        res["decode"] = []
        for label, batch in workloads:
            res["decode"] += decode_speed(build(label, device, dtype), label, batch, args, device, dtype)
            print(f"decode {label} batch {batch} done", flush=True)
        md += [
            f"## decode (greedy, prompt {args.prompt}, {args.new_tokens} new tokens)",
            table(res["decode"], DECODE_COLS),
        ]
        save(out, res, md)
    if "kernel" not in args.skip:  # engine_bench.py: the paged decode kernel vs gather + SDPA
        res["paged_kernel"] = paged_kernel_speed(device, args.repeats)
        md += [
            "## paged decode attention (bf16): Triton kernel vs gather + SDPA",
            table(res["paged_kernel"], KERNEL_COLS),
        ]
        save(out, res, md)
    if "engine" not in args.skip:  # engine_bench.py: HF and TinyLM static batching vs the engine
        engine_model = build("quick" if q else "10.6M", device, dtype)
        res["engine"] = engine_vs_static_batching(engine_model, args, device)
        md += [
            f"## continuous batching vs padded static batching ({args.requests} requests, prompts 8.."
            f"{args.max_prompt}, 16..{args.max_new} new tokens, greedy; same KV slots)",
            table(res["engine"], ENGINE_COLS),
        ]
        save(out, res, md)
    if "waste" not in args.skip:  # the same request set's waste in fp32 (no timing)
        res["paged_waste_fp32"] = paged_waste(build("quick" if q else "10.6M", device, torch.float32), args)
        md += ["## paged waste per block size (fp32)", table(res["paged_waste_fp32"], WASTE_COLS)]
        save(out, res, md)
    if "quant" not in args.skip:
        res["quantized"] = quantized_quality(device, *((2, 64) if q else (8, 256)))
        md += [
            "## quantized KV: memory and quality (shipped models, fp32, teacher-forced, held-out text)",
            table(
                res["quantized"],
                [
                    "model",
                    "cache",
                    "saved_vs_fp32",
                    "saved_vs_bf16",
                    "nll_standard",
                    "nll_delta",
                    "top1_agreement",
                    "error",
                ],
            ),
        ]
        save(out, res, md)
    if "c2c" not in args.skip:
        steps = (30, 20) if q else (600, 400)
        res["c2c"] = run_c2c_demo(device, lm_steps=steps[0], fuser_steps=steps[1])
        md += [
            f"## C2C demo ({res['c2c']['n_questions']} fact questions, chance {res['c2c']['chance']:.3f})",
            table(res["c2c"]["rows"], ["method", "accuracy", "latency_ms"]),
            f"learned gates (sigmoid): {[round(g, 3) for g in res['c2c']['gates']]}",
        ]
    save(out, res, md)
    plots(out, res.get("decode", []), res.get("c2c", {"gates": []}))
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
