"""Benchmark of RMSNorm forward and forward+backward on one GPU, against the baselines, in one run.

Methods: our CUDA kernels (``tinylm.kernels`` ``cuda`` backend), our Triton backend if registered, the
naive PyTorch reference, ``torch.nn.functional.rms_norm``, ``torch.compile`` of the reference, and
Liger-Kernel's ``liger_rms_norm`` when importable. Each call (forward, or forward + ``autograd.grad``) is
captured in a CUDA graph after warm-up, so Python and launch overhead stay off the clock for every method
alike; a timing is the median of CUDA-event timings of graph replays, each after an L2 flush (a 256 MiB
write), so no method reads its inputs from a warm cache. A device-to-device copy measured in the same run
gives the bandwidth ceiling. Methods that cannot be captured are timed eagerly (marked "eager").

Bytes counted (the same for every method, so % of copy bandwidth compares times):
    forward: read x and w, write y                      = (2 R N + N) * bytes/elem
    backward: read x, dy and w, write dx and dw         = (3 R N + 2 N) * bytes/elem
(rstd, R floats, is left out: 2/N of the traffic at most.)

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python packages/tinylm-kernels/benchmarks/bench_rms_norm.py --json out.json [--variants]

``--variants`` adds the raw launches of our kernels (no custom-op or autograd layer): the forward kernel and
the backward kernels with the persistent grid capped at 1, 2, 3 blocks per SM (0 = as many as fit).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tinylm.kernels import registry
from tinylm.kernels.rms_norm import rms_norm_reference
from tinylm.kernels.rms_norm_cuda import extension, rms_norm_cuda

SHAPES = ((4096, 4096), (16384, 4096), (32768, 1024), (8192, 8192))
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
EPS = 1e-6
_flush = None


def bench(fn: Callable[[], object], warmup: int = 5, reps: int = 30, graph: bool = True) -> float:
    """Median microseconds of ``fn`` on the GPU (replayed from a CUDA graph), each call after an L2 flush."""
    global _flush
    if _flush is None:
        _flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture wants
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        fn = g.replay
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends, strict=True):
        _flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) * 1e3


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src), reps=20, graph=False)  # in a graph it becomes a copy-engine memcpy
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e9


def methods() -> dict[str, Callable]:
    """name -> f(x, w) for every method available here (a fresh torch.compile each call: one per shape)."""
    out: dict[str, Callable] = {
        "tinylm cuda": lambda x, w: rms_norm_cuda(x, w, EPS),
    }
    triton = registry.backends("rms_norm").get("triton")
    if triton is not None and triton.available():
        out["tinylm triton"] = lambda x, w: triton.fn(x, w, EPS)
    out["torch naive"] = lambda x, w: rms_norm_reference(x, w, EPS)
    out["F.rms_norm"] = lambda x, w: F.rms_norm(x, (x.shape[-1],), w, EPS)
    out["torch.compile naive"] = torch.compile(lambda x, w: rms_norm_reference(x, w, EPS), dynamic=False)
    try:
        from liger_kernel.transformers.functional import liger_rms_norm

        out["liger"] = lambda x, w: liger_rms_norm(x, w, EPS, 0.0, "llama", False)
    except ImportError as e:
        print(f"liger-kernel not importable ({e}); skipped")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench_rms_norm.json", help="where to write the results")
    parser.add_argument("--variants", action="store_true", help="also time our kernels' launch variants")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()

    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth()
    print(f"device: {props.name}, torch {torch.__version__}; copy bandwidth {copy_gbs:.0f} GB/s")
    results = {"device": props.name, "torch": torch.__version__, "copy_gbps": copy_gbs, "rows": []}
    for dname, dtype in DTYPES.items():
        for rows, hidden in SHAPES:
            results["rows"] += bench_shape(dname, dtype, rows, hidden, copy_gbs, args.reps, args.variants)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1)
    print_table(results)


def bench_shape(
    dname: str, dtype: torch.dtype, rows: int, hidden: int, copy_gbs: float, reps: int, variants: bool
) -> list[dict]:
    """Every method, forward and forward+backward, on one shape (plus our launch variants if asked)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(rows, hidden, device="cuda", generator=g) + 0.5).to(dtype).requires_grad_()
    w = (torch.rand(hidden, device="cuda", generator=g) + 0.5).to(dtype).requires_grad_()
    dy = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype)
    size = dtype.itemsize
    fwd_bytes = (2 * rows * hidden + hidden) * size
    bwd_bytes = (3 * rows * hidden + 2 * hidden) * size
    ref = rms_norm_reference(x.detach(), w.detach(), EPS)
    max_err = (rms_norm_cuda(x.detach(), w.detach(), EPS).float() - ref.float()).abs().max().item()
    out = []
    torch._dynamo.reset()  # a fresh compile per shape, not a pile of recompilations
    for name, f in methods().items():

        def fwd(f: Callable = f) -> None:
            with torch.no_grad():
                f(x, w)

        def fwd_bwd(f: Callable = f) -> None:
            torch.autograd.grad(f(x, w), (x, w), dy)

        try:
            t_fwd, t_all = bench(fwd, reps=reps), bench(fwd_bwd, reps=reps)
        except RuntimeError as e:  # not capturable: time it eagerly
            print(f"{name}: CUDA graph capture failed ({str(e)[:200]}); timed eagerly")
            torch.cuda.synchronize()
            name += " (eager)"
            t_fwd, t_all = bench(fwd, reps=reps, graph=False), bench(fwd_bwd, reps=reps, graph=False)
        r = row(name, dname, rows, hidden, t_fwd, t_all, fwd_bytes, fwd_bytes + bwd_bytes, copy_gbs)
        if name == "tinylm cuda":
            r["max_abs_err_vs_reference"] = max_err
        out.append(r)
    if variants:  # raw launches of our kernels; backward grid: blocks per SM (0 = as many as fit)
        ext = extension()
        xd, wd = x.detach(), w.detach()
        t = bench(lambda: ext.rms_norm_fwd(xd, wd, EPS), reps=reps)
        out.append(row("cuda fwd kernel", dname, rows, hidden, t, None, fwd_bytes, 0, copy_gbs))
        _, rstd = ext.rms_norm_fwd(xd, wd, EPS)
        for bps in (0, 1, 2, 3):
            t = bench(lambda b=bps: ext.rms_norm_bwd(dy, xd, wd, rstd, b), reps=reps)
            out.append(
                row(f"cuda bwd kernels bps={bps}", dname, rows, hidden, t, None, bwd_bytes, 0, copy_gbs)
            )
    print(f"done {dname} {rows}x{hidden} (our max |err| vs reference {max_err:.3g})", flush=True)
    return out


