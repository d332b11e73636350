"""apply_rope: every backend against a float64 oracle (outputs, dq, dk), GQA shapes, broadcast tables;
the Triton backend's in-place behaviour on views and leaves; gradcheck; the shape and dtype errors."""

import pytest
import torch

from tinylm.kernels import apply_rope, apply_rope_reference
from tinylm.kernels.rope_triton import apply_rope_triton
from tinylm.kernels.triton_support import INTERPRETED, triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)]
# (B, H, Hkv, T, D, batched tables); CPU and interpreter: a representative subset
SHAPES = [(1, 1, 1, 1, 2, False), (2, 4, 2, 3, 6, True), (1, 2, 1, 127, 8, False), (2, 3, 3, 5, 64, True)]
FULL_SHAPES = [
    (b, h, hkv, t, d, batched)
    for b, batched in ((1, False), (2, True))
    for h, hkv in ((1, 1), (32, 8))
    for t in (1, 3, 127)
    for d in (2, 6, 128)
]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def rope_f64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x, cos, sin = x.double(), cos.double(), sin.double()
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_tables(b: int, t: int, d: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real RoPE tables (b, 1, t, d) for positions 0..t-1 shifted per batch row, in float64."""
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    pos = torch.arange(t, dtype=torch.float64)[None] + 7 * torch.arange(b, dtype=torch.float64)[:, None]
    emb = (pos[..., None] * inv_freq).repeat(1, 1, 2)[:, None]  # (b, 1, t, d)
    return emb.cos(), emb.sin()


def check_against_float64(backend, device, shape, dtype, tol, assert_close_f64):
    b, h, hkv, t, d, batched = shape
    g = torch.Generator().manual_seed(b * 1000 + h * 100 + t + d)
    q0 = torch.randn(b, h, t, d, generator=g).to(device, dtype).requires_grad_()
    k0 = torch.randn(b, hkv, t, d, generator=g).to(device, dtype).requires_grad_()
    # random tables (not a true rotation) make a wrong half or a wrong transpose in the backward show up
    cos = torch.randn(b if batched else 1, 1, t, d, generator=g).to(device, dtype)
    sin = torch.randn(b if batched else 1, 1, t, d, generator=g).to(device, dtype)
    dq, dk = (
        torch.randn(q0.shape, generator=g).to(device, dtype),
        torch.randn(k0.shape, generator=g).to(device, dtype),
    )
    q, k = q0 * 1, k0 * 1  # non-leaves, so the triton backend rotates them in place
    q_out, k_out = apply_rope(q, k, cos, sin, backend=backend)
    assert q_out.dtype == dtype and q_out.shape == q0.shape and k_out.shape == k0.shape
    grads = torch.autograd.grad((q_out, k_out), (q0, k0), (dq, dk))
    q64, k64 = q0.detach().double().requires_grad_(), k0.detach().double().requires_grad_()
    ref_q, ref_k = rope_f64(q64, cos, sin), rope_f64(k64, cos, sin)
    ref_grads = torch.autograd.grad((ref_q, ref_k), (q64, k64), (dq.double(), dk.double()))
    assert_close_f64(q_out, ref_q, tol, "q")
    assert_close_f64(k_out, ref_k, tol, "k")
    assert_close_f64(grads[0], ref_grads[0], tol, "dq")
    assert_close_f64(grads[1], ref_grads[1], tol, "dk")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_matches_float64(backend, device, shape, dtype, tol, assert_close_f64):
    check_against_float64(backend, device, shape, dtype, tol, assert_close_f64)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", FULL_SHAPES, ids=str)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_full_matrix_on_gpu(backend, device, shape, dtype, tol, assert_close_f64):
    check_against_float64(backend, device, shape, dtype, tol, assert_close_f64)


def test_real_tables_rotate_and_the_backward_is_the_inverse(backend, device, assert_close_f64):
    cos, sin = rope_tables(2, 5, 8)
    cos, sin = cos.to(device, torch.float32), sin.to(device, torch.float32)
    q = torch.randn(2, 3, 5, 8, device=device, requires_grad=True)
    k = torch.randn(2, 1, 5, 8, device=device, requires_grad=True)
    q_out, _ = apply_rope(q, k, cos, sin, backend=backend)
    # a rotation keeps the norm of every (x_i, x_{i + D/2}) pair, so of every head vector
    assert_close_f64(q_out.norm(dim=-1), q.detach().double().norm(dim=-1), 1e-5, "norm")
    # the gradient of <rope(q), rope(v)> w.r.t. q is rope^T(rope(v)) = v for a rotation
    v = torch.randn_like(q)
    v_rot, _ = apply_rope(v.clone(), k.detach().clone(), cos, sin, backend=backend)
    (dq,) = torch.autograd.grad(q_out, q, v_rot)
    assert_close_f64(dq, v, 1e-5, "inverse")


def test_gradcheck_float64(backend, device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 2, 4, dtype=torch.float64, generator=g).to(device).requires_grad_()
    k = torch.randn(1, 1, 2, 4, dtype=torch.float64, generator=g).to(device).requires_grad_()
    cos, sin = (torch.randn(1, 1, 2, 4, dtype=torch.float64, generator=g).to(device) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: apply_rope(a * 1, b * 1, cos, sin, backend=backend), (q, k))
    assert torch.autograd.gradcheck(lambda a, b: apply_rope(a, b, cos, sin, backend=backend), (q, k))


@pytest.mark.triton
@needs_triton
def test_triton_rotates_non_leaves_in_place_and_leaves_leaves_alone(device):
    cos, sin = (t.to(device, torch.float32) for t in rope_tables(1, 4, 8))
    q_leaf = torch.randn(1, 2, 4, 8, device=device, requires_grad=True)
    q = q_leaf * 1
    k = torch.randn(1, 2, 4, 8, device=device)  # no grad at all: also in place
    k_before = k.clone()
    q_out, k_out = apply_rope(q, k, cos, sin, backend="triton")
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    torch.testing.assert_close(k, apply_rope_reference(q_leaf, k_before, cos, sin)[1])
    q_leaf_before = q_leaf.detach().clone()
    q_out, _ = apply_rope(q_leaf, k_before.clone(), cos, sin, backend="triton")
    assert q_out.data_ptr() != q_leaf.data_ptr()
    torch.testing.assert_close(q_leaf.detach(), q_leaf_before)  # a leaf that requires grad is never written


class _ViewInFunction(torch.autograd.Function):
    """Returns a view of its input made inside the Function, as torchao's float8 linear does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("make", ["custom_function", "split"])
def test_triton_copies_views_autograd_forbids_writing(device, make):
    """Views made in a custom Function or by split are rotated out of place, with correct gradients."""
    cos, sin = (t.to(device, torch.float32) for t in rope_tables(1, 5, 8))
    g = torch.Generator().manual_seed(3)
    src = torch.randn(1, 5, 2 * 16, generator=g).to(device).requires_grad_()
    if make == "custom_function":
        q = _ViewInFunction.apply(src * 1)[..., :16].reshape(1, 5, 2, 8).transpose(1, 2)
        k = _ViewInFunction.apply(src * 1)[..., 16:].reshape(1, 5, 2, 8).transpose(1, 2)
    else:
        q, k = (t.reshape(1, 5, 2, 8).transpose(1, 2) for t in (src * 1).split(16, dim=-1))
    q_out, k_out = apply_rope(q, k, cos, sin, backend="triton")
    ref_q, ref_k = apply_rope_reference(q.detach(), k.detach(), cos, sin)
    torch.testing.assert_close(q_out, ref_q)
    torch.testing.assert_close(k_out, ref_k)
    (grad,) = torch.autograd.grad((q_out * ref_q).sum() + (k_out * ref_k).sum(), src)
    src64 = src.detach().double().requires_grad_()
    q64, k64 = (t.reshape(1, 5, 2, 8).transpose(1, 2) for t in src64.split(16, dim=-1))
    r_q, r_k = apply_rope_reference(q64, k64, cos.double(), sin.double())
    (grad64,) = torch.autograd.grad((r_q * ref_q.double()).sum() + (r_k * ref_k.double()).sum(), src64)
    torch.testing.assert_close(grad.double(), grad64, rtol=1e-5, atol=1e-5)


def test_strided_views_of_a_fused_projection_and_shared_q_k(backend, device, assert_close_f64):
    """q and k as transposed views of one projection output (the usual attention layout), and q is k."""
    cos, sin = (t.to(device, torch.float32) for t in rope_tables(2, 5, 8))
    x = torch.randn(2, 5, 3 * 16, device=device, requires_grad=True)

    def attention_inputs(x):
        qkv = x * 2  # (B, T, 3 * H * D) with H = 2, D = 8
        q = qkv[..., :16].view(2, 5, 2, 8).transpose(1, 2)  # (B, H, T, D), a strided view
        k = qkv[..., 16:32].view(2, 5, 2, 8).transpose(1, 2)
        return q, k

    q_out, k_out = apply_rope(*attention_inputs(x), cos, sin, backend=backend)
    (dx,) = torch.autograd.grad(q_out.square().sum() + (k_out * 3).sum(), x)
    x64 = x.detach().double().requires_grad_()
    rq, rk = (rope_f64(t, cos, sin) for t in attention_inputs(x64))
    (r_dx,) = torch.autograd.grad(rq.square().sum() + (rk * 3).sum(), x64)
    assert_close_f64(q_out, rq, 1e-5, "q")
    assert_close_f64(k_out, rk, 1e-5, "k")
    assert_close_f64(dx, r_dx, 1e-5, "dx")
    same = torch.randn(2, 2, 5, 8, device=device)
    expected = rope_f64(same, cos, sin)  # before the call: the triton backend rotates `same` in place
    q_out, k_out = apply_rope(same, same, cos, sin, backend=backend)
    assert_close_f64(q_out, expected, 1e-5, "q is k: q")
    assert_close_f64(k_out, expected, 1e-5, "q is k: k")  # rotated once, not twice


def test_shape_errors():
    q, k, cs = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8), torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="4-d"):
        apply_rope(q[0], k, cs, cs)
    with pytest.raises(ValueError, match="must match q"):
        apply_rope(q, k[:, :, :2], cs, cs)
    with pytest.raises(ValueError, match="must be even"):
        apply_rope(q[..., :7], k[..., :7], cs[..., :7], cs[..., :7])
    with pytest.raises(
        ValueError, match=r"cos has shape \(1, 3, 8\); allowed: \(2, 1, 3, 8\) or \(1, 1, 3, 8\)"
    ):
        apply_rope(q, k, cs[0], cs)


@pytest.mark.triton
@needs_triton
def test_triton_errors(device):
    q, cs = torch.ones(1, 1, 2, 4, dtype=torch.int32, device=device), torch.ones(1, 1, 2, 4, device=device)
    with pytest.raises(TypeError, match="allowed: float16, bfloat16, float32, float64"):
        apply_rope(q, q.clone(), cs, cs, backend="triton")
    qf = torch.ones(1, 1, 2, 4, device=device)
    with pytest.raises(ValueError, match="cos/sin require grad"):
        apply_rope(qf, qf.clone(), cs.clone().requires_grad_(), cs, backend="triton")


@pytest.mark.skipif(INTERPRETED, reason="under the interpreter the kernels take cpu tensors")
def test_triton_backend_serves_cpu_tensors_with_the_reference():
    q, k, cos, sin = (
        torch.randn(1, 2, 3, 4),
        torch.randn(1, 1, 3, 4),
        torch.randn(1, 1, 3, 4),
        torch.randn(1, 1, 3, 4),
    )
    for got, want in zip(
        apply_rope_triton(q, k, cos, sin), apply_rope_reference(q, k, cos, sin), strict=True
    ):
        torch.testing.assert_close(got, want)


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)
