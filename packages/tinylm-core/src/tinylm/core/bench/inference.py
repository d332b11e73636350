"""``prefill`` and ``decode`` modes, with Hugging Face transformers timed in the same run (``baseline=hf``).

prefill: one forward of ``(batch, prompt_length)`` random tokens into a fresh cache (no grad), per
cache x batch size x prompt length; latency and tokens/s. decode: greedy generation of ``new_tokens``
after a ``prompt_length`` prompt through ``tinylm.core.generate.stream`` with each cache, per batch size.
Decode time is measured as ``t(new_tokens) - t(1)``, the medians of generating ``new_tokens`` and one
token (the one-token run is the prefill plus the first sampled token), so decode tokens/s =
``batch * (new_tokens - 1) / that``. The same arithmetic is applied to HF ``generate`` on ``to_hf(model)``
(greedy, ``use_cache``, ``min_new_tokens = max_new_tokens`` and no EOS, so both make exactly as many
tokens), which makes the two columns directly comparable; ``same_tokens`` is the share of greedy tokens
the two agree on (1.0 in float32; lower precisions may flip near-ties). Weights are cast to ``dtype``;
``compile`` is not applied in these modes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from tinylm.core.bench.config import BENCH_MODES, BenchConfig, resolve_device
from tinylm.core.bench.profiling import PROFILE_NOTE, profiled
from tinylm.core.bench.results import BenchResult
from tinylm.core.bench.timing import measure
from tinylm.core.bench.workload import build_model, model_label, new_cache, random_tokens
from tinylm.core.generate import generate, stream
from tinylm.core.model.transformer import TinyLM

log = logging.getLogger(__name__)


def inference_models(cfg: BenchConfig, baseline: bool = True) -> tuple[torch.device, TinyLM, Any, list[str]]:
    """``(device, model, hf_model or None, notes)``, both in eval mode with ``cfg.dtype`` weights.

    The HF model is built only with ``cfg.baseline == "hf"`` and ``baseline``.
    """
    device = resolve_device(cfg.device)
    model = build_model(cfg, device=torch.device("cpu"))
    notes = [f"model {model_label(model)}, weights in {cfg.dtype}"]
    hf = None
    if cfg.baseline == "hf" and baseline:
        try:
            from tinylm.core.hf import to_hf

            hf = to_hf(model).to(device=device, dtype=cfg.torch_dtype).eval()
            hf.generation_config.eos_token_id = None  # never stop early: exactly max_new_tokens
            notes.append(f"baseline: transformers {_version()} {type(hf).__name__} (to_hf, same weights)")
        except ImportError:
            notes.append("baseline=hf skipped: transformers is not installed (pip install tinylm-core[hf])")
        except ValueError as e:
            notes.append(f"baseline=hf skipped: this model has no transformers equivalent ({e})")
    if cfg.compile:
        notes.append("compile=true is ignored by prefill/decode (eager models on both sides)")
    if cfg.profile:
        notes.append(PROFILE_NOTE)
    return device, model.to(device=device, dtype=cfg.torch_dtype).eval(), hf, notes


def _version() -> str:
    import transformers

    return transformers.__version__


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


@BENCH_MODES.register("prefill")
def bench_prefill(cfg: BenchConfig) -> BenchResult:
    """Prefill latency per cache x batch size x prompt length (and HF's, with ``baseline=hf``)."""
    device, model, hf, notes = inference_models(cfg)
    rows = []
    with profiled(cfg.profile, device, cfg.out_dir, cfg.name or cfg.mode) as prof, torch.no_grad():
        hf_ms: dict[tuple[int, int], float] = {}
        for cache in cfg.caches:
            for batch in cfg.batch_sizes:
                for length in cfg.prompt_lengths:
                    ids = random_tokens(cfg, batch, length, device)

                    def forward(ids: torch.Tensor = ids, cache: str = cache, batch: int = batch) -> None:
                        c = new_cache(cache, cfg, batch, ids.size(1), device, cfg.torch_dtype)
                        model(ids, cache=c)

                    stats = measure(forward, cfg.warmup, cfg.repeats, device)
                    row = {
                        "cache": cache,
                        "batch_size": batch,
                        "prompt_length": length,
                        "latency_ms": stats.median,
                        "p10_ms": stats.p10,
                        "p90_ms": stats.p90,
                        "tokens_per_s": batch * length / (stats.median * 1e-3),
                    }
                    if hf is not None:
                        if (batch, length) not in hf_ms:
                            hf_stats = measure(
                                lambda ids=ids: hf(input_ids=ids, use_cache=True),
                                cfg.warmup,
                                cfg.repeats,
                                device,
                            )
                            hf_ms[batch, length] = hf_stats.median
                        row["hf_latency_ms"] = hf_ms[batch, length]
                        row["speedup"] = _ratio(row["hf_latency_ms"], row["latency_ms"])
                    rows.append(row)
    return BenchResult(
        mode="prefill",
        rows=rows,
        keys=["cache", "batch_size", "prompt_length"],
        units={
            "latency_ms": "ms",
            "p10_ms": "ms",
            "p90_ms": "ms",
            "tokens_per_s": "tokens/s",
            "hf_latency_ms": "ms",
            "speedup": "x",
        },
        notes=notes
        + (["speedup = hf_latency_ms / latency_ms (> 1: TinyLM is faster)"] if hf is not None else []),
        meta={"profile": prof} if prof else {},
        plot={
            "kind": "line",
            "x": "prompt_length",
            "y": ["latency_ms", "hf_latency_ms"],
            "series": ["cache", "batch_size"],
            "logx": True,
        },
    )


def decode_timing(
    make_run: Callable[[int], Callable[[], Any]], cfg: BenchConfig, batch: int, device: torch.device
) -> dict[str, float]:
    """Prefill and decode speed of ``make_run(n)`` (a callable making ``n`` tokens); see the module doc."""
    full = measure(make_run(cfg.new_tokens), cfg.warmup, cfg.repeats, device)
    first = measure(make_run(1), cfg.warmup, cfg.repeats, device)
    steps = cfg.new_tokens - 1
    decode_ms = max(full.median - first.median, 1e-6)
    return {
        "prefill_ms": first.median,
        "step_ms": decode_ms / steps,
        "tokens_per_s": batch * steps / (decode_ms * 1e-3),
        "e2e_tokens_per_s": batch * cfg.new_tokens / (full.median * 1e-3),
    }


def tinylm_generator(
    model: TinyLM, ids: torch.Tensor, cfg: BenchConfig, cache: str, device: torch.device
) -> Callable[[int], Callable[[], None]]:
    """``n -> run``: greedy ``stream`` of ``n`` tokens with a fresh ``cache``."""
    max_len = ids.size(1) + cfg.new_tokens

    def make_run(n: int) -> Callable[[], None]:
        def run() -> None:
            c = new_cache(cache, cfg, ids.size(0), max_len, device, cfg.torch_dtype)
            for _ in stream(model, ids, n, temperature=0.0, cache=c):
                pass

        return run

    return make_run


def hf_generator(hf: Any, ids: torch.Tensor) -> Callable[[int], Callable[[], Any]]:
    """``n -> run``: transformers greedy ``generate`` of exactly ``n`` tokens with its default cache."""
    mask = torch.ones_like(ids)

    def make_run(n: int) -> Callable[[], Any]:
        return lambda: hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )

    return make_run


