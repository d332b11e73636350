"""Few-row linear (decode projections) vs cuBLAS, bf16, with the weights streamed from HBM, per tile.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \\
        python3 packages/tinylm-kernels/benchmarks/bench_linear.py --rows 1,32 --json out.json

For each projection shape of the ~110M decode step (fused q/k/v, o, fused gate/up, down, the tied head)
and each row count, times ``F.linear`` (cuBLAS), ``few_row_linear`` with ``choose_tile``'s tile, and a
sweep of tiles (``BLOCK_N``, ``BLOCK_K``). As in ``bench_int8_gemv_hbm.py``, every shape gets distinct
weight copies cycled inside one CUDA graph (no launch overhead, nothing left in L2). Prints a markdown
table (us per call) and writes ``{"device", "rows"}`` to ``--json``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
from bench_int8_gemv_hbm import us_per_call

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,32", help="row counts (batch sizes at decode)")
    parser.add_argument("--json", default="bench_linear.json", help="where to write the results")
    args = parser.parse_args()
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
