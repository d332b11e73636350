"""int8_linear: every backend against a float64 oracle on awkward shapes, random (never zero) inputs."""

import pytest
import torch

from tinylm.kernels import int8_gemv as int8_gemv_module
from tinylm.kernels import int8_gemv_triton
from tinylm.kernels.int8_gemv import (
    compiled_reduction_rows,
    int8_linear,
    int8_linear_reference,
    rms_norm_int8_linear,
)
from tinylm.kernels.int8_gemv_triton import GEMV_MAX_ROWS, int8_gemv
from tinylm.kernels.triton_support import triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]
SHAPES = [((1, 1), 1), ((1, 7), 5), ((3, 300), 17), ((2, 1, 513), 33), ((1, 64), 96)]  # (x shape, N)
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def inputs(x_shape, n, dtype, device, bias):
    g = torch.Generator().manual_seed(sum(x_shape) + n)
    k = x_shape[-1]
    x = torch.randn(x_shape, generator=g).to(device, dtype)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    scale = (torch.rand(n, generator=g) * 0.02 + 0.001).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return x, w, scale, b


def oracle(x, w, scale, b):
    y = x.double() @ w.double().T * scale.double()
    return y + b.double() if b is not None else y


@pytest.mark.parametrize(("x_shape", "n"), SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64(backend, device, x_shape, n, dtype, tol, bias, assert_close_f64):
    x, w, scale, b = inputs(x_shape, n, dtype, device, bias)
    y = int8_linear(x, w, scale, b, backend=backend)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n)
    assert_close_f64(y, oracle(x, w, scale, b), tol, "output")


@pytest.mark.triton
@needs_triton
def test_triton_kernel_itself_and_prefill_fallback(device, assert_close_f64):
    x, w, scale, b = inputs((2, 257), 40, torch.float32, device, True)
    assert_close_f64(int8_gemv(x, w, scale, b), oracle(x, w, scale, b), 1e-5, "gemv")
    many = torch.randn(GEMV_MAX_ROWS + 1, 257).to(device)  # more rows: the reference path, same numbers
    got = int8_gemv_triton.int8_linear_triton(many, w, scale, b)
    assert_close_f64(got, oracle(many, w, scale, b), 1e-5, "prefill")


@pytest.mark.parametrize(("x_shape", "n"), [((1, 300), 17), ((2, 3, 64), 40), ((12, 64), 9)])
def test_torch_backend_compiled_is_a_fused_reduction_for_few_rows(x_shape, n, assert_close_f64):
    """Compiled, up to 8 rows take the product-and-sum form (int8 loads Inductor can fuse); more rows stay
    F.linear. Both match the float64 oracle in bf16 and float32."""
    calls = []
    for dtype, tol in [*DTYPES, (torch.float64, 1e-10)]:  # float64 stays float64 (no float32 detour)
        x, w, scale, b = inputs(x_shape, n, dtype, "cpu", bias=True)
        torch._dynamo.reset()
        f = torch.compile(int8_linear_reference, backend=lambda gm, _: calls.append(gm) or gm, fullgraph=True)
        assert_close_f64(f(x, w, scale, b), oracle(x, w, scale, b), tol, f"compiled {dtype}")
    ops = {str(node.target) for node in calls[-1].graph.nodes}
    rows = x.numel() // x.shape[-1]
    assert any("sum" in o for o in ops) == (rows <= 8) and any("linear" in o for o in ops) == (rows > 8)


def test_reference_formula():
    x, w, scale, b = inputs((3, 5), 4, torch.float32, "cpu", True)
    torch.testing.assert_close(int8_linear_reference(x, w, scale, b), (x @ w.float().T) * scale + b)


def test_input_errors():
    x, w, scale, _ = inputs((2, 8), 4, torch.float32, "cpu", False)
    with pytest.raises(TypeError, match="2-D int8"):
        int8_linear(x, w.float(), scale)
    with pytest.raises(ValueError, match="x has 7 features"):
        int8_linear(x[:, :7], w, scale)
    with pytest.raises(ValueError, match="one per output row"):
        int8_linear(x, w, scale[:3])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_llm_shapes_on_gpu(assert_close_f64):
    for k, n in ((768, 768), (768, 2048), (2048, 768), (4096, 11008)):
        x, w, scale, b = inputs((1, k), n, torch.bfloat16, "cuda", False)
        assert_close_f64(int8_linear(x, w, scale, backend="triton"), oracle(x, w, scale, b), 2e-2, f"{k}x{n}")


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)


def test_compiled_reduction_rows_switches_the_compiled_form(assert_close_f64):
    """``compiled_reduction_rows(0)``: one row compiles as F.linear (gpt-fast's form), same numbers; the
    setting is restored after the block and a negative count is refused."""
    x, w, scale, b = inputs((1, 300), 17, torch.float32, "cpu", True)
    graphs = []
    torch._dynamo.reset()
    f = torch.compile(int8_linear_reference, backend=lambda gm, _: graphs.append(gm) or gm, fullgraph=True)
    with compiled_reduction_rows(0):
        assert_close_f64(f(x, w, scale, b), oracle(x, w, scale, b), 1e-5, "F.linear form")
    assert int8_gemv_module.REDUCTION_MAX_ROWS == 8
    ops = {str(node.target) for node in graphs[-1].graph.nodes}
    assert any("linear" in o for o in ops) and not any("sum" in o for o in ops)
    with pytest.raises(ValueError, match="rows must be >= 0"), compiled_reduction_rows(-1):
        pass


