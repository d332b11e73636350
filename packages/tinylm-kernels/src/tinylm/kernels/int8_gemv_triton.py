"""Triton backend of ``int8_linear``: a fused int8 GEMV for decode (few rows), the reference otherwise.

Each program computes ``BLOCK_N`` outputs of one row of ``x``: it streams ``(BLOCK_N, BLOCK_K)`` int8
tiles of the weight, converts them to float32 in registers, multiplies by the ``x`` chunk and reduces
along K, then applies the per-row scale (and bias) once at the end::

    y[m, n] = scale[n] * sum_k W_q[n, k] * x[m, k]  (+ bias[n])

With ``NORM`` (op ``rms_norm_int8_linear``) the RMSNorm before the projection is folded in: ``x`` is
multiplied by the norm weight as it streams and its sum of squares is kept on the side, so the
``1 / rms(x[m])`` factor is applied once after the sum. The normalised ``x`` is never written out, and
the norm's own launch disappears.

so the weight is read once, as int8: half the bytes of bf16, which is what a memory-bound batch-1 decode
step pays for. For more than ``GEMV_MAX_ROWS`` rows (prefill) a matrix multiply is the right tool and the
reference (``F.linear`` on the dequantized weight) is used. Layers: ``_int8_gemv_kernel`` -> launcher
``int8_gemv`` -> backends ``int8_linear_triton`` and ``rms_norm_int8_linear_triton`` (no autograd:
inference only). Oracles: ``int8_linear_reference`` and ``rms_norm_int8_linear_reference`` in
``int8_gemv.py``. References: gpt-fast ``quantize.py`` (WeightOnlyInt8Linear);
the split-free GEMV layout of FasterTransformer's weight-only kernels.
"""

import torch

from tinylm.kernels.int8_gemv import int8_linear_reference, rms_norm_int8_linear_reference
from tinylm.kernels.registry import register_backend
from tinylm.kernels.triton_support import (
    DEVICE_TYPES,
    HAS_TRITON,
    INTERPRETED,
    kernels_take,
    tl,
    triton,
    triton_available,
    why_triton_unavailable,
)

GEMV_MAX_ROWS = 16
BLOCK_N, BLOCK_K = 16, 256  # the interpreter's (and the untuned) tile
# On a GPU the tile is autotuned per (N, K) among the tiles that won with the weights streamed from HBM
# (benchmarks/bench_int8_gemv_hbm.py on an H100, BENCHMARKS 5): a few rows per program and a wide K slice
# keep enough bytes in flight. The other tiles tried there were up to 6x slower, so they are not offered:
# whichever tile a tuner picks (Triton's, or Inductor's around a compiled graph) is one of these.
TUNE_CONFIGS = ((4, 512, 4), (4, 1024, 4), (4, 2048, 8))


@triton.jit
def _int8_gemv_kernel(
    Y, X, W, S, B, G, N, K, eps, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, NORM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    if PDL:  # launched early (programmatic dependent launch): wait for the previous kernel's writes
        tl.extra.cuda.gdc_wait()
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(X + m * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)  # (BLOCK_K,)
        if NORM:  # RMSNorm of x folded in: its 1/rms is one factor per row, applied after the sum
            squares += x * x
            x = x * tl.load(G + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        w_ptrs = W + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        w = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0).to(
            tl.float32
        )  # (BLOCK_N, BLOCK_K)
        acc += tl.sum(w * x[None, :], axis=1)
    if PDL:  # the next kernel may launch now; it waits for this one's writes itself
        tl.extra.cuda.gdc_launch_dependents()
    acc = acc * tl.load(S + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if NORM:  # eps may come in as float64 from a compiled graph: keep the product float32
        acc = acc * tl.rsqrt((tl.sum(squares, axis=0) / K + eps).to(tl.float32))
    if HAS_BIAS:
        acc += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(Y + m * stride_ym + offs_n, acc.to(Y.dtype.element_ty), mask=mask_n)


_tuned_kernel = None
if HAS_TRITON and not INTERPRETED:
    _tuned_kernel = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w) for n, k, w in TUNE_CONFIGS],
        key=["N", "K"],
    )(_int8_gemv_kernel)


