"""``quant`` mode: each quantization scheme's weight bytes, speed and agreement with the unquantized model.

Schemes come from ``tinylm.core.QUANT_SCHEMES`` (name -> ``function(model) -> model``), which tinylm-quant
fills when it is imported; ``quant_schemes=[...]`` picks some, empty means all registered. For the
baseline (``none``) and each scheme, on a deep copy of the same ``dtype`` model: bytes of parameters and
buffers (quantized tensor subclasses counted by their inner tensors), prefill latency of
``(batch_sizes[0], prompt_length)`` tokens, decode tokens/s as in the ``decode`` mode (``caches[0]``), and
the logits' largest absolute difference and top-1 agreement with the baseline on that prompt. With no
scheme registered the result says so and has no rows: nothing is measured.
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
    }
    if reference is not None:
        row["max_abs_logit_diff"] = float((logits - reference).abs().max())
        row["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
    return row


@BENCH_MODES.register("quant")
def bench_quant(cfg: BenchConfig) -> BenchResult:
    """Measure the unquantized model and every requested scheme on the same prompt."""
    names = cfg.quant_schemes or QUANT_SCHEMES.names()
    keys, units = ["scheme"], {"weights_mib": "MiB", "prefill_ms": "ms", "decode_tokens_per_s": "tokens/s"}
    if not names:
        return BenchResult(mode="quant", keys=keys, units=units, notes=[NO_SCHEMES])
    schemes = {name: QUANT_SCHEMES.get(name) for name in names}  # unknown names fail before any work
    device, base, _, notes = inference_models(cfg, baseline=False)
    ids = random_tokens(cfg, cfg.batch_sizes[0], cfg.prompt_length, device)
    with torch.no_grad():
        reference = base(ids).logits.float()
    rows = [_measure_variant("none", base, cfg, ids, None)]
    for name, quantize in schemes.items():
        model = copy.deepcopy(base)
        quantized = quantize(model)
        rows.append(
            _measure_variant(name, quantized if quantized is not None else model, cfg, ids, reference)
        )
    return BenchResult(
        mode="quant",
        rows=rows,
        keys=keys,
        units=units,
        notes=[
            *notes,
            f"batch {cfg.batch_sizes[0]}, prompt {cfg.prompt_length}, {cfg.new_tokens} new tokens, "
            f"cache {cfg.caches[0]}",
        ],
        plot={"kind": "bar", "y": ["decode_tokens_per_s"], "series": ["scheme"]},
    )
