"""Save and load quantized TinyLMs without pickle: safetensors + JSON.

A quantized checkpoint is a directory::

    config.json          the TinyLM ModelConfig (tinylm-core's format)
    model.safetensors    every tensor as stored in memory: plain tensors by name; each torchao weight split
                         into its plain components (``layers.0.attn.q_proj._weight_qdata``, ``..._scale``,
                         ...), with a JSON description of its class and attributes in the file's metadata
    quantization.json    {"format": "tinylm-quant/1", "scheme", "options", "keep", "quantized", "dtype",
                         "torchao_version"}

The weights are the quantized ones (int8 / packed int4 / float8 bytes on disk, not the float originals).
Loading uses torchao's safetensors support (``torchao.prototype.safetensors``): a weight is rebuilt from
its components only if its class is on torchao's allow-list (Int8Tensor, Int4TilePackedTo4dTensor,
IntxUnpackedToInt8Tensor, Float8Tensor, ...) and every dtype named in the metadata is a real torch dtype;
nothing is unpickled or evaluated. Layouts are device-specific (tinygemm's int4 packing is CUDA's), so a
checkpoint loads on the kind of device it was saved from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torchao
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torchao.prototype.safetensors.safetensors_support import (
    flatten_tensor_state_dict,
    unflatten_tensor_state_dict,
)

from tinylm.core import CheckpointError, TinyLM, load_checkpoint
from tinylm.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_config, write_atomically
from tinylm.quant.api import QuantInfo, model_device_dtype, quant_info, quantize
from tinylm.quant.schemes import SCHEMES

QUANT_CONFIG_NAME = "quantization.json"
FORMAT = "tinylm-quant/1"


def _state(model: TinyLM) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach() for k, v in state.items()}


def save_quantized(model: TinyLM, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a model quantized by ``quantize`` / ``convert_qat`` to directory ``path`` (atomically).

    ``tokenizer``: a tinylm tokenizer (``save(dir)`` writes ``tokenizer.json``) saved along, so the result
    is a checkpoint ``apps/infer.py`` can run.
    """
    info = quant_info(model)
    if info is None:
        raise ValueError("the model was not quantized by tinylm.quant (use save_checkpoint for float models)")
    if info.scheme.startswith("qat_"):
        raise ValueError("a QAT-prepared model is a float model: save_checkpoint it, or convert_qat it first")
    _, dtype = model_device_dtype(model)
    tensors, metadata = flatten_tensor_state_dict(_state(model))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    record = {
        "format": FORMAT,
        "scheme": info.scheme,
        "options": info.options,
        "keep": info.keep,
        "quantized": info.quantized,
        "dtype": str(dtype).removeprefix("torch."),
        "torchao_version": torchao.__version__,
    }
    try:
        json.dumps(record)
    except TypeError as e:
        raise ValueError(f"scheme options must be JSON values to be saved: {e}") from None

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
        (tmp / QUANT_CONFIG_NAME).write_text(json.dumps(record, indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)

    return write_atomically(path, fill)


def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``save_quantized``."""
    return (Path(path) / QUANT_CONFIG_NAME).is_file()


def _check_dtypes(node: Any, file: Path) -> None:
    """Every ``{"_type": "torch.dtype", "_data": name}`` in the metadata must name a real torch dtype."""
    if isinstance(node, dict):
        if node.get("_type") == "torch.dtype" and not isinstance(
            getattr(torch, str(node.get("_data")), None), torch.dtype
        ):
            raise CheckpointError(f"{file}: metadata names {node.get('_data')!r}, which is not a torch dtype")
        for value in node.values():
            _check_dtypes(value, file)
    elif isinstance(node, list):
        for value in node:
            _check_dtypes(value, file)


def load_quantized(path: str | os.PathLike, device: str | torch.device = "cpu") -> TinyLM:
    """Rebuild a model saved by ``save_quantized`` on ``device``; nothing is unpickled."""
    path = Path(path)
    qfile, wfile = path / QUANT_CONFIG_NAME, path / WEIGHTS_NAME
    if not qfile.is_file():
        raise CheckpointError(f"{qfile}: missing; not a quantized checkpoint (save_quantized writes it)")
    try:
        record = json.loads(qfile.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{qfile}: not valid JSON: {e}") from None
    if record.get("format") != FORMAT:
        raise CheckpointError(f"{qfile}: format {record.get('format')!r}, this version reads {FORMAT!r}")
    model = TinyLM(load_config(path))
    if record.get("dtype"):
        model = model.to(getattr(torch, record["dtype"]))
    device = torch.device(device)
    try:
        with safe_open(str(wfile), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, FileNotFoundError) as e:
        raise CheckpointError(f"{wfile}: cannot read weights (missing, truncated or corrupt?): {e}") from None
    try:
        _check_dtypes({k: json.loads(v) for k, v in metadata.items()}, wfile)
        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{wfile}: cannot rebuild the quantized tensors: {e}") from None
    spec = SCHEMES.get(record.get("scheme"))
    if spec is not None and spec.after is not None:  # a scheme that swaps modules: rebuild their structure
        model = quantize(model.to(device), record["scheme"], keep=record.get("keep", []), **record["options"])
    expected = set(_state(model))
    if leftover or set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(
            f"{wfile}: does not match the model config: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, unused {sorted(leftover)[:5]}"
        )
    model = model.to(device)
    model.load_state_dict(state, strict=False, assign=True)
    if model.config.tie_embeddings:  # assign=True replaced the shared Parameter: share it again
        model.lm_head.weight = model.tok_emb.weight
    model.requires_grad_(False)  # quantized weights are for inference
    model.quantization = QuantInfo(
        scheme=record["scheme"],
        options=record.get("options", {}),
        keep=record.get("keep", []),
        quantized=record.get("quantized", []),
    )
    return model.eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", scheme: str = "none") -> TinyLM:
    """A model ready for inference from any checkpoint directory, quantized with ``scheme``.

    A ``save_quantized`` directory loads as saved (``scheme`` must be ``none`` or the saved one); a float
    checkpoint is loaded and quantized with ``scheme`` (cast to the dtype the scheme needs, e.g. bf16 for
    ``int4_weight_only``).
    """
    if is_quantized_checkpoint(path):
        model = load_quantized(path, device=device)
        saved = model.quantization.scheme
        if scheme not in ("none", saved):
            raise ValueError(f"{path} is already quantized with {saved}; pass --quant none or {saved}")
        return model
    model = load_checkpoint(path, device=device).eval()
    spec = SCHEMES.get(scheme)
    if spec is not None and spec.dtype is not None:
        model = model.to(spec.dtype)
    return quantize(model, scheme)
