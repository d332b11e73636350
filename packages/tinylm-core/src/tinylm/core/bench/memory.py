"""``memory`` mode: where the bytes go, for training and for inference.

- weights, gradients and AdamW state (``exp_avg`` + ``exp_avg_sq``): tensor sizes of the built model.
- activations: the tensors autograd saves for backward during one forward of ``(batch_size,
  block_size)`` tokens under ``dtype`` autocast, summed over distinct storages with
  ``torch.autograd.graph.saved_tensors_hooks`` (parameters excluded). This is a measurement on any
  device, not a formula; on CUDA the allocator's peak over forward + backward (activations, gradients,
  temporaries, autocast weight copies) is reported too.
- KV cache: ``2 (k and v) x n_layers x n_kv_heads x head_dim x bytes`` per token (formula), and the
  ``standard`` cache measured after a prefill of ``(batch_size, block_size)`` tokens.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from tinylm.core.bench.config import BENCH_MODES, BenchConfig, resolve_device
from tinylm.core.bench.results import BenchResult
from tinylm.core.bench.workload import build_model, model_label, random_tokens
from tinylm.core.cache import StandardCache

MIB = 2**20


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; wrapper subclasses (torchao's quantized weights) count their inner tensors."""
    if hasattr(t, "__tensor_flatten__"):  # a traceable wrapper subclass (plain tensors have no such method)
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def kv_bytes_per_token(cfg: BenchConfig, dtype: torch.dtype) -> int:
    """Key + value bytes one token occupies across all layers."""
    m = cfg.model
    return 2 * m.n_layers * m.n_kv_heads * m.head_dim * torch.empty((), dtype=dtype).element_size()


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Any) -> int:
    """Bytes of the distinct storages autograd saves for backward in ``model(x, labels=y)`` (no params)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = model(x, labels=y).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _row(component: str, nbytes: float, how: str) -> dict[str, Any]:
    return {"component": component, "how": how, "bytes": int(nbytes), "mib": nbytes / MIB}


@BENCH_MODES.register("memory")
def bench_memory(cfg: BenchConfig) -> BenchResult:
    """Parameter, gradient, optimizer, activation and KV-cache bytes of ``cfg.model``."""
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    model = build_model(cfg, device).train()
    batch, block, dtype = cfg.batch_size, cfg.block_size, cfg.torch_dtype
    params = list(model.parameters())  # shared (tied) parameters appear once
    weight_bytes = sum(tensor_bytes(p) for p in params)
    trainable = sum(tensor_bytes(p) for p in params if p.requires_grad)
    x = random_tokens(cfg, batch, block, device)
    y = random_tokens(cfg, batch, block, device, offset=1)
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if cfg.dtype != "float32"
        else contextlib.nullcontext()
    )
    shape = f"{batch}x{block}"
    rows = [
        _row("weights (training copy)", weight_bytes, f"tensor sizes, {params[0].dtype}"),
        _row("gradients", trainable, "tensor sizes"),
        _row("AdamW state", 2 * trainable, "2 x trainable (exp_avg, exp_avg_sq)"),
    ]
    act = saved_activation_bytes(model, x, y, autocast)
    rows.append(
        _row(
            f"activations {shape}",
            act,
            "measured: saved for backward" + (f", {cfg.dtype} autocast" if cfg.dtype != "float32" else ""),
        )
    )
    rows.append(_row("training total", weight_bytes + 3 * trainable + act, "sum of the four rows above"))
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast:
            loss = model(x, labels=y).loss
        loss.backward()
        peak = torch.cuda.max_memory_allocated(device) - base
        model.zero_grad(set_to_none=True)
        rows.append(_row(f"fwd+bwd peak {shape}", peak, "measured: CUDA allocator peak above weights"))
    model = model.to(dtype=dtype).eval()
    rows.append(
        _row(f"weights ({cfg.dtype})", sum(tensor_bytes(p) for p in model.parameters()), "tensor sizes")
    )
    per_token = kv_bytes_per_token(cfg, dtype)
    rows.append(_row("KV cache per token", per_token, "2 x layers x kv_heads x head_dim x bytes"))
    rows.append(_row(f"KV cache {shape}", per_token * batch * block, "formula"))
    cache = StandardCache()
    with torch.no_grad():
        model(x, cache=cache)
    cached = sum(tensor_bytes(t) for t in (*cache.keys.values(), *cache.values.values()))
    rows.append(_row(f"KV cache {shape} (standard)", cached, "measured: StandardCache after prefill"))
    return BenchResult(
        mode="memory",
        rows=rows,
        keys=["component"],
        units={"bytes": "B", "mib": "MiB"},
        notes=[
            f"model {model_label(model)}; batch_size={batch}, block_size={block}, dtype={cfg.dtype}",
            "activations: distinct storages autograd keeps for backward (logits and loss included)",
        ],
        plot={"kind": "bar", "y": ["mib"], "series": ["component"], "logy": True},
    )