def row(
    name: str,
    dtype: str,
    rows: int,
    hidden: int,
    t_fwd: float,
    t_all: float | None,
    fwd_bytes: int,
    all_bytes: int,
    copy_gbs: float,
) -> dict:
    """One result row with times (us), bandwidths (GB/s) and % of copy bandwidth."""
    out = {"method": name, "dtype": dtype, "shape": f"{rows}x{hidden}", "fwd_us": t_fwd}
    out["fwd_gbps"] = fwd_bytes / (t_fwd * 1e-6) / 1e9
    out["fwd_pct"] = 100 * out["fwd_gbps"] / copy_gbs
    if t_all is not None:
        out["fwdbwd_us"] = t_all
        out["fwdbwd_gbps"] = all_bytes / (t_all * 1e-6) / 1e9
        out["fwdbwd_pct"] = 100 * out["fwdbwd_gbps"] / copy_gbs
    return out


def print_table(results: dict) -> None:
    """Markdown table of the results."""
    print(
        f"\n{results['device']}, torch {results['torch']}, copy {results['copy_gbps']:.0f} GB/s "
        "(read+write); median of CUDA-event timings, L2 flushed before each call\n"
    )
    print(
        "| dtype | shape | method | fwd us | fwd GB/s | fwd % copy "
        "| fwd+bwd us | fwd+bwd GB/s | fwd+bwd % copy |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        tail = (
            f"{r['fwdbwd_us']:.1f} | {r['fwdbwd_gbps']:.0f} | {r['fwdbwd_pct']:.1f}"
            if "fwdbwd_us" in r
            else "| |"
        )
        print(
            f"| {r['dtype']} | {r['shape']} | {r['method']} | {r['fwd_us']:.1f} | {r['fwd_gbps']:.0f} | "
            f"{r['fwd_pct']:.1f} | {tail} |"
        )


if __name__ == "__main__":
    main()