def int8_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    pdl: bool = False,
) -> torch.Tensor:
    """Launch the GEMV kernel: ``x`` (..., K) with few rows, ``weight`` int8 (N, K), ``scale`` (N,); with
    ``norm_weight`` (K,) the product is taken with ``rms_norm(x, norm_weight, eps)`` in place of ``x``.
    ``pdl``: launch with programmatic dependent launch (Hopper and newer, see ``int8_gemv_pdl``)."""
    n, k = weight.shape
    x2 = x.reshape(-1, k).contiguous()
    weight, scale = weight.contiguous(), scale.contiguous()
    g = norm_weight.contiguous() if norm_weight is not None else scale  # a placeholder pointer when unused
    y = torch.empty((x2.shape[0], n), device=x.device, dtype=x.dtype)
    if x2.shape[0] > 0 and n > 0:
        args = (y, x2, weight, scale, bias if bias is not None else scale, g, n, k, eps, x2.stride(0),
                weight.stride(0), y.stride(0))  # fmt: skip
        flags = {"HAS_BIAS": bias is not None, "NORM": norm_weight is not None, "PDL": pdl}
        if pdl:
            flags["launch_pdl"] = True
        rows = x2.shape[0]
        if _tuned_kernel is not None:
            _tuned_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), rows)](*args, **flags)
        else:
            grid = (triton.cdiv(n, BLOCK_N), rows)
            _int8_gemv_kernel[grid](*args, **flags, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return y.reshape(*x.shape[:-1], n)


@register_backend(
    "int8_linear",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def int8_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Fused GEMV for up to ``GEMV_MAX_ROWS`` rows of ``x``; the reference for more rows or off-device."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > GEMV_MAX_ROWS or not kernels_take("int8_linear", x=x, scale=scale):
        return int8_linear_reference(x, weight, scale, bias)
    return int8_gemv(x, weight, scale, bias)


@register_backend(
    "rms_norm_int8_linear",
    "triton",
    available=triton_available,
    why_unavailable=why_triton_unavailable,
    device_types=DEVICE_TYPES,
)
def rms_norm_int8_linear_triton(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The GEMV with the norm folded in for up to ``GEMV_MAX_ROWS`` rows; the reference otherwise."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > GEMV_MAX_ROWS or not kernels_take("rms_norm_int8_linear", x=x, scale=scale):
        return rms_norm_int8_linear_reference(x, norm_weight, eps, weight, scale, bias)
    return int8_gemv(x, weight, scale, bias, norm_weight, eps)


def pdl_available() -> bool:
    """Programmatic dependent launch can run here: compiled Triton and a CUDA device of compute capability
    9.0 or newer (Hopper)."""
    return (
        HAS_TRITON
        and not INTERPRETED
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability()[0] >= 9
    )


def why_pdl_unavailable() -> str:
    """Why ``pdl_available()`` is False ('' when it is True)."""
    if not HAS_TRITON or INTERPRETED:
        return "needs compiled Triton (not installed, or TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if torch.cuda.get_device_capability()[0] < 9:
        return f"needs compute capability 9.0 or newer, this GPU has {torch.cuda.get_device_capability()}"
    return ""


@torch.library.custom_op("tinylm::int8_gemv_pdl", mutates_args=(), device_types="cuda")
def int8_gemv_pdl(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """``int8_gemv`` launched with programmatic dependent launch, as an opaque custom op.

    With PDL a kernel is launched while the one before it finishes and waits (``gdc_wait``) for that
    kernel's writes before reading anything, so the launch latency between two dependent kernels overlaps
    the first one's tail: 3.34 -> 2.66 us per GEMV in a chain of 48 on an H100 (BENCHMARKS 5,
    ``benchmarks/bench_gemm_floor.py``). Inductor launches its own kernels so with ``triton.enable_pdl``;
    a user kernel traced into the graph cannot be, since torch 2.11 cannot analyse the ``gdc`` intrinsics
    (it then takes every input as mutated and the step loses its CUDA graph). As an opaque op the kernel
    keeps the graph (the op is captured like any other) at the price of Inductor's view into it."""
    return int8_gemv(x, weight, scale, bias, norm_weight, eps, pdl=True)


@int8_gemv_pdl.register_fake
def _int8_gemv_pdl_fake(x, weight, scale, bias, norm_weight, eps):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def rms_norm_int8_linear_pdl(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``rms_norm_int8_linear_triton`` with the GEMV launched through ``int8_gemv_pdl`` where the kernel
    takes the inputs (as there; CUDA tensors, a Hopper GPU: ``pdl_available()``, checked by the caller once,
    not per call), the reference otherwise."""
    rows = x.numel() // max(x.shape[-1], 1)
    takes = rows <= GEMV_MAX_ROWS and kernels_take("rms_norm_int8_linear", x=x, scale=scale)
    if not (takes and x.is_cuda):
        return rms_norm_int8_linear_reference(x, norm_weight, eps, weight, scale, bias)
    return int8_gemv_pdl(x, weight, scale, bias, norm_weight, eps)
