"""Where the few-row GEMM floor comes from: weights in L2 or not, and launch latency between kernels.

    cd packages/tinylm-kernels/benchmarks && python3 bench_gemm_floor.py   # needs a CUDA GPU and Triton

At decode time every projection of the ~110M model takes 3.5-6 us in cuBLAS on an H100 whatever its size
(BENCHMARKS 7f), three or more times what its bytes need. Two questions, each timed inside CUDA graphs:

1. Is it the first trip to HBM? Per layer, the four products of a block (q/k/v, o, gate/up, down) for 1 and
   32 rows, with the weights cold (40 layers cycled, more than L2 holds), hot (one layer repeated: in L2),
   and with the layer's weights prefetched into L2 first (``prefetch.global.L2::evict_last`` from a small
   Triton kernel; for this layer just before, or for the next layer at the start of this one).
2. Is it the launch? A chain of 48 dependent GEMVs (a Triton kernel, each reading the previous output)
   launched plainly and with programmatic dependent launch (``launch_pdl=True``, ``gdc_wait`` first in the
   kernel), so that a kernel launches while the one before it finishes.

Prints two markdown tables (us per layer, us per GEMV).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

D, QKV, FF, LAYERS = 768, 2304, 2048, 40
SHAPES = ((QKV, D), (D, D), (2 * FF, D), (D, FF))  # q/k/v, o, gate/up, down


@triton.jit
def _prefetch_kernel(P, n_lines, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs = tl.minimum(offs, n_lines - 1).to(tl.int64) * 128  # one 128-byte line per lane
    tl.inline_asm_elementwise(
        "prefetch.global.L2::evict_last [$1]; mov.b32 $0, 0;", "=r,l", [P + offs], dtype=tl.int32,
        is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def _gemv_kernel(Y, X, W, N, K, PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()  # the previous kernel's writes are visible after this
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        w_mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        w = tl.load(W + offs_n[:, None] * K + offs_k[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(Y + offs_n, acc.to(Y.dtype.element_ty), mask=offs_n < N)


def prefetch(buf: torch.Tensor, block: int = 1024) -> None:
    """Ask L2 for every 128-byte line of ``buf`` (returns at once; the lines arrive in the background)."""
    b = buf.view(torch.uint8)
    n = triton.cdiv(b.numel(), 128)
    _prefetch_kernel[(triton.cdiv(n, block),)](b, n, BLOCK=block, num_warps=4)


def graph_us(fn, per: int) -> float:
    """Median over 5 timings of 20 replays of one CUDA graph of ``fn``, in us per ``per`` units."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 20 / per * 1e3)
    return sorted(times)[2]


def l2_table() -> None:
    per_layer = sum(n * k for n, k in SHAPES)
    bufs = [torch.randn(per_layer, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(LAYERS)]
    layers = []
    for buf in bufs:
        views, o = [], 0
        for n, k in SHAPES:
            views.append(buf[o : o + n * k].view(n, k))
            o += n * k
        layers.append(views)
    print(f"\n1. Four products per layer, {per_layer * 2 / 1e6:.1f} MB of weights, {LAYERS} layers cycled\n")
    print("| rows | weights | us per layer |\n|---:|---|---:|")
    for m in (1, 32):
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for n, k in SHAPES]

        def run(ws: list[torch.Tensor], xs: list[torch.Tensor] = xs) -> None:
            for x, w in zip(xs, ws, strict=True):
                F.linear(x, w)

        def prefetch_this() -> None:
            for buf, ws in zip(bufs, layers, strict=True):
                prefetch(buf)
                run(ws)

        def prefetch_next() -> None:
            prefetch(bufs[0])
            for i, ws in enumerate(layers):
                if i + 1 < LAYERS:
                    prefetch(bufs[i + 1])
                run(ws)

        rows = [
            ("cold (from HBM)", lambda: [run(ws) for ws in layers]),
            ("hot (one layer repeated, in L2)", lambda: [run(layers[0]) for _ in layers]),
            ("prefetched just before", prefetch_this),
            ("next layer prefetched at layer start", prefetch_next),
            ("the prefetch kernel alone", lambda: [prefetch(b) for b in bufs]),
        ]
        for name, fn in rows:
            print(f"| {m} | {name} | {graph_us(fn, LAYERS):.2f} |", flush=True)


def pdl_table(chain: int = 48) -> None:
    weights = [torch.randn(D, D, device="cuda", dtype=torch.bfloat16) / D**0.5 for _ in range(chain)]
    x0 = torch.randn(D, device="cuda", dtype=torch.bfloat16)
    ref = x0.float()
    for w in weights:
        ref = (w.float() @ ref).to(torch.bfloat16).float()

    def run(pdl: bool) -> torch.Tensor:
        x = x0
        for w in weights:
            y = torch.empty(D, device="cuda", dtype=torch.bfloat16)
            extra = {"launch_pdl": True} if pdl else {}
            _gemv_kernel[(D // 4,)](y, x, w, D, D, PDL=pdl, BLOCK_N=4, BLOCK_K=512, num_warps=4, **extra)
            x = y
        return x

    print(f"\n2. A chain of {chain} dependent {D}x{D} GEMVs in one CUDA graph\n")
    print("| launch | us per GEMV | max error vs float32 chain |\n|---|---:|---:|")
    for pdl in (False, True):
        err = (run(pdl).float() - ref).abs().max().item()
        us = graph_us(lambda pdl=pdl: run(pdl), chain)
        print(f"| {'programmatic dependent launch' if pdl else 'plain'} | {us:.2f} | {err:.3g} |", flush=True)


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; bf16")
    l2_table()
    pdl_table()


if __name__ == "__main__":
    main()
