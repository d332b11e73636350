"""Triton RMSNorm against a float64 oracle (forward, dx, dweight) over awkward shapes x dtypes; gradcheck;
the errors; and the package importing, and reporting the backend unavailable, without Triton."""

import os
import subprocess
import sys

import pytest
import torch

from tinylm.kernels import info_table, rms_norm, rms_norm_reference
from tinylm.kernels.registry import ENV_VAR
from tinylm.kernels.rms_norm_triton import rms_norm_triton
from tinylm.kernels.triton_support import INTERPRETED, triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)]
SHAPES = [(1, 1), (3, 7), (127, 7), (3, 4097), (2, 5, 33)]  # CPU and interpreter: a representative subset
FULL_SHAPES = [(r, h) for r in (1, 3, 127) for h in (1, 7, 4097, 8192)] + [(1000, 33), (2, 3, 4097)]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def rms_norm_f64(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w.double()


def check_against_float64(device, shape, dtype, tol, assert_close_f64, with_weight=True):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3 + 0.5).to(device, dtype).requires_grad_()
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(device, dtype).requires_grad_() if with_weight else None
    dy = torch.randn(shape, generator=g).to(device, dtype)
    y = rms_norm(x, w, 1e-6, backend="triton")
    assert y.dtype == dtype and y.shape == x.shape
    inputs = (x, w) if with_weight else (x,)
    grads = torch.autograd.grad(y, inputs, dy)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    y64 = rms_norm_f64(ref_inputs[0], ref_inputs[1] if with_weight else None, 1e-6)
    ref_grads = torch.autograd.grad(y64, ref_inputs, dy.double())
    assert_close_f64(y, y64, tol, "output")
    for name, got, want in zip(("dx", "dweight"), grads, ref_grads, strict=False):
        assert_close_f64(got, want, tol, name)


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no_weight"])
def test_matches_float64(device, shape, dtype, tol, with_weight, assert_close_f64):
    check_against_float64(device, shape, dtype, tol, assert_close_f64, with_weight)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", FULL_SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_full_matrix_on_gpu(device, shape, dtype, tol, assert_close_f64):
    check_against_float64(device, shape, dtype, tol, assert_close_f64)


@pytest.mark.triton
@needs_triton
def test_gradcheck_float64(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, generator=g).to(device).requires_grad_()
    w = (torch.rand(6, dtype=torch.float64, generator=g) + 0.5).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5, backend="triton"), (x, w))
    assert torch.autograd.gradcheck(lambda a: rms_norm(a, None, 1e-5, backend="triton"), (x,))


# Triton's interpreter rounds float32 -> bfloat16 towards zero (compiled kernels round to nearest even).
BF16_ROUNDING = pytest.mark.skipif(INTERPRETED, reason="the interpreter truncates float32->bfloat16 casts")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=BF16_ROUNDING)])
def test_matches_the_reference_dtype_convention(device, dtype):
    """Low-precision x, float32 weight: normalised in x's dtype, then promoted by the weight."""
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    w = torch.rand(40, generator=torch.Generator().manual_seed(3)).to(device) + 0.5
    y = rms_norm(x, w, 1e-6, backend="triton")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, rms_norm_reference(x, w, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.triton
@needs_triton
def test_non_contiguous_input(device, assert_close_f64):
    x = torch.randn(24, 5, generator=torch.Generator().manual_seed(4)).to(device).t().requires_grad_()
    w = torch.rand(24, device=device) + 0.5
    y = rms_norm(x, w, 1e-6, backend="triton")
    (dx,) = torch.autograd.grad(y.sum(), x)  # an expanded (stride 0) upstream gradient, too
    x64 = x.detach().double().requires_grad_()
    (r_dx,) = torch.autograd.grad(rms_norm_f64(x64, w, 1e-6).sum(), x64)
    assert_close_f64(y, rms_norm_f64(x64.detach(), w, 1e-6), 1e-5, "output")
    assert_close_f64(dx, r_dx, 1e-5, "dx")


@pytest.mark.triton
@needs_triton
def test_errors(device):
    with pytest.raises(TypeError, match="allowed: float16, bfloat16, float32, float64"):
        rms_norm(torch.ones(2, 4, dtype=torch.int32, device=device), None, backend="triton")
    with pytest.raises(ValueError, match="hidden size 65537 > 65536"):
        rms_norm(torch.ones(1, 65537, device=device), None, backend="triton")


@pytest.mark.skipif(INTERPRETED, reason="under the interpreter the kernels take cpu tensors")
def test_cpu_tensors_without_interpreter_use_the_reference():
    x, w = torch.randn(3, 8), torch.rand(8) + 0.5
    torch.testing.assert_close(rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))


BLOCK_TRITON = """
import sys


class NoTriton:  # makes `import triton` fail as if it were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoTriton())
import torch
from tinylm.kernels import choose, info_table, rms_norm, swiglu, apply_rope, fused_linear_cross_entropy

notes = {(r["op"], r["backend"]): r["note"] for r in info_table()}
assert "triton" not in sys.modules
for op in ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy"):
    assert notes[(op, "triton")] == "triton is not installed", notes
    assert choose(op).name != "triton"
try:
    swiglu(torch.ones(2), torch.ones(2), backend="triton")
    raise SystemExit("forcing the triton backend did not fail")
except RuntimeError as e:
    assert "triton is not installed" in str(e), e
print("OK", rms_norm(torch.ones(2, 4), None).shape)
"""


def test_imports_and_reports_unavailable_without_triton():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", ENV_VAR)}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TRITON], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


def test_info_lists_the_triton_backends():
    rows = {(r["op"], r["backend"]) for r in info_table()}
    assert {("rms_norm", "triton"), ("rope", "triton"), ("swiglu", "triton")} <= rows
    assert ("fused_linear_cross_entropy", "triton") in rows


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)
