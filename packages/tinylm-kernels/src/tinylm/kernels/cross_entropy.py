"""Fused linear + cross-entropy: the LM-head loss without the ``(N, V)`` logits in memory at once.

For rows ``x (N, D)``, an output projection ``W (V, D)`` and labels ``y (N,)``::

    z = x @ W.T                                   logits, (N, V)
    loss_i = logsumexp(z_i) - z_i[y_i]            0 where y_i == ignore_index
    loss = sum_i loss_i / n_valid  ("mean", n_valid = number of labels != ignore_index)  or the sum

and, with ``p = softmax(z)`` and ``g = (p - onehot(y)) * scale`` (``scale`` = 1/n_valid or 1, rows with
ignored labels zero), ``dx = g @ W`` and ``dW = g.T @ x``.

The rows are processed in chunks: each chunk's logits ``(C, V)`` are computed, turned in place into
``g`` (plus the per-row losses), and immediately spent on that chunk's ``dx`` and on ``dW``. So peak
memory is one chunk of logits instead of all ``N x V`` of them (the dominant tensor of LM training when
the vocabulary is large), and the gradients are ready when the forward ends: the backward only scales
them by the incoming ``grad_output``. This is the scheme of Liger-Kernel's ``FusedLinearCrossEntropy``
(Hsu et al., 2024, arXiv 2410.10989) and of Wijmans et al., 2024, "Cut Your Losses in Large-Vocabulary
Language Models" (arXiv 2411.09009).

This module holds the chunk loop (``ChunkedLinearCrossEntropy``, shared by the backends, which differ
only in the function turning a chunk of logits into its loss and gradient), the ``torch`` backend
(``fused_linear_cross_entropy_torch``, itself chunked) and the plain, unchunked reference
``fused_linear_cross_entropy_reference`` used as the test oracle. The Triton backend is in
``cross_entropy_triton.py``. The loss is returned in float32 (float64 for float64 inputs) whatever the
input dtype; the gradients have the dtypes of ``x`` and ``W``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tinylm.kernels.registry import dispatch, register_backend

REDUCTIONS = ("mean", "sum")
# (logits chunk (C, V), labels (C,), ignore_index, compute_grad) -> per-row losses (C,) in >= float32;
# with compute_grad it also overwrites the logits with d(sum of losses)/d(logits) (0 on ignored rows).
LogitsToLossAndGrad = Callable[[torch.Tensor, torch.Tensor, int, bool], torch.Tensor]


CHUNK_BYTES = 128 * 2**20  # default budget for one chunk of logits


def default_chunk_size(n_rows: int, hidden: int, vocab: int, itemsize: int = 2) -> int:
    """Rows per chunk: the fewest equal chunks whose logits ``(C, V)`` fit in ``CHUNK_BYTES``, a power of 2.

    Few chunks matter for speed: each chunk adds its ``dW`` partial (``V x D``) into the float32 sum, so
    the ``dW`` traffic grows with the chunk count (Liger-Kernel's rule, about ``V / D`` chunks, spends more
    time there than in the matmuls at large vocabularies). 128 MiB of logits keeps peak memory far below
    the unfused loss, whose float32 logits and gradient alone take ``8 N V`` bytes.
    """
    chunks = max(1, -(-n_rows * vocab * itemsize // CHUNK_BYTES))
    rows = max(1, -(-n_rows // chunks))
    return 1 << (rows - 1).bit_length()


def _accumulate_dw(dw: torch.Tensor, g: torch.Tensor, x_c: torch.Tensor) -> None:
    """``dw += g.T @ x_c``; float32 ``dw`` of half-precision inputs is added in the GEMM itself on CUDA."""
    if dw.dtype == g.dtype:
        dw.addmm_(g.T, x_c)
    elif g.is_cuda:
        torch.addmm(dw, g.T, x_c, out_dtype=dw.dtype, out=dw)  # fp32 accumulate in cuBLAS's epilogue
    else:
        dw += (g.T @ x_c).to(dw.dtype)


def logits_to_loss_and_grad_torch(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, compute_grad: bool
) -> torch.Tensor:
    """Per-row cross-entropy of a logits chunk in plain PyTorch; in place ``logits <- softmax - onehot``."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).long()[:, None]  # ignored rows read column 0, then are masked
    lse = torch.logsumexp(z, dim=-1)
    loss = torch.where(valid, lse - z.gather(1, safe)[:, 0], 0.0)
    if compute_grad:
        g = torch.exp(z - lse[:, None])
        g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
        g.mul_(valid[:, None])
        logits.copy_(g)
    return loss


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients in one chunked pass in the forward; the backward scales them by grad_output."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        ignore_index: int,
        reduction: str,
        chunk_size: int | None,
        logits_to_loss_and_grad: LogitsToLossAndGrad,
    ) -> torch.Tensor:
        n_rows, hidden = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        chunk = chunk_size or default_chunk_size(n_rows, hidden, weight.shape[0], x.element_size())
        loss = torch.zeros((), dtype=acc, device=x.device)
        dx = torch.empty_like(x) if need_dx else None
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_dw else None
        for start in range(0, n_rows, chunk):
            rows = slice(start, start + chunk)
            x_c = x[rows]
            logits = x_c @ weight.T  # (C, V), the only logits alive at a time
            loss += logits_to_loss_and_grad(logits, labels[rows], ignore_index, need_dx or need_dw).sum()
            if need_dx:
                torch.matmul(logits, weight, out=dx[rows])  # logits now hold d(loss sum)/d(logits)
            if need_dw:
                _accumulate_dw(dw, logits, x_c)
        n_valid = (labels != ignore_index).sum()
        if reduction == "mean":
            loss = loss / n_valid  # nan when every label is ignored, like F.cross_entropy
            # ignored rows have zero gradient, so clamping keeps the all-ignored gradient at 0 (not nan)
            scale = 1.0 / n_valid.clamp(min=1).to(acc)
            dx = dx.mul_(scale) if need_dx else None
            dw = dw.mul_(scale) if need_dw else None
        ctx.save_for_backward(dx, None if dw is None else dw.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        dx, dw = ctx.saved_tensors
        dx = None if dx is None else dx * grad_output.to(dx.dtype)
        dw = None if dw is None else dw * grad_output.to(dw.dtype)
        return dx, dw, None, None, None, None, None


@register_backend("fused_linear_cross_entropy", "torch")
def fused_linear_cross_entropy_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Chunked fused linear + cross-entropy in plain PyTorch (never all ``N x V`` logits at once)."""
    return ChunkedLinearCrossEntropy.apply(
        x, weight, labels, ignore_index, reduction, chunk_size, logits_to_loss_and_grad_torch
    )


def fused_linear_cross_entropy_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Unchunked oracle: ``F.cross_entropy`` of the full logits (float32 or wider); autograd for grads."""
    logits = x @ weight.T
    return F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)),
        labels.long(),
        ignore_index=ignore_index,
        reduction=reduction,
    )


