"""``quant`` mode: each quantization scheme's weight bytes, speed and agreement with the unquantized model.

Schemes come from ``tinylm.core.QUANT_SCHEMES`` (name -> ``function(model) -> model``), which tinylm-quant
fills when it is imported; ``quant_schemes=[...]`` picks some, empty means all registered. For the
baseline (``none``) and each scheme, on a deep copy of the same ``dtype`` model: bytes of parameters and
buffers (quantized tensor subclasses counted by their inner tensors), prefill latency of
``(batch_sizes[0], prompt_length)`` tokens, decode tokens/s as in the ``decode`` mode (``caches[0]``), and
against the baseline on that prompt: the logits' largest absolute difference, top-1 agreement, the mean
KL divergence of the next-token distributions (nats per token: a quality loss that needs no data set), and
the ratios of bytes and decode speed. A scheme that cannot run on this device (tinylm-quant's CUDA-only
schemes on CPU raise a RuntimeError saying what they need) is skipped with a note when no scheme was named,
and fails the run when it was named. Perplexity on real validation text: ``python -m tinylm.quant.eval``.
With no scheme registered the result says so and has no rows: nothing is measured.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from tinylm.core.bench.config import BENCH_MODES, BenchConfig
from tinylm.core.bench.inference import decode_timing, inference_models, tinylm_generator
from tinylm.core.bench.memory import MIB, tensor_bytes
from tinylm.core.bench.results import BenchResult
from tinylm.core.bench.timing import measure
from tinylm.core.bench.workload import new_cache, random_tokens
from tinylm.core.registry import QUANT_SCHEMES

NO_SCHEMES = (
    "no quantization schemes are registered, so nothing was measured: tinylm-quant registers its schemes "
    "in tinylm.core.QUANT_SCHEMES when imported (install it and import it before running mode=quant)"
)


def _measure_variant(
    name: str, model: torch.nn.Module, cfg: BenchConfig, ids: torch.Tensor, reference: torch.Tensor | None
) -> dict[str, Any]:
    device, cache = ids.device, cfg.caches[0]
    with torch.no_grad():
        logits = model(ids).logits.float()

        def prefill() -> None:
            model(ids, cache=new_cache(cache, cfg, ids.size(0), ids.size(1), device, cfg.torch_dtype))

        prefill_ms = measure(prefill, cfg.warmup, cfg.repeats, device).median
    decode = decode_timing(tinylm_generator(model, ids, cfg, cache, device), cfg, ids.size(0), device)
    stored = [*model.parameters(), *model.buffers()]
    row = {
        "scheme": name,
        "weights_mib": sum(tensor_bytes(t) for t in stored) / MIB,
        "prefill_ms": prefill_ms,
        "decode_tokens_per_s": decode["tokens_per_s"],
        "max_abs_logit_diff": 0.0,
        "top1_agreement": 1.0,
        "kl_vs_base": 0.0,
    }
    if reference is not None:
        row["max_abs_logit_diff"] = float((logits - reference).abs().max())
        row["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        ref_logp, logp = reference.log_softmax(-1), logits.log_softmax(-1)
        row["kl_vs_base"] = float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())
    return row


@BENCH_MODES.register("quant")
def bench_quant(cfg: BenchConfig) -> BenchResult:
    """Measure the unquantized model and every requested scheme on the same prompt."""
    names = cfg.quant_schemes or [n for n in QUANT_SCHEMES.names() if n != "none"]
    keys, units = ["scheme"], {"weights_mib": "MiB", "prefill_ms": "ms", "decode_tokens_per_s": "tokens/s"}
    if not names:
        return BenchResult(mode="quant", keys=keys, units=units, notes=[NO_SCHEMES])
    schemes = {name: QUANT_SCHEMES.get(name) for name in names}  # unknown names fail before any work
    device, base, _, notes = inference_models(cfg, baseline=False)
    ids = random_tokens(cfg, cfg.batch_sizes[0], cfg.prompt_length, device)
    with torch.no_grad():
        reference = base(ids).logits.float()
    rows, skipped = [_measure_variant("none", base, cfg, ids, None)], []
    for name, quantize in schemes.items():
        model = copy.deepcopy(base)
        try:
            quantized = quantize(model)
        except RuntimeError as e:
            if cfg.quant_schemes:
                raise ValueError(f"quantization scheme {name!r} cannot run here: {e}") from None
            skipped.append(f"skipped {name}: {e}")
            continue
        rows.append(
            _measure_variant(name, quantized if quantized is not None else model, cfg, ids, reference)
        )
    for row in rows:
        row["bytes_vs_base"] = row["weights_mib"] / rows[0]["weights_mib"]
        row["speed_vs_base"] = row["decode_tokens_per_s"] / rows[0]["decode_tokens_per_s"]
    return BenchResult(
        mode="quant",
        rows=rows,
        keys=keys,
        units=units,
        notes=[
            *notes,
            *skipped,
            f"batch {cfg.batch_sizes[0]}, prompt {cfg.prompt_length}, {cfg.new_tokens} new tokens, "
            f"cache {cfg.caches[0]}",
        ],
        plot={"kind": "bar", "y": ["decode_tokens_per_s"], "series": ["scheme"]},
    )
