"""linear (few-row): every backend against a float64 oracle on awkward shapes, random (never zero) inputs.

The Triton interpreter's ``tl.dot`` is wrong for bfloat16 (numpy has no bfloat16), so on CPU the kernel is
checked in float32 and float16; bfloat16 runs on a GPU (``gpu``-marked tests).
"""

import importlib

import pytest
import torch
from torch import nn

from tinylm.kernels import (
    KernelLinear,
    linear,
    linear_reference,
    linear_triton,
    preferring,
    use_kernel_linears,
)
from tinylm.kernels.linear import decode_linear
from tinylm.kernels.linear_triton import MAX_ROWS, choose_tile, few_row_linear
from tinylm.kernels.triton_support import INTERPRETED, triton_available

linear_module = importlib.import_module("tinylm.kernels.linear")  # the package exports a function `linear`
CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3)]
if CUDA and not INTERPRETED:
    DTYPES.append((torch.bfloat16, 2e-2))
# (x shape, N): one row, odd K and N, several rows and leading dims, K over several tiles
SHAPES = [((1, 7), 5), ((3, 300), 17), ((2, 1, 513), 33), ((32, 1030), 40), ((5, 64), 96)]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def inputs(x_shape, n, dtype, device, bias):
    g = torch.Generator().manual_seed(sum(x_shape) + n)
    x = torch.randn(x_shape, generator=g).to(device, dtype)
    w = (torch.randn(n, x_shape[-1], generator=g) / x_shape[-1] ** 0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return x, w, b


def oracle(x, w, b):
    y = x.double() @ w.double().T
    return y + b.double() if b is not None else y


@pytest.mark.parametrize(("x_shape", "n"), SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64(backend, device, x_shape, n, dtype, tol, bias, assert_close_f64):
    x, w, b = inputs(x_shape, n, dtype, device, bias)
    y = linear(x, w, b, backend=backend)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n)
    assert_close_f64(y, oracle(x, w, b), tol, "output")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("tile", [(32, 16, 128), (32, 32, 64), (64, 64, 64)])
def test_every_tile(device, tile, assert_close_f64):
    """Tiles that do not divide N, K or the rows (masked edges)."""
    x, w, b = inputs((20, 1100), 70, torch.float32, device, True)
    assert_close_f64(few_row_linear(x, w, b, tile=tile), oracle(x, w, b), 1e-5, f"tile {tile}")


@pytest.mark.triton
@needs_triton
def test_many_rows_and_float64_take_the_reference(device, assert_close_f64):
    x, w, b = inputs((MAX_ROWS + 1, 40), 24, torch.float32, device, True)
    assert_close_f64(linear_triton.linear_triton(x, w, b), oracle(x, w, b), 1e-5, "prefill rows")
    x, w, b = inputs((2, 40), 24, torch.float64, device, True)
    assert_close_f64(linear_triton.linear_triton(x, w, b), oracle(x, w, b), 1e-12, "float64")


def test_tile_choice():
    """The measured winners: one row block for all rows, thin output tiles, a wide head tile."""
    assert choose_tile(1, 2304, 768) == (16, 32, 256)
    assert choose_tile(32, 768, 2048) == (32, 16, 256)
    assert choose_tile(33, 32000, 768) == (64, 64, 64)
    assert choose_tile(3, 40, 70) == (16, 32, 128)
    # swiglu_out streams two weight tiles per stage: float32 at 16 rows then needs the narrower K step
    assert choose_tile(16, 4096, 768, 4) == (16, 32, 256)
    assert choose_tile(16, 4096, 768, 4, weight_tiles=2) == (16, 32, 128)
    for m in (1, 16, 33, 64):  # every tile's pipeline stage fits shared memory, float32 included
        for element_size in (2, 4):
            bm, bn, bk = choose_tile(m, 4096, 4096, element_size)
            assert (bm + bn) * bk * element_size <= 48 * 1024, (m, element_size)
    assert choose_tile(64, 768, 2048, element_size=4) == (64, 16, 128)


@pytest.mark.triton
@needs_triton
def test_float32_at_64_rows_uses_the_chosen_tile(device, assert_close_f64):
    x, w, b = inputs((64, 2048), 48, torch.float32, device, True)
    assert_close_f64(few_row_linear(x, w, b), oracle(x, w, b), 1e-5, "64 rows fp32")


def test_kernel_linear_is_an_nn_linear_using_the_op(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 5, bias=False))
    x = torch.randn(3, 12)
    before = model(x)
    assert use_kernel_linears(model, skip=("2",)) == 1
    assert type(model[0]) is KernelLinear and type(model[2]) is nn.Linear
    assert isinstance(model[0], nn.Linear) and list(model.state_dict()) == ["0.weight", "0.bias", "2.weight"]
    calls = []

    def spy(op, backend, device):
        calls.append(op)
        return lambda x, w, b: linear_reference(x, w, b) + 1.0

    monkeypatch.setattr(linear_module, "dispatch", spy)
    after = model(x)
    assert calls == ["linear"]
    torch.testing.assert_close(
        after, model[2](model[1](linear_reference(x, model[0].weight, model[0].bias) + 1.0))
    )
    monkeypatch.undo()
    with preferring({"linear": "torch"}):
        torch.testing.assert_close(model(x), before)