def _check(
    x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, reduction: str, chunk_size: int | None
) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_linear_cross_entropy: need x (N, D) and weight (V, D); got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    if labels.shape != x.shape[:1]:
        raise ValueError(
            f"fused_linear_cross_entropy: labels {tuple(labels.shape)} must be ({x.shape[0]},), one per row"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"fused_linear_cross_entropy: labels dtype {labels.dtype}; allowed: int64, int32")
    if not x.dtype.is_floating_point or x.dtype != weight.dtype:
        raise TypeError(
            f"fused_linear_cross_entropy: x ({x.dtype}) and weight ({weight.dtype}) must share one "
            "floating dtype"
        )
    if not (x.device == weight.device == labels.device):
        raise ValueError(
            f"fused_linear_cross_entropy: x, weight and labels must be on one device; got "
            f"{x.device}, {weight.device}, {labels.device}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"fused_linear_cross_entropy: reduction {reduction!r}; allowed: mean, sum")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be >= 1 or None; got {chunk_size}")


def fused_linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``x @ weight.T`` against ``labels``, computed chunk by chunk (see the module doc).

    ``chunk_size`` rows per chunk (None: about as many logits per chunk as ``x`` has elements). Labels
    must lie in ``[0, V)`` or equal ``ignore_index``: checked here, at the cost of one device sync.
    """
    _check(x, weight, labels, reduction, chunk_size)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= weight.shape[0]))
    if bool(bad.any()):
        raise ValueError(
            f"fused_linear_cross_entropy: labels must be in [0, {weight.shape[0]}) or equal "
            f"ignore_index={ignore_index}; got {labels[bad][:5].tolist()}"
        )
    impl = dispatch("fused_linear_cross_entropy", backend, x.device)
    return impl(x, weight, labels, ignore_index, reduction, chunk_size)
