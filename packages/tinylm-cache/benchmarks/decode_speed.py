"""Batch-1 (and batch-N) greedy decode speed of the static cache on one GPU: what each step of the fast
decoder buys, against the gpt-fast-style plain loop measured in the same run on the same weights.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) python3 packages/tinylm-cache/benchmarks/decode_speed.py \
        --out OUT --workloads 110M:1,10.6M:1,110M:32 [--quant int8_weight_only_gemv]

Rows per workload (bf16, greedy, prompt 16, --new-tokens new tokens; decode tok/s = B * (N - 2) /
(t(N) - t(2)), prefill excluded, where a k-steps-per-graph row counts the steps its whole replays ran;
CUDA events, median of --repeats after a warm-up):
``static+compile`` (decode_step under ``mode="reduce-overhead"``, the previous best), ``fast`` (the whole
step with argmax in one graph, Inductor-visible kernels, coordinate-descent tuning), ``fast+fused``
(q/k/v and gate/up fused), ``math decode attention`` (``StaticCache(decode_attention="math")``),
``kernel decode attention`` (``decode_attention="kernel"``: tinylm-kernels' Triton decode kernel;
``--decode-attention kernel,kernel_rope`` gives each ``--inductor`` row once per attention, ``kernel_rope``
with RoPE and the cache write inside that kernel; ``--decode-blocks`` each once more with
``tinylm.cache.decode_blocks``: small ops folded into ``decode_linear`` products, per fold plan),
``max-autotune matmuls`` (Inductor's Triton matmul templates where they win: several rows per step),
``--inductor 'combo_kernels=True'`` (a row per set of extra Inductor settings; with ``--linear-kernel`` each
such row once more with every projection and the head on tinylm-kernels' few-row ``linear``),
``--graph-steps``: ``k`` steps of the fused model per CUDA-graph replay (``GraphedGreedySteps``), two
ablations, and ``plain loop+compile`` (benchmarks/plain_decode_loop.py).
``--quant``: the fused fast decoder on the model quantized with each scheme (tinylm-quant), against the
bf16 fused fast row (``int8_weight_only_gemv`` and ``int4_weight_only_gemv`` also with the Triton
GEMV, ``--int8-linear-form`` with the int8 product compiled as ``F.linear`` on the converted weight and,
``--int8-fold-norms mlp,attn``, with the RMSNorms folded into the Triton int8 GEMVs they feed, ``--int8-pdl``
those GEMVs launched with PDL; with ``--graph-steps``, each of them also k steps per CUDA graph;
``--skip quant_step``: only those). ``--fast-options``: Inductor settings
for the k-steps and quant rows. ``--rounds R``:
every row timed R times, rows interleaved, with per-round ratios to the workload's first row (the card's
speed drifts by 15-25% within one process on the lent H100s, so compare rows round by round).
Every row's tokens are checked against the eager static decoder of the same model.
Output: a markdown table, decode_speed.json and decode_speed.png in --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import textwrap
import time
import traceback
from pathlib import Path

import torch
from gpu_bench import MODELS, build
from plain_decode_loop import PlainLlamaDecoder, decode_one, plain_greedy_generate

from tinylm.cache.decode_blocks import fuse_decode_blocks
from tinylm.cache.fast_decode import (
    GraphedGreedySteps,
    compile_greedy_step,
    fast_greedy_generate,
    graphed_greedy_stream,
    parse_inductor_options,
)
from tinylm.cache.static import (
    DECODE_ATTENTION,
    StaticCache,
    decode_step,
    model_cache_shape,
    static_greedy_generate,
)
from tinylm.core.bench.profiling import profiled
from tinylm.core.bench.timing import measure
from tinylm.core.fusion import fuse_projections
from tinylm.kernels import use_kernel_linears
from tinylm.kernels.int8_gemv import REDUCTION_MAX_ROWS, compiled_reduction_rows


def rate(run, batch: int, n: int, repeats: int, device: str) -> dict:
    full = measure(lambda: run(n), 1, repeats, device).median
    two = measure(lambda: run(2), 1, repeats, device).median
    k = getattr(run, "steps_per_call", 1)  # a graphed row runs whole replays of k steps
    steps = lambda m: k * -(-(m - 1) // k)  # noqa: E731  (decode steps executed for m tokens)
    step_ms = (full - two) / (steps(n) - steps(2))
    return {"tokens_per_s": batch * 1e3 / step_ms, "step_us": step_ms * 1e3, "prefill_ms": two}


def interleaved_rounds(timed: list[tuple[dict, object]], batch: int, args, device: str) -> None:
    """``--rounds`` > 1: time every row of a workload again, row after row, ``rounds - 1`` more times.

    A drift of the card (clocks, heat) then touches every row alike, so the per-round ratio to the
    workload's first row is a paired comparison. Each row's tok/s becomes the median over rounds.
    """
    if args.rounds < 2 or not timed:
        return
    for row, _ in timed:
        row["rounds_tokens_per_s"] = [row["tokens_per_s"]]
    for r in range(1, args.rounds):
        for row, run in timed:
            with torch.no_grad():
                row["rounds_tokens_per_s"].append(
                    rate(run, batch, args.new_tokens, args.repeats, device)["tokens_per_s"]
                )
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{x['rounds_tokens_per_s'][-1]:,.0f}" for x, _ in timed),
            flush=True,
        )
    first = timed[0][0]["rounds_tokens_per_s"]
    for row, _ in timed:
        row["tokens_per_s"] = statistics.median(row["rounds_tokens_per_s"])
        row["step_us"] = batch * 1e6 / row["tokens_per_s"]
        row["vs_first_row_rounds"] = [a / b for a, b in zip(row["rounds_tokens_per_s"], first, strict=True)]


def options_label(args) -> str:
    """The ``--fast-options`` part of a row label (empty without them)."""
    return f", inductor {args.fast_options}" if args.fast_options else ""


def static_cache(model, ids, args, attention: str = "sdpa", extra: int = 0) -> StaticCache:
    """A static cache for ``ids`` + ``--new-tokens`` (+ ``extra``) positions, its buffers marked static."""
    b, p = ids.shape
    c = StaticCache(b, p + args.new_tokens + extra, device=ids.device, dtype=next(model.parameters()).dtype,
                    decode_attention=attention, **model_cache_shape(model.config))  # fmt: skip
    c.mark_static_addresses()
    return c


def variants(model, ids, args) -> list[tuple[str, object]]:
    """(label, run(n) -> tokens) for every row of one workload; compilation happens on first use."""
    b, p = ids.shape
    dev = ids.device
    out = []
    if "previous" not in args.skip:
        cache0 = static_cache(model, ids, args)
        old = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        prev = lambda n: static_greedy_generate(model, ids, n, old, cache0)  # noqa: E731
        out.append(("static+compile (previous)", prev))
    fused = copy.deepcopy(model)
    fuse_projections(fused)
    kernel_linears = copy.deepcopy(fused)  # every projection and the head through the few-row kernel
    use_kernel_linears(kernel_linears)
    blocks = {}  # per fold plan: each block's small ops folded into decode_linear products
    for folds in args.decode_blocks:
        blocks[folds] = copy.deepcopy(fused)
        fuse_decode_blocks(blocks[folds], folds)
    for key, label, m, kw in [
        ("notune", "fast, no tuning", model, {"tune": False}),
        ("opaque", "fast, our norm/rope/swiglu kernels (opaque)", model, {"inductor_kernels": False}),
        ("fast", "fast", model, {}),
        ("fused", "fast+fused", fused, {}),
        ("math", "fast+fused, math decode attention", fused, {}),
        ("kernel", "fast+fused, kernel decode attention", fused, {}),
        ("autotune", "fast+fused, max-autotune matmuls", fused, {"max_autotune": True}),
        *[
            (
                f"inductor:{a}:{o}",
                f"fast+fused, {a} attention, inductor {o}",
                fused,
                {"inductor_options": parse_inductor_options(o)},
            )
            for a in args.inductor_attention
            for o in args.inductor
        ],
        *[
            (
                f"linear:{args.decode_attention}:{o}",
                f"fast+fused, {args.decode_attention} attention, few-row linear kernel, inductor {o}",
                kernel_linears,
                {"inductor_options": parse_inductor_options(o), "prefer": {"linear": "triton"}},
            )
            for o in (args.inductor if args.linear_kernel else [])
        ],
        *[
            (
                f"blocks:{a}:{o}:{f}",
                f"fast+fused, {a} attention, decode blocks ({f} folds), inductor {o}",
                blocks[f],
                {"inductor_options": parse_inductor_options(o), "prefer": {"decode_linear": "triton"}},
            )
            for f in args.decode_blocks
            for a in args.inductor_attention
            for o in args.inductor
        ],
    ]:
        if key in args.skip:
            continue
        attention = key if key in ("math", "kernel") else "sdpa"
        attention = key.split(":")[1] if key.startswith(("inductor:", "linear:", "blocks:")) else attention
        cache = static_cache(model, ids, args, attention)
        step = compile_greedy_step(dev, **kw)
        out.append((label, lambda n, m=m, c=cache, s=step: fast_greedy_generate(m, ids, n, s, c)))
    dec = PlainLlamaDecoder(model, b, p + args.new_tokens)
    plain = torch.compile(decode_one, mode="reduce-overhead", fullgraph=True)
    plain_run = torch.no_grad()(lambda n: plain_greedy_generate(dec, plain, ids, n))
    out.append(("plain loop+compile (gpt-fast style)", plain_run))
    # last: a failed capture must not cost the other rows
    for k in args.graph_steps:
        label = (
            f"fast+fused, {args.decode_attention} attention{options_label(args)}, {k} steps per CUDA graph"
        )
        out.append((label, graphed_run(fused, model, ids, args, k)))
    return out


def graphed_run(m, model, ids, args, k: int, prefer: dict | None = None, rows: int = REDUCTION_MAX_ROWS):
    """run(n) for ``m`` with ``k`` steps per CUDA-graph replay (one step per Inductor graph, our own capture);
    captured on first use. ``model``: the unquantized model, for the cache's shape and dtype."""
    c = static_cache(model, ids, args, args.decode_attention, extra=k)
    options = parse_inductor_options(args.fast_options)
    step = compile_greedy_step(ids.device, prefer=prefer, cudagraphs=False, inductor_options=options)
    g = GraphedGreedySteps(m, c, k, step)

    def run(n):
        with compiled_reduction_rows(rows):
            if g.graph is None:
                g.capture()
            return torch.cat([ids, *(t[:, None] for t in graphed_greedy_stream(m, ids, n, g))], dim=1)

    run.steps_per_call = k
    return run