@BENCH_MODES.register("decode")
def bench_decode(cfg: BenchConfig) -> BenchResult:
    """Decode tokens/s per cache x batch size, and HF ``generate``'s on the same weights (``baseline=hf``)."""
    device, model, hf, notes = inference_models(cfg)
    rows = []
    hf_cols: dict[int, dict[str, Any]] = {}
    with profiled(cfg.profile, device, cfg.out_dir, cfg.name or cfg.mode) as prof:
        for cache in cfg.caches:
            for batch in cfg.batch_sizes:
                ids = random_tokens(cfg, batch, cfg.prompt_length, device)
                ours = decode_timing(tinylm_generator(model, ids, cfg, cache, device), cfg, batch, device)
                row = {
                    "cache": cache,
                    "batch_size": batch,
                    "prompt_length": cfg.prompt_length,
                    "new_tokens": cfg.new_tokens,
                    **ours,
                }
                if hf is not None:
                    if batch not in hf_cols:
                        theirs = decode_timing(hf_generator(hf, ids), cfg, batch, device)
                        hf_cols[batch] = {
                            "hf_prefill_ms": theirs["prefill_ms"],
                            "hf_tokens_per_s": theirs["tokens_per_s"],
                            "hf_e2e_tokens_per_s": theirs["e2e_tokens_per_s"],
                            "same_tokens": _agreement(model, hf, ids, cfg.new_tokens),
                        }
                    row.update(hf_cols[batch])
                    row["speedup"] = _ratio(row["tokens_per_s"], row["hf_tokens_per_s"])
                rows.append(row)
    tok_s = "tokens/s"
    return BenchResult(
        mode="decode",
        rows=rows,
        keys=["cache", "batch_size"],
        units={
            "prefill_ms": "ms",
            "step_ms": "ms",
            "tokens_per_s": tok_s,
            "e2e_tokens_per_s": tok_s,
            "hf_prefill_ms": "ms",
            "hf_tokens_per_s": tok_s,
            "hf_e2e_tokens_per_s": tok_s,
            "speedup": "x",
        },
        notes=notes
        + ["tokens_per_s = batch x (new_tokens - 1) / (t(new_tokens) - t(1)): decode steps only"]
        + (["speedup = tokens_per_s / hf_tokens_per_s (> 1: TinyLM is faster)"] if hf is not None else []),
        meta={"profile": prof} if prof else {},
        plot={
            "kind": "line",
            "x": "batch_size",
            "y": ["tokens_per_s", "hf_tokens_per_s"],
            "series": ["cache"],
            "logx": True,
        },
    )


@torch.no_grad()
def _agreement(model: TinyLM, hf: Any, ids: torch.Tensor, n: int) -> float:
    """Share of the ``n`` greedy tokens per row that TinyLM and the HF model agree on."""
    ours = generate(model, ids, n, temperature=0.0)[:, ids.size(1) :]
    theirs = hf_generator(hf, ids)(n)()[:, ids.size(1) :]
    return float((ours == theirs.to(ours.device)).float().mean())
