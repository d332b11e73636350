"""Benchmark of fused linear + cross-entropy (forward + backward) on one GPU, against the baselines.

Methods, all computing the loss of ``x @ W.T`` against labels and the gradients of ``x`` and ``W``:
``unfused`` (the logits, then ``F.cross_entropy`` of their float32 upcast, as TinyLM's loss does),
``unfused-bf16`` (``F.cross_entropy`` of the half-precision logits directly), ``compiled`` (``torch.compile``
of ``unfused``), Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction`` when importable, and our
``fused_linear_cross_entropy`` with its ``triton`` and ``torch`` backends. Times are medians of CUDA-event
timings (eager calls, each after an L2 flush; Python overhead is negligible at these sizes). Memory is the
peak allocated during the call above what the inputs already hold.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python packages/tinylm-kernels/benchmarks/bench_cross_entropy.py --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_rms_norm import bench  # same directory: CUDA-event medians after an L2 flush

from tinylm.kernels import fused_linear_cross_entropy

SHAPES = ((8192, 1024, 32000), (16384, 2048, 32000), (8192, 2048, 128256))  # (N rows, D hidden, V vocab)


def methods(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    def unfused() -> object:
        loss = F.cross_entropy((x @ w.T).float(), y)
        return torch.autograd.grad(loss, (x, w))

    def unfused_half() -> object:
        loss = F.cross_entropy(x @ w.T, y)
        return torch.autograd.grad(loss, (x, w))

    compiled_loss = torch.compile(lambda a, b, t: F.cross_entropy((a @ b.T).float(), t))

    def compiled() -> object:
        return torch.autograd.grad(compiled_loss(x, w, y), (x, w))

    def ours(backend: str) -> Callable[[], object]:
        return lambda: torch.autograd.grad(fused_linear_cross_entropy(x, w, y, backend=backend), (x, w))

    out = {"unfused": unfused, "unfused-bf16": unfused_half, "compiled": compiled}
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        def liger() -> object:
            loss = LigerFusedLinearCrossEntropyFunction.apply(x, w, y)
            return torch.autograd.grad(loss[0] if isinstance(loss, tuple) else loss, (x, w))

        out["liger"] = liger
    except ImportError:
        pass
    out["ours-triton"] = ours("triton")
    out["ours-torch"] = ours("torch")
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def peak_extra_mib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for n, d, v in SHAPES:
        x = (torch.randn(n, d, device="cuda") * 0.5).bfloat16().requires_grad_()
        w = (torch.randn(v, d, device="cuda") * d**-0.5).bfloat16().requires_grad_()
        y = torch.randint(0, v, (n,), device="cuda")
        ref = None
        for name, fn in methods(x, w, y).items():
            try:
                grads = fn()
                if ref is None:
                    ref = grads
                err = max(rel_err(a, b) for a, b in zip(grads, ref, strict=True))
                us = bench(fn, warmup=3, reps=10, graph=False)
                mib = peak_extra_mib(fn)
            except Exception as e:  # a method that fails is reported, not fatal
                print(f"{name} N={n} D={d} V={v}: {type(e).__name__}: {str(e)[:200]}")
                continue
            rows.append(dict(method=name, n=n, d=d, v=v, ms=us / 1e3, peak_mib=mib, rel_err=err))
            print(f"{name:12} N={n} D={d} V={v} {us / 1e3:8.2f} ms {mib:9.0f} MiB err {err:.1e}", flush=True)
    print("\n| N x D x V | method | ms (fwd+bwd) | vs unfused | peak extra MiB | vs unfused | max rel err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        same = [b for b in rows if (b["n"], b["d"], b["v"]) == (r["n"], r["d"], r["v"])]
        base = next(b for b in same if b["method"] == "unfused")
        print(
            f"| {r['n']}x{r['d']}x{r['v']} | {r['method']} | {r['ms']:.2f} | {base['ms'] / r['ms']:.2f}x | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f} | {r['rel_err']:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
