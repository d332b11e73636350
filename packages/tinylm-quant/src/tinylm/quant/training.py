"""Quantization around a training run: what ``apps/train.py quant=<name>`` applies before and after fit.

- ``none``: nothing.
- a QAT scheme (``qat_int4``, ``qat_int8``, ``qat_8da4w``): ``prepare_qat`` before training (the Trainer
  trains the fake-quantized model as usual; its checkpoints stay float checkpoints), then ``convert_qat`` and
  ``save_quantized`` into ``<run dir>/quantized`` after it.
- ``float8``: torchao float8 training (``convert_to_float8_training``) on a Hopper/Ada GPU; nothing after.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinylm.quant.float8_training import convert_to_float8_training
from tinylm.quant.qat import QAT_SCHEMES, convert_qat, prepare_qat
from tinylm.quant.serialization import save_quantized

logger = logging.getLogger("tinylm.quant")
TRAINING_SCHEMES = ("none", "float8", *QAT_SCHEMES)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_for_training(model: nn.Module, scheme: str, device: str = "auto") -> nn.Module:
    """Apply ``scheme`` (one of ``TRAINING_SCHEMES``) to a model about to be trained on ``device``."""
    if scheme not in TRAINING_SCHEMES:
        raise ValueError(f"unknown training quantization {scheme!r}; known: {', '.join(TRAINING_SCHEMES)}")
    if scheme == "float8":
        return convert_to_float8_training(model, device=_device(device))
    if scheme in QAT_SCHEMES:
        model = prepare_qat(model, scheme)
        logger.info("%s: fake quantization in %d linear layers", scheme, len(model.quantization.quantized))
    return model


def finish_training(model: nn.Module, scheme: str, out_dir: str | Path, tokenizer: Any = None) -> Path | None:
    """After fit: a QAT model is converted and saved to ``out_dir/quantized`` (returned); else None."""
    if scheme not in QAT_SCHEMES:
        return None
    path = save_quantized(convert_qat(model.eval()), Path(out_dir) / "quantized", tokenizer=tokenizer)
    logger.info("%s: converted to %s, saved to %s", scheme, QAT_SCHEMES[scheme], path)
    return path