def norm_oracle(x, g, eps, w, scale, b):
    xd = x.double()
    return oracle(xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * g.double(), w, scale, b)


@pytest.mark.parametrize(("x_shape", "n"), SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_rms_norm_folded_in_matches_float64(backend, device, x_shape, n, dtype, tol, bias, assert_close_f64):
    """The norm folded into the GEMV (its 1/rms applied after the sum) equals norm-then-product."""
    x, w, scale, b = inputs(x_shape, n, dtype, device, bias)
    g = (torch.rand(x_shape[-1], generator=torch.Generator().manual_seed(n)) + 0.5).to(device, dtype)
    y = rms_norm_int8_linear(x * 3.0, g, 1e-5, w, scale, b, backend=backend)  # not unit scale: rms matters
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n)
    assert_close_f64(y, norm_oracle(x * 3.0, g, 1e-5, w, scale, b), tol, "output")


def test_rms_norm_int8_linear_errors():
    x, w, scale, _ = inputs((2, 8), 4, torch.float32, "cpu", False)
    with pytest.raises(ValueError, match=r"norm_weight has shape \(7,\), need \(8,\)"):
        rms_norm_int8_linear(x, torch.ones(7), 1e-6, w, scale)
    with pytest.raises(TypeError, match="2-D int8"):
        rms_norm_int8_linear(x, torch.ones(8), 1e-6, w.float(), scale)


@pytest.mark.parametrize("eps_type", ["fp32", "fp64"])
@pytest.mark.parametrize(("norm", "pdl"), [(False, False), (True, False), (True, True)])
def test_kernel_compiles_for_hopper(eps_type, norm, pdl):
    """Triton compiles the GEMV for sm_90 without a GPU, with the norm folded in or not, and with ``eps`` as
    Triton passes it (fp32) and as a compiled graph may (fp64); with ``PDL`` the kernel waits on the
    previous grid first and lets the next one launch (``griddepcontrol``)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = int8_gemv_triton._int8_gemv_kernel
    constexprs = {"HAS_BIAS": True, "NORM": norm, "BLOCK_N": 4, "BLOCK_K": 512, "PDL": pdl}
    types = {name: "*bf16" for name in ("Y", "X", "S", "B", "G")}
    types.update(W="*i8", eps=eps_type)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert ("rsqrt" in ptx) == norm and "ld.global" in ptx
    assert ("griddepcontrol.wait" in ptx) == pdl and ("griddepcontrol.launch_dependents" in ptx) == pdl


def test_pdl_op_shapes_and_availability():
    """The PDL op's fake (meta) implementation gives the output shape; off Hopper it says why not."""
    x = torch.empty(1, 3, 64, device="meta", dtype=torch.bfloat16)
    w, s = torch.empty(40, 64, device="meta", dtype=torch.int8), torch.empty(40, device="meta")
    y = int8_gemv_triton.int8_gemv_pdl(x, w, s, None, torch.empty(64, device="meta"), 1e-6)
    assert y.shape == (1, 3, 40) and y.dtype == torch.bfloat16
    if not int8_gemv_triton.pdl_available():
        assert int8_gemv_triton.why_pdl_unavailable().startswith("needs ")


def test_pdl_function_takes_the_reference_where_the_kernel_does_not(assert_close_f64):
    """Off the GPU (and for a prefill's many rows) ``rms_norm_int8_linear_pdl`` is the reference."""
    for rows in (1, GEMV_MAX_ROWS + 1):
        x, w, scale, b = inputs((rows, 64), 24, torch.float32, "cpu", True)
        g = torch.rand(64, generator=torch.Generator().manual_seed(rows)) + 0.5
        y = int8_gemv_triton.rms_norm_int8_linear_pdl(x, g, 1e-5, w, scale, b)
        xd = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * g.double()
        assert_close_f64(y, oracle(xd, w, scale, b), 1e-5, f"{rows} rows")


@pytest.mark.gpu
@pytest.mark.skipif(not int8_gemv_triton.pdl_available(), reason="needs Hopper and compiled Triton")
@pytest.mark.parametrize("norm", [False, True])
def test_pdl_op_matches_float64_eager_and_in_a_compiled_cuda_graph(norm, assert_close_f64):
    """Launched with PDL after and before other kernels: eager, and compiled (fullgraph, CUDA graphs) over
    replays with changing inputs, against the float64 oracle."""
    x, w, scale, b = inputs((1, 768), 2304, torch.bfloat16, "cuda", True)
    g = (torch.rand(768, generator=torch.Generator().manual_seed(0)) + 0.5).to("cuda", torch.bfloat16)
    g = g if norm else None

    def expected(x):
        xd = x.double()
        if norm:
            xd = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * g.double()
        return oracle(xd, w, scale, b)

    def step(x):
        return int8_gemv_triton.int8_gemv_pdl(x * 2.0, w, scale, b, g, 1e-5) + 1.0

    assert_close_f64(step(x), expected(2.0 * x) + 1.0, 2e-2, "eager")
    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    for i in range(3):
        x.normal_()
        assert_close_f64(compiled(x).clone(), expected(2.0 * x) + 1.0, 2e-2, f"replay {i}")
