"""int4_linear: packing, and every backend against a float64 oracle on awkward shapes, random inputs."""

import pytest
import torch

from tinylm.kernels import int8_gemv
from tinylm.kernels.int4_gemv import (
    dequantize_int4,
    int4_linear,
    int4_linear_reference,
    pack_int4,
    unpack_int4,
)
from tinylm.kernels.int4_gemv_triton import GEMV_MAX_ROWS, int4_gemv, int4_linear_triton
from tinylm.kernels.triton_support import triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]
# (x shape, N, group): odd N, K not a multiple of any tile, one group per row, several rows of x
SHAPES = [((1, 2), 1, 2), ((1, 96), 5, 32), ((3, 300), 17, 30), ((2, 1, 514), 33, 2), ((1, 256), 96, 128)]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def inputs(x_shape, n, group, dtype, device, bias):
    g = torch.Generator().manual_seed(sum(x_shape) + n + group)
    k = x_shape[-1]
    x = torch.randn(x_shape, generator=g).to(device, dtype)
    q = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(n, k // group, generator=g) * 0.02 + 0.001).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return x, q, pack_int4(q).to(device), scale, b


def oracle(x, q, scale, b):
    group = q.shape[1] // scale.shape[1]
    w = q.double().to(x.device) * scale.double().repeat_interleave(group, dim=1)
    y = x.double() @ w.T
    return y + b.double() if b is not None else y


def test_pack_round_trip_and_layout():
    q = torch.randint(-8, 8, (7, 10), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 5)
    torch.testing.assert_close(unpack_int4(packed), q, rtol=0, atol=0)
    assert packed[0, 0].item() == (int(q[0, 0]) + 8) | ((int(q[0, 1]) + 8) << 4)  # column 0 in the low nibble
    with pytest.raises(ValueError, match="even number of columns"):
        pack_int4(q[:, :3])
    with pytest.raises(ValueError, match=r"-8\.\.7"):
        pack_int4(q + 8)


@pytest.mark.parametrize(("x_shape", "n", "group"), SHAPES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64(backend, device, x_shape, n, group, dtype, tol, bias, assert_close_f64):
    x, q, packed, scale, b = inputs(x_shape, n, group, dtype, device, bias)
    y = int4_linear(x, packed, scale, b, backend=backend)
    assert y.dtype == dtype and y.shape == (*x_shape[:-1], n)
    assert_close_f64(y, oracle(x, q, scale, b), tol, "output")


@pytest.mark.triton
@needs_triton
def test_triton_kernel_itself_and_prefill_fallback(device, assert_close_f64):
    x, q, packed, scale, b = inputs((2, 258), 40, 6, torch.float32, device, True)
    assert_close_f64(int4_gemv(x, packed, scale, b), oracle(x, q, scale, b), 1e-5, "gemv")
    many = torch.randn(GEMV_MAX_ROWS + 1, 258).to(device)  # more rows: the reference path, same numbers
    assert_close_f64(int4_linear_triton(many, packed, scale, b), oracle(many, q, scale, b), 1e-5, "prefill")


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)


@pytest.mark.parametrize(("x_shape", "n"), [((1, 64), 17), ((2, 3, 64), 40), ((12, 64), 9)])
def test_torch_backend_compiled_is_a_fused_reduction_for_few_rows(x_shape, n, assert_close_f64):
    """Compiled, up to 8 rows take the product-and-sum form over the packed bytes; more rows stay F.linear.
    Both match the float64 oracle."""
    graphs = []
    for dtype, tol in [*DTYPES, (torch.float64, 1e-10)]:
        x, q, packed, scale, b = inputs(x_shape, n, 16, dtype, "cpu", True)
        torch._dynamo.reset()
        f = torch.compile(
            int4_linear_reference, backend=lambda gm, _: graphs.append(gm) or gm, fullgraph=True
        )
        assert_close_f64(f(x, packed, scale, b), oracle(x, q, scale, b), tol, f"compiled {dtype}")
    ops = {str(node.target) for node in graphs[-1].graph.nodes}
    rows = x.numel() // x.shape[-1]
    assert any("sum" in o for o in ops) == (rows <= int8_gemv.REDUCTION_MAX_ROWS)
    assert any("linear" in o for o in ops) == (rows > int8_gemv.REDUCTION_MAX_ROWS)


def test_dequantize_and_input_errors():
    x, q, packed, scale, _ = inputs((2, 8), 4, 4, torch.float32, "cpu", False)
    torch.testing.assert_close(
        dequantize_int4(packed, scale, torch.float32), q * scale.repeat_interleave(4, 1)
    )
    with pytest.raises(TypeError, match="2-D uint8"):
        int4_linear(x, q, scale)
    with pytest.raises(ValueError, match="x has 7 features"):
        int4_linear(x[:, :7], packed, scale)
    with pytest.raises(ValueError, match=r"scale must be \(N, K / group\)"):
        int4_linear(x, packed, scale[:3])
    with pytest.raises(ValueError, match=r"scale must be \(N, K / group\)"):
        int4_linear(x, packed, torch.ones(4, 3))
    with pytest.raises(ValueError, match="group size must be even"):
        int4_linear(torch.randn(2, 6), pack_int4(torch.zeros(4, 6, dtype=torch.int8)), torch.ones(4, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_llm_shapes_on_gpu(assert_close_f64):
    for k, n, group in ((768, 768, 32), (768, 2304, 128), (2048, 768, 64), (4096, 11008, 128)):
        x, q, packed, scale, b = inputs((1, k), n, group, torch.bfloat16, "cuda", True)
        got = int4_linear(x, packed, scale, b, backend="triton")
        assert_close_f64(got, oracle(x, q, scale, b), 2e-2, f"{k}x{n} g{group}")


@pytest.mark.parametrize(("block_k", "group"), [(1024, 32), (4096, 128), (1024, 30)])
def test_kernel_compiles_for_hopper(block_k, group):
    """Triton compiles the GEMV for sm_90 without a GPU, for the tuned tiles and an odd group size."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tinylm.kernels import int4_gemv_triton

    fn = int4_gemv_triton._int4_gemv_kernel
    constexprs = {"GROUP": group, "HAS_BIAS": True, "BLOCK_N": 4, "BLOCK_K": block_k}
    types = {name: "*bf16" for name in ("Y", "X", "S", "B")}
    types.update(P="*u8")
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert "ld.global" in ptx and "st.global" in ptx
