"""Few-row linear (decode projections) vs cuBLAS, bf16, with the weights streamed from HBM, per tile.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \\
        python3 packages/tinylm-kernels/benchmarks/bench_linear.py --rows 1,32 --json out.json

For each projection shape of the ~110M decode step (fused q/k/v, o, fused gate/up, down, the tied head)
and each row count, times ``F.linear`` (cuBLAS), ``few_row_linear`` with ``choose_tile``'s tile, and a
sweep of tiles (``BLOCK_N``, ``BLOCK_K``). As in ``bench_int8_gemv_hbm.py``, every shape gets distinct
weight copies cycled inside one CUDA graph (no launch overhead, nothing left in L2). Prints a markdown
table (us per call) and writes ``{"device", "rows"}`` to ``--json``.

``--folds`` times the products of a decode block (``tinylm.cache.decode_blocks``) instead: q/k/v and
gate/up with the RMSNorm folded in, o with the residual added, down with SwiGLU and the residual, gate/up
with SwiGLU in the epilogue (``swiglu_out``); per product
cuBLAS alone (no fold), ours without the fold, ours with it at ``choose_tile``'s tile, and the best of a sweep
of tiles, warps and pipeline stages with the fold.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
from bench_int8_gemv_hbm import us_per_call

from tinylm.kernels.linear import decode_linear_reference
from tinylm.kernels.linear_triton import choose_tile, few_row_linear

SHAPES = ((2304, 768), (768, 768), (4096, 768), (768, 2048), (32000, 768))  # qkv, o, gate/up, down, head


def measure(m: int, n: int, k: int, copies: int) -> dict:
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(m, k, device=dev, dtype=dt)
    weights = [torch.randn(n, k, device=dev, dtype=dt) / k**0.5 for _ in range(copies)]
    ref = F.linear(x.float(), weights[0].float())
    cublas = us_per_call([lambda w=w: F.linear(x, w) for w in weights])
    chosen = choose_tile(m, n, k)
    tiles = {chosen}
    for bn, bk in itertools.product((16, 32, 64), (64, 128, 256)):
        tiles.add((chosen[0], bn, bk))
    timed = []
    for tile in sorted(tiles):
        err = (few_row_linear(x, weights[0], tile=tile).float() - ref).abs().max().item()
        if err > 0.05 * ref.abs().max().item():
            raise AssertionError(f"tile {tile}: max error {err} for {m}x{n}x{k}")
        timed.append((us_per_call([lambda w=w, t=tile: few_row_linear(x, w, tile=t) for w in weights]), tile))
    by_tile = dict((t, us) for us, t in timed)
    best_us, best = min(timed)
    return {"rows": m, "n": n, "k": k, "cublas_us": cublas, "chosen_tile": list(chosen),
            "chosen_us": by_tile[chosen], "best_tile": list(best), "best_us": best_us,
            "tiles": [[list(t), us] for us, t in timed]}  # fmt: skip


FOLDS = (  # (name, N, K, fold): the products of a decode block of the ~110M model
    ("q/k/v + norm", 2304, 768, "norm"),
    ("o + residual", 768, 768, "residual"),
    ("gate/up + norm", 4096, 768, "norm"),
    ("gate/up + swiglu out", 4096, 768, "swiglu_out"),
    ("down + swiglu + residual", 768, 2048, "swiglu,residual"),
)


def measure_fold(m: int, n: int, k: int, fold: str, copies: int = 40) -> dict:
    """One decode-block product: cuBLAS without the fold, ours without and with it, and the best swept
    (BLOCK_N, BLOCK_K, num_warps, num_stages) with it; us per call, weights from HBM."""
    dev, dt = "cuda", torch.bfloat16
    swiglu, swiglu_out = fold.startswith("swiglu,"), fold == "swiglu_out"
    x = torch.randn(m, 2 * k if swiglu else k, device=dev, dtype=dt)
    plain_x = torch.randn(m, k, device=dev, dtype=dt)
    g = torch.rand(k, device=dev, dtype=dt) + 0.5 if "norm" in fold else None
    r = torch.randn(m, n, device=dev, dtype=dt) if "residual" in fold else None
    weights = [torch.randn(n, k, device=dev, dtype=dt) / k**0.5 for _ in range(copies)]
    folded = dict(norm_weight=g, eps=1e-6, swiglu=swiglu, residual=r, swiglu_out=swiglu_out)
    f32 = lambda t: t.float() if t is not None else None  # noqa: E731
    ref = decode_linear_reference(
        x.float(), weights[0].float(), None, f32(g), 1e-6, swiglu, f32(r), swiglu_out
    )
    cublas = us_per_call([lambda w=w: F.linear(plain_x, w) for w in weights])
    plain = us_per_call([lambda w=w: few_row_linear(plain_x, w) for w in weights])
    chosen = choose_tile(m, n, k)
    timed = []
    for bn, bk, warps, stages in itertools.product((16, 32, 64), (128, 256), (2, 4, 8), (1, 2, 3)):
        tile = (chosen[0], bn, bk)
        opts = dict(tile=tile, num_warps=warps, num_stages=stages, **folded)
        try:
            err = (few_row_linear(x, weights[0], **opts).float() - ref).abs().max().item()
        except Exception as exc:  # a config the compiler or shared memory refuses
            print(f"  skip {tile} warps={warps} stages={stages}: {type(exc).__name__}", flush=True)
            continue
        if err > 0.05 * ref.abs().max().item():
            raise AssertionError(f"{fold} {tile} warps={warps} stages={stages}: max error {err}")
        us = us_per_call([lambda w=w, o=opts: few_row_linear(x, w, **o) for w in weights])
        timed.append((us, [bn, bk, warps, stages]))
    fused = us_per_call([lambda w=w: few_row_linear(x, w, **folded) for w in weights])
    best_us, best = min(timed)
    return {"rows": m, "n": n, "k": k, "fold": fold, "cublas_us": cublas, "plain_us": plain,
            "folded_us": fused, "chosen_tile": list(chosen), "best": best, "best_us": best_us,
            "configs": [[c, us] for us, c in timed]}  # fmt: skip


def main_folds(rows: list[int], path: str) -> None:
    head = "| rows | product | cuBLAS, no fold | ours, no fold | ours + fold | best (BN, BK, warps, stages)"
    print(head + " | its us |\n|---:|---|---:|---:|---:|---|---:|")
    out = []
    for m in rows:
        for name, n, k, fold in FOLDS:
            r = measure_fold(m, n, k, fold)
            out.append(r)
            cells = [m, name, f"{r['cublas_us']:.2f}", f"{r['plain_us']:.2f}", f"{r['folded_us']:.2f}",
                     tuple(r["best"]), f"{r['best_us']:.2f}"]  # fmt: skip
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    with open(path, "w") as fh:
        device = torch.cuda.get_device_name()
        json.dump({"device": device, "torch": torch.__version__, "folds": out}, fh, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,32", help="row counts (batch sizes at decode)")
    parser.add_argument("--json", default="bench_linear.json", help="where to write the results")
    parser.add_argument("--folds", action="store_true", help="the decode-block products, folds swept")
    args = parser.parse_args()
    if args.folds:
        return main_folds([int(r) for r in args.rows.split(",") if r], args.json)
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}; bf16, us per call, weights from HBM\n")
    print("| rows | N | K | cuBLAS | ours, chosen tile | chosen (BM, BN, BK) | best tile | its us |")
    print("|---:|---:|---:|---:|---:|---|---|---:|")
    out = []
    for m in (int(r) for r in args.rows.split(",") if r):
        for n, k in SHAPES:
            r = measure(m, n, k, copies=8 if n > 10000 else 40)
            out.append(r)
            cells = [m, n, k, f"{r['cublas_us']:.2f}", f"{r['chosen_us']:.2f}", tuple(r["chosen_tile"]),
                     tuple(r["best_tile"]), f"{r['best_us']:.2f}"]  # fmt: skip
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    with open(args.json, "w") as fh:
        json.dump({"device": device, "torch": torch.__version__, "rows": out}, fh, indent=1)


if __name__ == "__main__":
    main()