def quant_variants(model, ids, args) -> list[tuple[str, object]]:
    from tinylm.quant import quantize
    from tinylm.quant.gemv import fold_rms_norms

    out = []
    # (scheme, variant): the int8 GEMV scheme runs with int8_linear's torch backend (the default of the fast
    # decoder: compiled, a reduction over int8 loads that Inductor generates and fuses), with the
    # hand-written Triton GEMV, and with --int8-linear-form, as F.linear on the converted weight
    jobs = [(s, "") for s in ["none", *args.quant] if s == "none" or "int8_reduction" not in args.skip]
    gemv = [s for s in args.quant if s == "int8_weight_only_gemv"]
    jobs += [(s, "Triton GEMV") for s in args.quant if s.endswith("_gemv") and "triton_gemv" not in args.skip]
    jobs += [(s, "F.linear form") for s in gemv if args.int8_linear_form]
    jobs += [(s, f"RMSNorm folded into {sites}") for s in gemv for sites in args.int8_fold_norms]
    pdl = [(s, f"RMSNorm folded into {sites}, PDL") for s in gemv for sites in args.int8_fold_norms]
    jobs += pdl if args.int8_pdl else []
    for scheme, variant in jobs:
        m = copy.deepcopy(model)
        fuse_projections(m)
        if scheme != "none":
            quantize(m, scheme)
        op = "int4_linear" if scheme.startswith("int4") else "int8_linear"
        prefer = {op: "triton"} if variant == "Triton GEMV" else {}
        if variant.startswith("RMSNorm folded"):
            sites = variant.removeprefix("RMSNorm folded into ").removesuffix(", PDL")
            fold_rms_norms(m, tuple(sites.split(",")), pdl=variant.endswith(", PDL"))
            prefer = {"rms_norm_int8_linear": "triton"}
        c = static_cache(model, ids, args, args.decode_attention)
        options = parse_inductor_options(args.fast_options)
        step = compile_greedy_step(ids.device, prefer=prefer, inductor_options=options)
        label = f"fast+fused {'bf16' if scheme == 'none' else scheme}, {args.decode_attention} attention"
        label += options_label(args)
        rows = 0 if variant == "F.linear form" else REDUCTION_MAX_ROWS

        def run(n, m=m, c=c, s=step, rows=rows):
            with compiled_reduction_rows(rows):
                return fast_greedy_generate(m, ids, n, s, c)

        if "quant_step" not in args.skip or not args.graph_steps:  # quant_step: only the k-step rows
            out.append((label + (f" ({variant})" if variant else ""), run))
        for k in args.graph_steps:  # the same model, k steps per CUDA-graph replay: no host time per step
            tag = f"{label}, {k} steps per CUDA graph" + (f" ({variant})" if variant else "")
            out.append((tag, graphed_run(m, model, ids, args, k, prefer, rows)))
    return out


