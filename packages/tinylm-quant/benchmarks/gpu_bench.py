"""Decode speed, size and quality of every quantization scheme on one GPU, against bf16 in the same run.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python packages/tinylm-quant/benchmarks/gpu_bench.py --out $OUT

A composition script (it uses tinylm-cache's static cache next to tinylm-quant). Two parts:

``int8_weight_only_gemv`` is torchao's int8 weights run by tinylm-kernels' fused Triton int8 GEMV.

1. Speed on a ~110M-parameter TinyLM (``large`` preset: 12 layers, 768 wide, 16K vocab; random weights,
   bf16), batch 1, a 16-token prompt then ``--new-tokens`` greedy tokens, for bf16 and each scheme:
   - ``static+compile``: tinylm-cache's ``StaticCache`` + ``torch.compile(decode_step,
     mode="reduce-overhead", fullgraph=True)`` (one CUDA graph per step, gpt-fast style);
   - ``eager``: the standard generation path (``tinylm.core.generate.stream`` + ``StandardCache``).
   decode tok/s = (N - 1) / (time(N tokens) - time(1 token)): prefill excluded; CUDA-event medians of
   ``--repeats`` runs after warm-up (compilation). Also: bytes of the linear weights and of the model, KL
   divergence and top-1 agreement of next-token distributions vs bf16 on a random batch, and whether the
   compiled path generates the same tokens as the eager path of the same model.
2. Quality on the shipped shakespeare model (bf16 on the GPU): validation perplexity on the last 10% of
   tinyshakespeare (its training split) per scheme, if the text file is found (``--data-path``).

Prints markdown tables; writes ``gpu_bench.json`` (+ ``gpu_bench.png`` when matplotlib imports) to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from tinylm.core import DataConfig, ModelConfig, TinyLM, load_checkpoint, load_tokenizer, prepare_tokens
from tinylm.core.bench.timing import measure
from tinylm.core.cache import StandardCache
from tinylm.core.generate import stream
from tinylm.quant import model_bytes, quantize
from tinylm.quant.eval import perplexity

SCHEMES = [  # most wanted first: with --budget-s the tail may be skipped (reported)
    "none", "int8_weight_only", "int8_weight_only_gemv", "int4_weight_only", "float8", "int4_weight_only_g32",
    "int4_weight_only_g64", "int8_dynamic",
]  # fmt: skip
MIB = 2**20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_bench_out"))
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--size", default="large", help="a ModelConfig size preset (large: ~110M)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--budget-s", type=float, default=240, help="skip the remaining schemes after this")
    p.add_argument("--eager-tokens", type=int, default=32, help="tokens for the eager path (slower)")
    p.add_argument("--data-path", default=None, help="tinyshakespeare.txt (default: looked up)")
    p.add_argument("--ppl-tokens", type=int, default=60_000)
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", default="speed,quality", help="speed (110M decode), quality (shakespeare)")
    p.add_argument("--smoke", action="store_true", help="allow --device cpu with a tiny model (a code check)")
    return p.parse_args()


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def tokens_per_s(make_run: Any, n: int, repeats: int, device: torch.device) -> float:
    full = measure(make_run(n), 2, repeats, device).median
    first = measure(make_run(1), 2, repeats, device).median
    return (n - 1) / max((full - first) * 1e-3, 1e-9)


def eager_runner(model: TinyLM, ids: torch.Tensor) -> Any:
    def make_run(n: int) -> Any:
        def run() -> torch.Tensor:
            return torch.stack(list(stream(model, ids, n, temperature=0.0, cache=StandardCache())), 1)

        return run

    return make_run


def static_runner(
    model: TinyLM, ids: torch.Tensor, max_new: int, compile: bool, fullgraph: bool = True
) -> Any:
    from tinylm.cache.static import StaticCache, decode_step, model_cache_shape, static_greedy_generate

    p = next(model.parameters())
    cache = StaticCache(1, ids.size(1) + max_new, device=p.device, dtype=torch.bfloat16,
                        **model_cache_shape(model.config))  # fmt: skip
    step = decode_step
    if compile:
        cache.mark_static_addresses()
        step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=fullgraph)

    def make_run(n: int) -> Any:
        return lambda: static_greedy_generate(model, ids, n, step_fn=step, cache=cache)[:, ids.size(1) :]

    return make_run


@torch.no_grad()
def agreement(model: TinyLM, ref_logits: torch.Tensor, batch: torch.Tensor) -> dict[str, float]:
    logits = model(batch).logits.float()
    ref_logp, logp = ref_logits.log_softmax(-1), logits.log_softmax(-1)
    return {
        "kl_vs_bf16": float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()),
        "top1_vs_bf16": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
    }


def speed_part(args: argparse.Namespace, device: torch.device, schemes: list[str]) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(args.size, vocab_size=args.vocab)
    base = TinyLM(cfg).to(device, torch.bfloat16).eval()
    n_params = base.num_parameters()
    print(f"model: {args.size} preset, {n_params / 1e6:.1f}M parameters, bf16, {device_name()}")
    ids = torch.randint(0, args.vocab, (1, args.prompt), device=device)
    batch = torch.randint(0, args.vocab, (4, 128), device=device)
    with torch.no_grad():
        ref_logits = base(batch).logits.float()
    rows = []
    start = time.perf_counter()
    for name in schemes:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"scheme": "bf16" if name == "none" else name, "params_m": n_params / 1e6}
        if t0 - start > args.budget_s:
            row["error"] = f"skipped: time budget of {args.budget_s:.0f} s spent (--budget-s)"
            rows.append(row)
            continue
        try:
            model = quantize(copy.deepcopy(base), name)
            row["linear_weights_mib"] = model_bytes(model, linear_only=True) / MIB
            row["model_mib"] = model_bytes(model) / MIB
            row.update(agreement(model, ref_logits, batch))
            eager = eager_runner(model, ids)
            with torch.no_grad():
                row["eager_tok_s"] = tokens_per_s(eager, args.eager_tokens, args.repeats, device)
            try:
                static = static_runner(model, ids, args.new_tokens, not args.no_compile, fullgraph=True)
                row["static_compile_tok_s"] = tokens_per_s(static, args.new_tokens, args.repeats, device)
            except Exception as e:  # e.g. a graph break: measure with fullgraph=False and say so
                row["fullgraph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                torch._dynamo.reset()
                static = static_runner(model, ids, args.new_tokens, not args.no_compile, fullgraph=False)
                row["static_compile_tok_s"] = tokens_per_s(static, args.new_tokens, args.repeats, device)
            k = args.eager_tokens
            same = (static(k)()[:, :k] == eager(k)()).float().mean()
            row["compiled_matches_eager"] = float(same)
        except Exception as e:  # one scheme failing must not lose the others' numbers
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            traceback.print_exc()
        row["wall_s"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        rows.append(row)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    base_row = rows[0]
    for row in rows:
        for key in ("static_compile_tok_s", "eager_tok_s"):
            if row.get(key) and base_row.get(key):
                row[key.replace("tok_s", "vs_bf16")] = row[key] / base_row[key]
        if row.get("linear_weights_mib") and base_row.get("linear_weights_mib"):
            row["bytes_vs_bf16"] = row["linear_weights_mib"] / base_row["linear_weights_mib"]
    return rows


def find_text(path: str | None) -> Path | None:
    here = Path(__file__).resolve().parents[3]
    for c in [
        path,
        here.parent / "shared/data/tinyshakespeare.txt",
        here / "shared/data/tinyshakespeare.txt",
    ]:
        if c and Path(c).is_file():
            return Path(c)
    return None


def quality_part(args: argparse.Namespace, device: torch.device, schemes: list[str]) -> list[dict[str, Any]]:
    text = find_text(args.data_path)
    ckpt = Path(__file__).resolve().parents[3] / "models" / "shakespeare"
    if text is None or not ckpt.is_dir():
        print("quality part skipped: tinyshakespeare.txt or models/shakespeare not found (--data-path)")
        return []
    data_cfg = DataConfig(name="tinyshakespeare", path=str(text), val_split="end", sample_by="document",
                          cache_dir=tempfile.mkdtemp(prefix="tinylm-data-"))  # fmt: skip
    tokens = prepare_tokens(data_cfg, load_tokenizer(ckpt)).val
    base = load_checkpoint(ckpt, device=device).to(torch.bfloat16).eval()
    rows = []
    for name in schemes:
        row: dict[str, Any] = {"scheme": "bf16" if name == "none" else name}
        try:
            model = quantize(copy.deepcopy(base), name)
            row["val_loss"], row["perplexity"] = perplexity(model, tokens, 256, 32, args.ppl_tokens)
            row["linear_weights_mib"] = model_bytes(model, linear_only=True) / MIB
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows.append(row)
    for row in rows:
        if "perplexity" in row and "perplexity" in rows[0]:
            row["ppl_vs_bf16_pct"] = 100 * (row["perplexity"] / rows[0]["perplexity"] - 1)
            row["bytes_vs_bf16"] = row["linear_weights_mib"] / rows[0]["linear_weights_mib"]
    return rows


def fmt(v: Any, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, int | float) else ("-" if v is None else str(v))


def tables(speed: list[dict[str, Any]], quality: list[dict[str, Any]]) -> str:
    out = [
        "| scheme | static+compile tok/s | vs bf16 | eager tok/s | vs bf16 | linear MiB | bytes vs bf16 "
        "| KL vs bf16 | top-1 vs bf16 | compiled = eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        if "error" in r:
            out.append(f"| {r['scheme']} | error: {r['error']} |||||||||")
            continue
        out.append(
            f"| {r['scheme']} | {fmt(r.get('static_compile_tok_s'), '.1f')} | "
            f"{fmt(r.get('static_compile_vs_bf16'))}x | {fmt(r.get('eager_tok_s'), '.1f')} | "
            f"{fmt(r.get('eager_vs_bf16'))}x | {fmt(r.get('linear_weights_mib'), '.1f')} | "
            f"{fmt(r.get('bytes_vs_bf16'))}x | {fmt(r.get('kl_vs_bf16'), '.5f')} | "
            f"{fmt(r.get('top1_vs_bf16'), '.3f')} | {fmt(r.get('compiled_matches_eager'), '.3f')} |"
        )
    if quality:
        out += [
            "",
            "| scheme (shakespeare, bf16) | val loss | perplexity | vs bf16 | linear MiB | bytes vs bf16 |",
            "|---|---|---|---|---|---|",
        ]
        for r in quality:
            out.append(
                f"| {r['scheme']} | {fmt(r.get('val_loss'), '.4f')} | {fmt(r.get('perplexity'), '.4f')} | "
                f"{fmt(r.get('ppl_vs_bf16_pct'), '+.2f')}% | {fmt(r.get('linear_weights_mib'), '.3f')} | "
                f"{fmt(r.get('bytes_vs_bf16'))}x |" + (f" error: {r['error']}" if "error" in r else "")
            )
    return "\n".join(out)


def plot(speed: list[dict[str, Any]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in speed if r.get("static_compile_tok_s")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [r["scheme"] for r in ok]
    x = range(len(ok))
    ax.bar([i - 0.2 for i in x], [r["static_compile_tok_s"] for r in ok], 0.4, label="static cache + compile")
    ax.bar([i + 0.2 for i in x], [r.get("eager_tok_s") or 0 for r in ok], 0.4, label="eager, standard cache")
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title(f"{device_name()}: ~110M TinyLM decode by quantization scheme")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gpu_bench.png", dpi=120)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if (device.type != "cuda" or not torch.cuda.is_available()) and not args.smoke:
        raise SystemExit(
            "gpu_bench.py needs a CUDA GPU (the int4/float8 schemes and the timings are GPU-only)"
        )
    schemes = [s for s in args.schemes.split(",") if s]
    if schemes[0] != "none":
        schemes.insert(0, "none")
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    speed = speed_part(args, device, schemes) if "speed" in parts else []
    quality = quality_part(args, device, schemes) if "quality" in parts else []
    env = {
        "device": device_name(), "torch": torch.__version__,
        "torchao": __import__("torchao").__version__, "args": vars(args), "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    (out / "gpu_bench.json").write_text(
        json.dumps({"env": env, "speed": speed, "quality": quality}, indent=2)
    )
    plot(speed, out)
    print(f"\n{env['device']}, torch {env['torch']}, torchao {env['torchao']}, total {env['wall_s']:.0f} s\n")
    print(tables(speed, quality))


if __name__ == "__main__":
    main()
