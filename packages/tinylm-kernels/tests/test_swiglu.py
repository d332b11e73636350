"""swiglu: every backend against a float64 oracle, forward and backward, on awkward shapes and dtypes."""

import pytest
import torch
import torch.nn.functional as F

from tinylm.kernels import swiglu, swiglu_reference
from tinylm.kernels.swiglu_triton import swiglu_triton
from tinylm.kernels.triton_support import INTERPRETED, triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)]
SHAPES = [(1, 1), (3, 7), (127, 7), (3, 4097), (2, 3, 33)]  # CPU and interpreter: a representative subset
FULL_SHAPES = [(r, h) for r in (1, 3, 127) for h in (1, 7, 4097, 8192)] + [(2, 3, 4097)]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def swiglu_f64(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g = gate.double()
    return g * torch.sigmoid(g) * up.double()


def check_against_float64(backend, device, shape, dtype, tol, assert_close_f64):
    g = torch.Generator().manual_seed(sum(shape))
    gate = (torch.randn(shape, generator=g) * 3).to(device, dtype).requires_grad_()
    up = (torch.randn(shape, generator=g) + 0.5).to(device, dtype).requires_grad_()
    dy = torch.randn(shape, generator=g).to(device, dtype)
    y = swiglu(gate, up, backend=backend)
    assert y.dtype == dtype and y.shape == gate.shape
    d_gate, d_up = torch.autograd.grad(y, (gate, up), dy)
    g64, u64 = gate.detach().double().requires_grad_(), up.detach().double().requires_grad_()
    y64 = swiglu_f64(g64, u64)
    r_gate, r_up = torch.autograd.grad(y64, (g64, u64), dy.double())
    assert_close_f64(y, y64, tol, "output")
    assert_close_f64(d_gate, r_gate, tol, "d gate")
    assert_close_f64(d_up, r_up, tol, "d up")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_matches_float64(backend, device, shape, dtype, tol, assert_close_f64):
    check_against_float64(backend, device, shape, dtype, tol, assert_close_f64)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", FULL_SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_full_matrix_on_gpu(backend, device, shape, dtype, tol, assert_close_f64):
    check_against_float64(backend, device, shape, dtype, tol, assert_close_f64)


def test_gradcheck_float64(backend, device):
    g = torch.Generator().manual_seed(0)
    gate = torch.randn(3, 5, dtype=torch.float64, generator=g).to(device).requires_grad_()
    up = torch.randn(3, 5, dtype=torch.float64, generator=g).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: swiglu(a, b, backend=backend), (gate, up))


def test_non_contiguous_halves_of_a_fused_projection(backend, device, assert_close_f64):
    h = torch.randn(4, 2, 22, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
    gate, up = h.chunk(2, dim=-1)  # strided views, as an MLP with a fused gate/up matmul produces
    y = swiglu(gate, up, backend=backend)
    (dh,) = torch.autograd.grad(y.square().sum(), h)
    h64 = h.detach().double().requires_grad_()
    (r_dh,) = torch.autograd.grad(swiglu_f64(*h64.chunk(2, dim=-1)).square().sum(), h64)
    assert_close_f64(y, swiglu_f64(*h64.detach().chunk(2, dim=-1)), 1e-5, "output")
    assert_close_f64(dh, r_dh, 1e-5, "d h")


def test_reference_is_silu_times_up():
    gate, up = torch.randn(5, 9), torch.randn(5, 9)
    torch.testing.assert_close(swiglu_reference(gate, up), F.silu(gate) * up)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"gate \(2, 3\) and up \(2, 4\)"):
        swiglu(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(TypeError, match="same dtype"):
        swiglu(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.triton
@needs_triton
def test_triton_rejects_integer_tensors(device):
    x = torch.ones(2, 3, dtype=torch.int32, device=device)
    with pytest.raises(TypeError, match="allowed: float16, bfloat16, float32, float64"):
        swiglu(x, x, backend="triton")


@pytest.mark.skipif(INTERPRETED, reason="under the interpreter the kernels take cpu tensors")
def test_triton_backend_serves_cpu_tensors_with_the_reference():
    gate, up = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(swiglu_triton(gate, up), swiglu_reference(gate, up))


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(not CUDA or INTERPRETED, reason="needs a CUDA device, compiled kernels")
def test_forcing_triton_on_cpu_tensors_names_the_allowed_device():
    with pytest.raises(RuntimeError, match="takes cuda tensors"):
        swiglu(torch.randn(2, 3), torch.randn(2, 3), backend="triton")