def plot_rows(rows: list[dict], device: str, path: Path) -> None:
    """A bar per row (tokens/s, log scale) with each round as a dot, labels wrapped; nothing without
    matplotlib. Also ``python -c`` on a saved ``decode_speed.json`` to redraw it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in rows if "tokens_per_s" in r]
    labels = [textwrap.fill(f"{r['model']} b{r['batch']}: {r['row']}", 60) for r in ok][::-1]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(12, 0.3 * lines + 0.4 * len(ok) + 1.5))
    ax.barh(labels, [r["tokens_per_s"] for r in ok][::-1], color="tab:blue", alpha=0.7, label="median")
    for y, r in enumerate(ok[::-1]):
        rounds = r.get("rounds_tokens_per_s", [])
        ax.plot(rounds, [y] * len(rounds), "k.", label="rounds" if y == 0 and rounds else None)
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s (log)")
    ax.set_title(f"greedy decode, static cache, {device}")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="decode_speed_out")
    ap.add_argument("--workloads", default="110M:1,10.6M:1,110M:32")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (--workloads quick:1)")
    ap.add_argument("--quant", default="", help="comma-separated tinylm-quant schemes (batch 1)")
    ap.add_argument("--quant-model", default="110M", help="the model of the --quant rows")
    rows = "previous,notune,opaque,fast,fused,math,kernel,autotune,triton_gemv,int8_reduction,quant_step"
    ap.add_argument("--skip", default="", help=f"rows to leave out, any of {rows}")
    ap.add_argument(
        "--decode-attention",
        default="sdpa",
        help="the static cache's decode attention (sdpa, math, kernel, kernel_rope) in the --inductor, "
        "--graph-steps and --quant rows; a comma list gives each --inductor row once per attention",
    )
    ap.add_argument(
        "--inductor",
        action="append",
        default=[],
        help="a row with these Inductor settings, e.g. 'combo_kernels=True' (repeatable)",
    )
    ap.add_argument(
        "--fast-options",
        default="",
        help="Inductor settings for the --graph-steps and --quant rows, e.g. 'combo_kernels=True'",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every row this many times, rows interleaved (paired ratios to the first row)",
    )
    ap.add_argument(
        "--linear-kernel",
        action="store_true",
        help="each --inductor row once more with tinylm-kernels' few-row linear in place of cuBLAS",
    )
    ap.add_argument(
        "--decode-blocks",
        nargs="?",
        const=["epilogue"],
        default="",
        type=lambda s: [f for f in s.split(",") if f],
        help="each --inductor row (per --decode-attention) once more with tinylm.cache.decode_blocks, per "
        "fold plan (comma list of epilogue, prologue; bare flag: epilogue): small ops folded into the "
        "few-row decode_linear kernel",
    )
    ap.add_argument(
        "--int8-linear-form",
        action="store_true",
        help="with --quant int8_weight_only_gemv: a row with the int8 product compiled as F.linear",
    )
    ap.add_argument(
        "--int8-fold-norms",
        action="append",
        default=[],
        help="with --quant int8_weight_only_gemv: a row with the RMSNorms folded into the int8 GEMVs of "
        "these sites (attn, mlp; tinylm.quant.gemv.fold_rms_norms); repeatable",
    )
    ap.add_argument(
        "--int8-pdl",
        action="store_true",
        help="each --int8-fold-norms row once more with the folded GEMVs launched with programmatic "
        "dependent launch (tinylm-kernels int8_gemv_pdl; Hopper)",
    )
    ap.add_argument("--graph-steps", default="", help="rows with k steps per CUDA graph, e.g. 8,32")
    ap.add_argument("--profile", default="", help="kernel table for rows whose label contains this text")
    args = ap.parse_args()
    # every row compiles greedy_step once more (its own model, cache and options): more than Dynamo's
    # default of 8 variants of one function
    torch._dynamo.config.recompile_limit = 64
    args.quant = [s for s in args.quant.split(",") if s]
    args.skip = set(args.skip.split(","))
    args.graph_steps = [int(k) for k in args.graph_steps.split(",") if k]
    args.inductor_attention = args.decode_attention.split(",")
    args.decode_attention = args.inductor_attention[0]  # the other rows'
    for a in args.inductor_attention:
        if a not in DECODE_ATTENTION:
            raise SystemExit(f"unknown --decode-attention {a!r}; known: {', '.join(DECODE_ATTENTION)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    rows = []
    jobs = [(w.split(":")[0], int(w.split(":")[1]), "decode") for w in args.workloads.split(",") if w]
    jobs += [(args.quant_model, 1, "quant")] if args.quant else []
    for name, batch, kind in jobs:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        torch._dynamo.reset()
        model = build(name, dev, torch.bfloat16)
        ids = torch.randint(0, model.config.vocab_size, (batch, args.prompt), device=dev,
                            generator=torch.Generator(dev).manual_seed(0))  # fmt: skip
        with torch.no_grad():
            ref = static_greedy_generate(model, ids, args.new_tokens)  # eager static: the token oracle
        timed = []
        for label, run in (variants if kind == "decode" else quant_variants)(model, ids, args):
            row = {"model": name, "batch": batch, "row": label}
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    toks = run(args.new_tokens)  # compiles
                    row["compile_s"] = time.perf_counter() - t0
                    row["agreement_vs_eager_static"] = (toks == ref).float().mean().item()
                    row.update(rate(run, batch, args.new_tokens, args.repeats, dev.type))
                    if args.profile and args.profile in label:  # trace + top-kernels table into --out
                        tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}_b{batch}_{label}")
                        with profiled(True, dev, out_dir, tag, row_limit=25):
                            run(34)
                            torch.cuda.synchronize() if dev.type == "cuda" else None
            except Exception as e:  # one failing row must not lose the others
                traceback.print_exc()
                row["error"] = repr(e)[:300]
            rows.append(row)
            timed.append((row, run)) if "error" not in row else None
            print(json.dumps(row), flush=True)
        interleaved_rounds(timed, batch, args, dev.type)
    for r in rows:
        base = next((q for q in rows if q["model"] == r["model"] and q["batch"] == r["batch"]
                     and q["row"].startswith("plain") and "tokens_per_s" in q), None)  # fmt: skip
        if base and "tokens_per_s" in r:
            r["vs_plain_loop"] = r["tokens_per_s"] / base["tokens_per_s"]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    env = {"device": name, "torch": torch.__version__, "argv": sys.argv}
    (out_dir / "decode_speed.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(f"\n## decode speed on {env['device']}, torch {env['torch']}\n")
    print("| model | batch | row | tok/s | us/step | vs plain loop | agreement | compile s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['batch']} | {r['row']} | failed: {r['error'][:90]} | | | | |")
            continue
        print(f"| {r['model']} | {r['batch']} | {r['row']} | {r['tokens_per_s']:,.0f} | {r['step_us']:.0f} | "
              f"{r.get('vs_plain_loop', float('nan')):.2f}x | {r['agreement_vs_eager_static']:.3f} | "
              f"{r['compile_s']:.1f} |")  # fmt: skip
    paired = [r for r in rows if "vs_first_row_rounds" in r]
    if paired:
        print(f"\n### paired per round ({args.rounds} rounds): each row / its workload's first row\n")
        print("| model | batch | row | tok/s per round | ratio median | ratio min-max |")
        print("|---|---:|---|---|---:|---|")
        for r in paired:
            v = r["vs_first_row_rounds"]
            per_round = ", ".join(f"{x:,.0f}" for x in r["rounds_tokens_per_s"])
            print(f"| {r['model']} | {r['batch']} | {r['row']} | {per_round} | "
                  f"{statistics.median(v):.2f}x | {min(v):.2f}-{max(v):.2f}x |")  # fmt: skip
    plot_rows(rows, env["device"], out_dir / "decode_speed.png")


if __name__ == "__main__":
    main()
