"""``train_step`` mode: milliseconds per optimizer step, tokens/s, MFU and peak memory.

One step is what the Trainer does for one micro-batch: forward with labels under autocast (``dtype``),
backward (through a ``GradScaler`` for float16 on CUDA), global grad-norm clipping, an AdamW step (the
fused CUDA kernel on a GPU) and ``zero_grad(set_to_none=True)``, on a fixed random ``(batch_size,
block_size)`` batch already on the device (no data loading on the clock). The first step is timed on its
own (it includes ``torch.compile`` and the allocator's first growth), then ``warmup`` untimed steps, then
``repeats`` timed ones; the reported step time is their median.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from tinylm.core.bench.config import BENCH_MODES, BenchConfig, resolve_device
from tinylm.core.bench.flops import flops_per_token, measure_matmul_tflops, mfu, spec_peak_tflops
from tinylm.core.bench.profiling import PROFILE_NOTE, profiled
from tinylm.core.bench.results import BenchResult
from tinylm.core.bench.timing import Stopwatch, measure
from tinylm.core.bench.workload import build_model, model_label, random_tokens

MIB = 2**20


def max_rss_mib() -> float | None:
    """This process's peak resident set size in MiB (None where ``resource`` is missing, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def resolve_peak(cfg: BenchConfig, device: torch.device) -> tuple[float | None, str]:
    """The peak TFLOP/s MFU is measured against, and where it came from."""
    if cfg.peak_tflops is None:
        return None, "none"
    if cfg.peak_tflops == "measure":
        tflops = measure_matmul_tflops(device, cfg.torch_dtype)
        return tflops, f"measured {cfg.dtype} matmul on this device"
    return float(cfg.peak_tflops), "given (peak_tflops)"


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


@BENCH_MODES.register("train_step")
def bench_train_step(cfg: BenchConfig) -> BenchResult:
    """Time ``cfg.repeats`` training steps of ``cfg.model`` on ``(batch_size, block_size)`` random tokens."""
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    peak, peak_source = resolve_peak(cfg, device)  # before the model: the matmul gets the whole card
    if cuda:
        torch.cuda.empty_cache()
    model = build_model(cfg, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True if cuda else None)
    step_model = torch.compile(model) if cfg.compile else model
    batch, block = cfg.batch_size, cfg.block_size
    x = random_tokens(cfg, batch, block, device)
    y = random_tokens(cfg, batch, block, device, offset=1)
    amp = cfg.dtype != "float32"
    scaler = torch.amp.GradScaler("cuda") if cfg.dtype == "float16" and cuda else None

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if not amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=cfg.torch_dtype)

    def step() -> None:
        with autocast():
            loss = step_model(x, labels=y).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with Stopwatch(device) as first:
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with profiled(cfg.profile, device, cfg.out_dir, f"{cfg.name or cfg.mode}") as prof:
        stats = measure(step, warmup=cfg.warmup, repeats=cfg.repeats, device=device)
    peak_mem = torch.cuda.max_memory_allocated(device) / MIB if cuda else None
    rss = max_rss_mib()

    tokens_per_s = batch * block / (stats.median * 1e-3)
    fpt = flops_per_token(model, block)
    card = torch.cuda.get_device_name(device) if cuda else ""
    spec = spec_peak_tflops(card, cfg.torch_dtype) if cuda else None
    row = {
        "model": model_label(model),
        "batch_size": batch,
        "block_size": block,
        "dtype": cfg.dtype,
        "compile": cfg.compile,
        "step_ms": stats.median,
        "p10_ms": stats.p10,
        "p90_ms": stats.p90,
        "tokens_per_s": tokens_per_s,
        "model_tflops": tokens_per_s * fpt / 1e12,
        "mfu_pct": _percent(mfu(tokens_per_s, fpt, peak)),
        "mfu_spec_pct": _percent(mfu(tokens_per_s, fpt, spec)),
        "peak_mem": peak_mem if cuda else rss,
        "first_step_ms": first.ms,
    }
    notes = [
        f"model FLOPs/token {fpt:.4g} (6N + 12LHQT, N = parameters in matmuls); MFU against {peak_source}"
        + (f": {peak:.1f} TFLOP/s" if peak else "")
        + (f"; mfu_spec against the datasheet {spec:.0f} TFLOP/s" if spec else ""),
    ]
    if cuda:
        notes.append("peak_mem: torch.cuda.max_memory_allocated over the timed steps (all tensors)")
    else:
        notes.append("peak_mem on CPU is the process's max RSS (model, optimizer, Python and torch included)")
    if cfg.profile:
        notes.append(PROFILE_NOTE)
    return BenchResult(
        mode="train_step",
        rows=[row],
        keys=["model", "batch_size", "block_size", "dtype", "compile"],
        units={
            "step_ms": "ms",
            "p10_ms": "ms",
            "p90_ms": "ms",
            "tokens_per_s": "tokens/s",
            "model_tflops": "TFLOP/s",
            "mfu_pct": "%",
            "mfu_spec_pct": "%",
            "peak_mem": "MiB",
            "first_step_ms": "ms",
        },
        notes=notes,
        meta={
            "flops_per_token": fpt,
            "peak_tflops": peak,
            "peak_source": peak_source,
            "spec_peak_tflops": spec,
            "step_times_ms": stats.to_dict(),
            **({"profile": prof} if prof else {}),
        },
        plot={"kind": "bar", "y": ["tokens_per_s"], "series": ["model", "dtype", "compile"]},
    )
