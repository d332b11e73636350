"""Model FLOPs per token and MFU (model FLOPs utilisation), PaLM style; the peak they are measured against.

Training FLOPs per token (Chowdhery et al., 2022, PaLM, arXiv 2204.02311, appendix B):

    6 N + 12 L H Q T

``N`` is the number of parameters used in matrix multiplies: every parameter except the token and
position tables (a lookup costs no FLOPs), with the LM head counted even when it is tied to the token
embedding (the head is a real ``dim x vocab`` matmul). ``6 N`` is 2 FLOPs per multiply-add, forward and
twice that backward. ``12 L H Q T`` is the attention score and value matmuls (``L`` layers, ``H`` heads
of width ``Q``, context ``T``), counted over the full ``T x T`` square as PaLM and nanoGPT do, although
causal kernels skip half of it. Norm gains and biases are in ``N`` (tiny). MFU = achieved model FLOP/s /
peak FLOP/s: recomputation, padding and kernel choices do not count as useful work.

The peak is either a number, a datasheet value (``SPEC_PEAK_TFLOPS``, dense 16-bit), or measured here:
``measure_matmul_tflops`` times a large square matmul in the run's dtype on the same device, which is
what a well-fed GEMM reaches on this card, clocks and power limit included.
"""

from __future__ import annotations

import torch
from torch import nn

from tinylm.core.bench.timing import measure

# Dense (no sparsity) bf16/fp16 tensor-core TFLOP/s from NVIDIA datasheets; first matching substring wins.
SPEC_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in matmuls: all but the token/position tables; a tied head counts."""
    emb = model.tok_emb.weight
    params = {id(p): p for p in model.parameters()}
    params.pop(id(emb), None)
    pos_weight = getattr(getattr(model, "pos", None), "weight", None)
    if pos_weight is not None:
        params.pop(id(pos_weight), None)
    head = model.lm_head.weight
    n = sum(p.numel() for p in params.values())
    if head is emb:  # tied: the table was removed above, but the head's matmul is real work
        n += head.numel()
    return n


def flops_per_token(model: nn.Module, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token: ``6 N + 12 L H Q T`` for training, a third of it for a forward pass."""
    cfg = model.config
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    total = 6 * matmul_parameters(model) + attn
    return float(total if training else total / 3)


def mfu(tokens_per_s: float, flops_per_tok: float, peak_tflops: float | None) -> float | None:
    """Achieved model FLOP/s over the peak, as a fraction (None without a peak)."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_tok / (peak_tflops * 1e12)


def spec_peak_tflops(card: str, dtype: torch.dtype) -> float | None:
    """The datasheet dense 16-bit peak of ``card`` (a CUDA device name); None for other dtypes or cards."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for name, tflops in SPEC_PEAK_TFLOPS:
        if name in card:
            return tflops
    return None


def measure_matmul_tflops(
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    size: int | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
) -> float:
    """TFLOP/s of a ``size x size`` @ ``size x size`` matmul (median of repeats) in ``dtype`` on ``device``.

    Defaults: 8192 on CUDA (about 1.1 TFLOP a call), 1024 elsewhere (so a CPU measures in well under a
    second). ``torch.backends.cuda.matmul.allow_tf32`` is left as the caller set it.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    size = size or (8192 if cuda else 1024)
    warmup = warmup if warmup is not None else (5 if cuda else 1)
    repeats = repeats or (20 if cuda else 3)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    out = torch.empty(size, size, device=device, dtype=dtype)
    stats = measure(lambda: torch.mm(a, b, out=out), warmup=warmup, repeats=repeats, device=device)
    return 2 * size**3 / (stats.median * 1e-3) / 1e12