def test_input_errors():
    x, w, b = inputs((2, 8), 4, torch.float32, "cpu", True)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        linear(x, w[None])
    with pytest.raises(ValueError, match="x has 7 features"):
        linear(x[:, :7], w)
    with pytest.raises(TypeError, match="x is torch.float32 but weight is torch.float16"):
        linear(x, w.half())
    with pytest.raises(ValueError, match=r"bias has shape \(3,\)"):
        linear(x, w, b[:3])


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 32])
def test_one_graph_under_compile_with_cuda_graphs(rows, assert_close_f64):
    """The op compiles with fullgraph=True and replays inside a CUDA graph as the input changes."""
    x, w, b = inputs((rows, 2048), 768, torch.bfloat16, "cuda", True)

    def step(x, w, b):
        return linear(x, w, b, backend="triton") * 2.0 + 1.0

    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    for i in range(3):
        x.normal_()
        assert_close_f64(compiled(x, w, b).clone(), 2.0 * oracle(x, w, b) + 1.0, 2e-2, f"replay {i}")


@pytest.mark.parametrize(
    ("dtype", "fold"), [("bf16", ""), ("fp32", ""), ("bf16", "norm"), ("bf16", "swiglu"), ("bf16", "glu_out")]
)
def test_kernel_compiles_for_hopper(dtype, fold):
    """Triton compiles the kernel for sm_90 without a GPU (ptxas ships with Triton): tensor-core MMA, also
    with the norm (eps as Inductor passes it, fp64) or SwiGLU folded in and a residual added, or with the
    SwiGLU of a gate/up product in the epilogue."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = linear_triton._linear_kernel
    constexprs = {"HAS_BIAS": True, "IEEE": dtype == "fp32", "BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 128,
                  "NORM": fold == "norm", "SWIGLU": fold == "swiglu", "RESIDUAL": fold in ("norm", "swiglu"),
                  "GLU_OUT": fold == "glu_out"}  # fmt: skip
    ptr = f"*{dtype}"
    types = {"Y": "*fp32", "X": ptr, "W": ptr, "B": ptr, "G": ptr, "R": ptr, "eps": "fp64"}
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert "mma" in compiled.asm["ptx"] or dtype == "fp32"


def decode_oracle(x, w, b, g, eps, swiglu, r):
    """Float64: [residual +] (rms_norm(x) | silu(gate) * up | x) @ w.T + b."""
    x = x.double().cpu()
    if swiglu:
        gate, up = x.chunk(2, dim=-1)
        x = gate * torch.sigmoid(gate) * up
    if g is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.double().cpu()
    y = oracle(x, w.cpu(), b.cpu() if b is not None else None)
    return y + r.double().cpu() if r is not None else y


@pytest.mark.parametrize(("x_shape", "n"), [((3, 300), 17), ((2, 1, 513), 33), ((32, 1030), 40)])
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("fold", ["norm", "swiglu", "norm+residual", "swiglu+residual", "residual"])
def test_decode_linear_matches_float64(backend, device, x_shape, n, dtype, tol, fold, assert_close_f64):
    """The norm, SwiGLU and residual folded into the product, each against the float64 composition."""
    swiglu, norm, res = "swiglu" in fold, "norm" in fold, "residual" in fold
    width = x_shape[-1]
    x, w, b = inputs((*x_shape[:-1], 2 * width if swiglu else width), n, dtype, device, True)
    w = w[:, :width].contiguous()
    gen = torch.Generator().manual_seed(n)
    g = (torch.rand(width, generator=gen) + 0.5).to(device, dtype) if norm else None
    r = torch.randn(*x_shape[:-1], n, generator=gen).to(device, dtype) if res else None
    y = decode_linear(x, w, b, norm_weight=g, eps=1e-5, swiglu=swiglu, residual=r, backend=backend)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n)
    assert_close_f64(y, decode_oracle(x, w, b, g, 1e-5, swiglu, r), 4 * tol, fold)


@pytest.mark.parametrize(("x_shape", "n"), [((1, 7), 5), ((3, 300), 17), ((32, 1030), 40)])
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("norm", [False, True])
def test_decode_linear_swiglu_out_matches_float64(
    backend, device, x_shape, n, dtype, tol, norm, assert_close_f64
):
    """A fused [gate; up] product with silu(gate) * up in the epilogue (and the input norm folded in)."""
    x, w, b = inputs(x_shape, 2 * n, dtype, device, True)
    gen = torch.Generator().manual_seed(n)
    g = (torch.rand(x_shape[-1], generator=gen) + 0.5).to(device, dtype) if norm else None
    y = decode_linear(x, w, b, norm_weight=g, eps=1e-5, swiglu_out=True, backend=backend)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n)
    gu = decode_oracle(x, w, b, g, 1e-5, False, None)
    gate, up = gu[..., :n], gu[..., n:]
    assert_close_f64(y, gate * torch.sigmoid(gate) * up, 4 * tol, "swiglu_out")


def test_decode_linear_input_errors():
    x, w, _ = inputs((2, 8), 4, torch.float32, "cpu", False)
    with pytest.raises(ValueError, match="norm_weight and swiglu together"):
        decode_linear(torch.randn(2, 16), w, norm_weight=torch.ones(8), swiglu=True)
    with pytest.raises(ValueError, match="even width"):
        decode_linear(torch.randn(2, 17), w, swiglu=True)
    with pytest.raises(ValueError, match="norm_weight has shape"):
        decode_linear(x, w, norm_weight=torch.ones(7))
    with pytest.raises(ValueError, match="swiglu_out goes with norm_weight only"):
        decode_linear(x, w, residual=torch.ones(2, 2), swiglu_out=True)
    with pytest.raises(ValueError, match="even height"):
        decode_linear(x, w[:3], swiglu_out=True)
    with pytest.raises(ValueError, match="residual has shape"):
        decode_linear(x, w, residual=torch.ones(2, 5))
    with pytest.raises(ValueError, match="x has 8 features, weight expects 6"):
        decode_linear(x, w[:, :6])
