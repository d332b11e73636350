"""int8 GEMV vs cuBLAS bf16 at batch 1 with the weights streamed from HBM, per tile configuration.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \\
        python3 packages/tinylm-kernels/benchmarks/bench_int8_gemv_hbm.py --json out.json

A decode step reads every weight once, from HBM; a microbenchmark that calls one layer in a loop reads it
from L2 (50 MB on an H100) and flatters whichever kernel has the most latency to hide. Here each shape
gets 40 distinct weight copies cycled inside one CUDA graph (no launch overhead, nothing left in L2), and
every tile of ``TUNE_CONFIGS`` is timed as well as the autotuned launcher. (``bench_rms_norm.bench`` flushes
L2 instead, but times one replay of one call: for a ~3 us kernel the graph launch would dominate.) Prints
a markdown table (us/call) and writes ``{"device", "rows"}`` to ``--json`` (``apps/bench.py mode=kernels``).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tinylm.kernels import int8_gemv_triton as gemv

COPIES = 40
SHAPES = ((2304, 768), (768, 768), (4096, 768), (768, 2048), (2048, 768))  # fused qkv, o, gate/up, down


def us_per_call(calls: list) -> float:
    for call in calls:  # warm-up (and autotuning) outside the graph
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (5 * len(calls)) * 1e3


def measure_shape(n: int, k: int) -> dict:
    """One row: cuBLAS bf16, the autotuned int8 launcher, the best and worst fixed tile (us per call)."""
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(1, k, device=dev, dtype=dt)
    weights = [torch.randn(n, k, device=dev, dtype=dt) for _ in range(COPIES)]
    qweights = [torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8) for _ in range(COPIES)]
    scale = torch.rand(n, device=dev, dtype=dt) * 0.01
    y = torch.empty(1, n, device=dev, dtype=dt)
    bf16 = us_per_call([lambda w=w: F.linear(x, w) for w in weights])
    tuned = us_per_call([lambda q=q: gemv.int8_gemv(x, q, scale) for q in qweights])

    def tile_call(q: torch.Tensor, bn: int, bk: int, warps: int) -> None:
        gemv._int8_gemv_kernel[(-(-n // bn), 1)](
            y, x, q, scale, scale, scale, n, k, 1e-6, x.stride(0), q.stride(0), y.stride(0),
            HAS_BIAS=False, NORM=False, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
        )  # fmt: skip

    tiles = sorted(
        (us_per_call([lambda q=q, c=cfg: tile_call(q, *c) for q in qweights]), cfg)
        for cfg in gemv.TUNE_CONFIGS
    )
    (best_us, best), (worst_us, _) = tiles[0], tiles[-1]
    return {"n": n, "k": k, "cublas_bf16_us": bf16, "int8_autotuned_us": tuned, "best_tile": list(best),
            "best_tile_us": best_us, "worst_tile_us": worst_us}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench_int8_gemv_hbm.json", help="where to write the results")
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}; us per call, weights from HBM\n")
    print("| N | K | cuBLAS bf16 | int8 autotuned | best tile (N, K, warps) | its us | worst tile us |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    rows = []
    for n, k in SHAPES:
        r = measure_shape(n, k)
        rows.append(r)
        cells = [n, k, f"{r['cublas_bf16_us']:.2f}", f"{r['int8_autotuned_us']:.2f}", tuple(r["best_tile"]),
                 f"{r['best_tile_us']:.2f}", f"{r['worst_tile_us']:.2f}"]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    with open(args.json, "w") as fh:
        json.dump({"device": device, "torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
