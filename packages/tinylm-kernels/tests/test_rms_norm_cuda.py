"""CUDA RMSNorm: availability logic, the sources compiling for sm_90 without a GPU, and (on a GPU) forward
and backward against a float64 reference over odd shapes x dtypes, non-contiguous input, opcheck, compile."""

import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from tinylm.kernels import build
from tinylm.kernels.registry import ENV_VAR, choose
from tinylm.kernels.rms_norm import rms_norm_reference
from tinylm.kernels.rms_norm_cuda import is_available, rms_norm_cuda, why_unavailable

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}  # against float64
SAME_DTYPE_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # a rounding flip or two


def test_cpu_machine_does_not_choose_cuda(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    if CUDA:
        pytest.skip("this machine has a CUDA device")
    assert choose("rms_norm").name != "cuda"
    assert not is_available()
    assert "no CUDA device" in why_unavailable() or "without CUDA" in why_unavailable()
    with pytest.raises(RuntimeError, match="not available"):
        choose("rms_norm", backend="cuda")


def test_cuda_backend_serves_cpu_tensors_through_the_reference():
    x, w = torch.randn(3, 8), torch.rand(8) + 0.5
    torch.testing.assert_close(rms_norm_cuda(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))


def test_build_dir_is_keyed_by_torch_cuda_arch_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    d90, d80 = build.build_dir("9.0"), build.build_dir("8.0")
    assert d90.parent == tmp_path and d90 != d80
    assert torch.__version__.split("+")[0] in d90.name and "sm9.0" in d90.name
    assert build.gencode_flags("8.0;9.0+PTX") == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    with pytest.raises(ValueError, match="bad CUDA arch"):
        build.gencode_flags("sm_90")


@pytest.mark.slow
@pytest.mark.skipif(
    build.find_cuda_home() is None, reason="nvcc not found: the CUDA sources are not compiled"
)
def test_sources_compile_for_sm90_without_a_gpu(tmp_path):
    """A syntax or binding error fails here, on any machine with nvcc (CI has no GPU)."""
    if build.find_ninja() is not None:  # the real JIT path: compile, link and import
        module = build.build(arch_list="9.0", root=tmp_path)
        assert hasattr(module, "rms_norm_fwd") and hasattr(module, "rms_norm_bwd")
        return
    # No ninja: compile each source to an object with the torch include paths.
    from torch.utils.cpp_extension import include_paths

    cuda_home = build.find_cuda_home()
    incs = [f"-I{p}" for p in include_paths()] + [f"-I{cuda_home}/include"]
    nvcc = [str(cuda_home / "bin" / "nvcc"), "-std=c++20", *build.CUDA_FLAGS, *build.gencode_flags("9.0")]
    cmds = [[*nvcc, "-c", str(build.CSRC / "rms_norm.cu"), "-o", str(tmp_path / "k.o"), *incs]]
    if cxx := shutil.which("c++"):
        py_inc = f"-I{sysconfig.get_paths()['include']}"
        cpp = str(build.CSRC / "rms_norm_binding.cpp")
        cmds.append([cxx, "-std=c++20", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=x", cpp, *incs, py_inc])
    for cmd in cmds:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-5000:]}"


# ---------------------------------------------------------------- GPU


def reference_f64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w.double()


def poison_allocator(nbytes: int) -> None:
    """Leave NaNs in the caching allocator's free blocks, so an output element never written shows up."""
    for size in (nbytes, nbytes // 2 + 512, 4 * 2**20):
        torch.full((max(size, 4) // 4,), float("nan"), device="cuda")


def inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g, dtype=torch.float64) * 3
    x = torch.where(x.abs() < 0.05, 0.5, x)  # never zero
    w = torch.rand(shape[-1], device="cuda", generator=g, dtype=torch.float64) + 0.5
    dy = torch.randn(shape, device="cuda", generator=g, dtype=torch.float64)
    return x.to(dtype), w.to(dtype), dy.to(dtype)


def check_fwd_bwd(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, eps: float = 1e-6) -> None:
    tol = TOL[x.dtype]
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference_f64(xr, wr, eps)
    rdx, rdw = torch.autograd.grad(ref, (xr, wr), dy.double())
    xg, wg = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    poison_allocator(x.numel() * x.element_size())
    y = rms_norm_cuda(xg, wg, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), ref.detach(), atol=tol, rtol=tol)
    # same dtype semantics as the torch reference (rounding of the normalised row before the weight)
    same = rms_norm_reference(x.detach(), w.detach(), eps)
    torch.testing.assert_close(y, same, atol=1e-5, rtol=SAME_DTYPE_RTOL[x.dtype])
    poison_allocator(x.numel() * x.element_size())
    dx, dw = torch.autograd.grad(y, (xg, wg), dy)
    torch.testing.assert_close(dx.double(), rdx, atol=tol, rtol=tol)
    torch.testing.assert_close(dw.double(), rdw, atol=tol * max(1.0, x.shape[0] ** 0.5), rtol=tol)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [1, 3, 127])
@pytest.mark.parametrize("hidden", [1, 7, 64, 1024, 4096, 4097, 8192, 12288, 20000])
def test_forward_backward_match_float64(dtype, rows, hidden):
    check_fwd_bwd(*inputs((rows, hidden), dtype, seed=rows * 100003 + hidden))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_misaligned_and_batched_inputs(dtype):
    x, _, dy = inputs((256, 33), dtype, seed=1)
    _, w, _ = inputs((1, 256), dtype, seed=7)
    check_fwd_bwd(x.t(), w, dy.t())  # transposed view: rows of 256 with stride 33
    x, w, dy = inputs((6, 512), dtype, seed=2)
    check_fwd_bwd(x[:, ::2], w[:256], dy[:, ::2])  # strided rows
    flat = torch.cat([x.new_ones(1), x.flatten()])
    check_fwd_bwd(flat[1:].view(6, 512), w, dy)  # contiguous but not 16-byte aligned: scalar path
    x, w, dy = inputs((2, 5, 64), dtype, seed=3)
    check_fwd_bwd(x, w, dy)


@gpu
@needs_cuda
def test_no_weight_and_fallbacks():
    x, _, _ = inputs((4, 96), torch.bfloat16, seed=4)
    ones = torch.ones(96, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(rms_norm_cuda(x, None), rms_norm_reference(x, ones))
    w32 = torch.rand(96, device="cuda") + 0.5  # weight dtype differs from x: the reference serves
    torch.testing.assert_close(rms_norm_cuda(x, w32), rms_norm_reference(x, w32))
    x64 = x.double()
    torch.testing.assert_close(rms_norm_cuda(x64, None), rms_norm_reference(x64, None))


@gpu
@needs_cuda
def test_cuda_is_chosen_on_a_gpu(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert is_available(), why_unavailable()
    assert choose("rms_norm").name == "cuda"


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(dtype):
    x, w, dy = inputs((3, 5, 136), dtype, seed=5)
    x.requires_grad_()
    w.requires_grad_()
    torch.library.opcheck(torch.ops.tinylm.rms_norm_fwd.default, (x, w, 1e-5))
    _, rstd = torch.ops.tinylm.rms_norm_fwd(x.detach(), w.detach(), 1e-5)
    torch.library.opcheck(torch.ops.tinylm.rms_norm_bwd.default, (dy, x.detach(), w.detach(), rstd))


@gpu
@needs_cuda
def test_torch_compile_forward_and_backward():
    torch._dynamo.reset()
    x, w, dy = inputs((16, 256), torch.bfloat16, seed=6)

    def block(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return rms_norm_cuda(x * 2, w, 1e-6).float().square()

    compiled = torch.compile(block, fullgraph=True)
    xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
    xc, wc = x.clone().requires_grad_(), w.clone().requires_grad_()
    out_e, out_c = block(xe, we), compiled(xc, wc)
    torch.testing.assert_close(out_c, out_e)
    ge = torch.autograd.grad(out_e, (xe, we), dy.float())
    gc = torch.autograd.grad(out_c, (xc, wc), dy.float())
    for a, b in zip(gc, ge, strict=True):
        torch.testing.assert_close(a, b)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
