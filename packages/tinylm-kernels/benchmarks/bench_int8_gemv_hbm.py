"""int8 GEMV vs cuBLAS bf16 at batch 1 with the weights streamed from HBM, per tile configuration.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \\
        python3 packages/tinylm-kernels/benchmarks/bench_int8_gemv_hbm.py

A decode step reads every weight once, from HBM; a microbenchmark that calls one layer in a loop reads it
from L2 (50 MB on an H100) and flatters whichever kernel has the most latency to hide. Here each shape
gets 40 distinct weight copies cycled inside one CUDA graph (no launch overhead, nothing left in L2), and
every tile of ``TUNE_CONFIGS`` is timed as well as the autotuned launcher. Prints a markdown table (us/call).
"""

from __future__ import annotations

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


def measure_shape(n: int, k: int) -> str:
    """One table row: cuBLAS bf16, the autotuned int8 launcher, the best and worst fixed tile."""
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
            y, x, q, scale, scale, n, k, x.stride(0), q.stride(0), y.stride(0),
            HAS_BIAS=False, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
        )  # fmt: skip

    tiles = sorted(
        (us_per_call([lambda q=q, c=cfg: tile_call(q, *c) for q in qweights]), cfg)
        for cfg in gemv.TUNE_CONFIGS
    )
    best, worst = tiles[0], tiles[-1]
    return f"| {n} | {k} | {bf16:.2f} | {tuned:.2f} | {best[1]} | {best[0]:.2f} | {worst[0]:.2f} |"


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per call, weights from HBM\n")
    print("| N | K | cuBLAS bf16 | int8 autotuned | best tile (N, K, warps) | its us | worst tile us |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    for n, k in SHAPES:
        print(measure_shape(n, k), flush=True)


if __name__ == "__main__":
    main()
