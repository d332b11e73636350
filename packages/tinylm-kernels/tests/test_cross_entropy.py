"""fused_linear_cross_entropy: every backend against F.cross_entropy of the full logits in float64 (loss,
dx, dW) with ignored rows, both reductions, chunkings and dtypes; gradcheck; edge cases and errors."""

import pytest
import torch
import torch.nn.functional as F

from tinylm.kernels import fused_linear_cross_entropy, fused_linear_cross_entropy_reference
from tinylm.kernels.cross_entropy import default_chunk_size
from tinylm.kernels.cross_entropy_triton import fused_linear_cross_entropy_triton
from tinylm.kernels.triton_support import INTERPRETED

CUDA = torch.cuda.is_available()
IGNORE = -100
DTYPES = [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)]
# (N rows, D hidden, V vocabulary, chunk_size); V = 40000 walks the kernel's 32768-column blocks twice
SHAPES = [(1, 1, 5, None), (3, 7, 11, 2), (127, 33, 300, 16), (3, 4097, 64, None), (5, 16, 40000, 2)]
FULL_SHAPES = [(n, d, v, None) for n in (1, 3, 127) for d in (1, 7, 4097, 8192) for v in (7, 40000)]


def make_inputs(n, d, v, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed + n * 7 + d * 3 + v)  # on device: W can be large
    x = torch.randn(n, d, generator=g, device=device).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g, device=device) / d**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g, device=device)
    labels[1::3] = IGNORE  # some ignored rows whenever n > 1
    return x, w, labels


def check_against_float64(backend, device, shape, dtype, tol, reduction, assert_close_f64):
    n, d, v, chunk = shape
    x, w, labels = make_inputs(n, d, v, device, dtype)
    loss = fused_linear_cross_entropy(x, w, labels, IGNORE, reduction, chunk, backend=backend)
    assert loss.dtype == torch.float32 and loss.shape == ()
    grad_out = 1.7  # the backward must scale the stored gradients by the incoming one
    dx, dw = torch.autograd.grad(loss * grad_out, (x, w))
    assert dx.dtype == dtype and dw.dtype == dtype
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(x64 @ w64.T, labels, ignore_index=IGNORE, reduction=reduction)
    r_dx, r_dw = torch.autograd.grad(ref * grad_out, (x64, w64))
    assert_close_f64(loss, ref, tol, "loss")
    assert_close_f64(dx, r_dx, tol, "dx")
    assert_close_f64(dw, r_dw, tol, "dW")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_float64(backend, device, shape, dtype, tol, reduction, assert_close_f64):
    check_against_float64(backend, device, shape, dtype, tol, reduction, assert_close_f64)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", FULL_SHAPES, ids=str)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_full_matrix_on_gpu(backend, device, shape, dtype, tol, assert_close_f64):
    check_against_float64(backend, device, shape, dtype, tol, "mean", assert_close_f64)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_F_cross_entropy_of_the_full_logits(backend, device, reduction):
    x, w, labels = make_inputs(13, 24, 50, device, torch.float32, seed=1)
    loss = fused_linear_cross_entropy(x, w, labels, reduction=reduction, chunk_size=4, backend=backend)
    dx, dw = torch.autograd.grad(loss, (x, w))
    ref = F.cross_entropy(x @ w.T, labels, reduction=reduction)  # ignore_index=-100 by default
    r_dx, r_dw = torch.autograd.grad(ref, (x, w))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(dx, r_dx)
    torch.testing.assert_close(dw, r_dw)
    torch.testing.assert_close(fused_linear_cross_entropy_reference(x, w, labels, reduction=reduction), ref)


def test_chunking_does_not_change_the_result(backend, device):
    x, w, labels = make_inputs(10, 8, 30, device, torch.float64, seed=2)
    results = []
    for chunk in (1, 3, 10, 64, None):
        loss = fused_linear_cross_entropy(x, w, labels, chunk_size=chunk, backend=backend)
        results.append((loss, *torch.autograd.grad(loss, (x, w))))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b)


def test_gradcheck_float64(backend, device):
    x, w, labels = make_inputs(4, 3, 5, device, torch.float64, seed=3)
    for reduction in ("mean", "sum"):

        def loss(a, b, reduction=reduction):
            return fused_linear_cross_entropy(a, b, labels, IGNORE, reduction, 3, backend=backend)

        assert torch.autograd.gradcheck(loss, (x, w))


def test_all_ignored_custom_ignore_index_int32_labels_and_frozen_weight(backend, device):
    x, w, _ = make_inputs(4, 6, 9, device, torch.float32, seed=4)
    ignored = torch.full((4,), IGNORE, device=device)
    loss = fused_linear_cross_entropy(x, w, ignored, backend=backend)  # like F.cross_entropy: nan loss...
    assert torch.isnan(loss)
    dx, dw = torch.autograd.grad(loss, (x, w))
    assert not dx.any() and not dw.any()  # ...and zero gradients
    assert fused_linear_cross_entropy(x, w, ignored, reduction="sum", backend=backend).item() == 0.0
    labels = torch.tensor([3, 0, 3, 8], device=device, dtype=torch.int32)  # ignore_index=3 is a class id
    loss = fused_linear_cross_entropy(x, w.detach(), labels, ignore_index=3, backend=backend)
    (dx,) = torch.autograd.grad(loss, (x,))
    ref = F.cross_entropy(x @ w.detach().T, labels.long(), ignore_index=3)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(dx, torch.autograd.grad(ref, (x,))[0])
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(x, w, labels, 3, backend=backend), ref.detach())


def test_errors():
    x, w, labels = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 4, -100])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\) or equal ignore_index=-100; got \[5\]"):
        fused_linear_cross_entropy(x, w, torch.tensor([0, 5, -100]))
    with pytest.raises(ValueError, match=r"need x \(N, D\) and weight \(V, D\)"):
        fused_linear_cross_entropy(x, w[:, :3], labels)
    with pytest.raises(ValueError, match=r"labels \(2,\) must be \(3,\)"):
        fused_linear_cross_entropy(x, w, labels[:2])
    with pytest.raises(TypeError, match="allowed: int64, int32"):
        fused_linear_cross_entropy(x, w, labels.float())
    with pytest.raises(TypeError, match="must share one floating dtype"):
        fused_linear_cross_entropy(x, w.double(), labels)
    with pytest.raises(ValueError, match="allowed: mean, sum"):
        fused_linear_cross_entropy(x, w, labels, reduction="none")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        fused_linear_cross_entropy(x, w, labels, chunk_size=0)


def test_default_chunk_is_the_fewest_chunks_of_at_most_128_mib_of_logits():
    assert default_chunk_size(2048, 512, 32000) == 2048  # 125 MiB of bf16 logits: one chunk
    assert default_chunk_size(8192, 1024, 32000) == 2048  # 500 MiB: four chunks
    assert default_chunk_size(8192, 1024, 128256, itemsize=4) == 256  # 4 GiB: 32 chunks
    assert default_chunk_size(3, 8, 4) == 4 and default_chunk_size(1, 1, 1) == 1


@pytest.mark.skipif(INTERPRETED, reason="under the interpreter the kernels take cpu tensors")
def test_triton_backend_serves_cpu_tensors_with_the_torch_backend():
    x, w, labels = make_inputs(5, 4, 7, "cpu", torch.float32)
    ref = fused_linear_cross_entropy_reference(x, w, labels)
    torch.testing.assert_close(fused_linear_cross_entropy_triton(x, w, labels), ref)


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)
