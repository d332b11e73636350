"""paged_decode_attention: every backend against a float64 oracle on ragged rows, shared blocks and GQA."""

import math

import pytest
import torch

from tinylm.kernels.paged_attention import paged_decode_attention
from tinylm.kernels.paged_attention_triton import paged_decode
from tinylm.kernels.triton_support import triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)]  # float64: the reference
# (heads, kv heads, head_dim, block_size, row lengths): lengths not multiples of the block, one-token rows
CASES = [
    (4, 4, 16, 8, [1, 9, 23]),
    (6, 2, 64, 16, [17, 40, 5, 33]),
    (8, 1, 32, 32, [70, 1]),
    (2, 2, 256, 8, [12]),
    (3, 1, 48, 16, [31, 2, 16]),  # a head_dim that is not a power of two (masked lanes)
]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def inputs(heads, kv_heads, hd, bs, lengths, dtype, device, share=True, seed=0):
    """Random pool and queries; rows get distinct random blocks, and with ``share`` every row starts with
    row 0's first block (a shared prompt prefix). Unused table entries point at random live blocks."""
    g = torch.Generator().manual_seed(seed + hd + bs)
    b = len(lengths)
    width = max(math.ceil(n / bs) for n in lengths) + 1  # one spare column: entries past the length
    num_blocks = b * width + 3
    order = torch.randperm(num_blocks, generator=g)
    table = order[: b * width].view(b, width).clone()
    if share:
        table[:, 0] = table[0, 0]
    q = torch.randn(b, heads, hd, generator=g).to(device, dtype)
    k = torch.randn(num_blocks * bs, kv_heads, hd, generator=g).to(device, dtype)
    v = torch.randn(num_blocks * bs, kv_heads, hd, generator=g).to(device, dtype)
    return q, k, v, table.to(device, torch.int32), torch.tensor(lengths, dtype=torch.int32, device=device)


def oracle(q, k, v, table, lengths, bs, scale):
    """Row by row, head by head, in float64: softmax over the row's own positions, read slot by slot."""
    q, k, v, table = q.double().cpu(), k.double().cpu(), v.double().cpu(), table.cpu()
    b, h, hd = q.shape
    group = h // k.shape[1]
    out = torch.empty(b, h, hd, dtype=torch.float64)
    for row in range(b):
        n = int(lengths[row])
        slots = torch.tensor([int(table[row, j // bs]) * bs + j % bs for j in range(n)])
        for head in range(h):
            keys, vals = k[slots, head // group], v[slots, head // group]  # (n, hd)
            out[row, head] = torch.softmax(keys @ q[row, head] * scale, dim=0) @ vals
    return out


@pytest.mark.parametrize(("heads", "kv_heads", "hd", "bs", "lengths"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_matches_float64(backend, device, heads, kv_heads, hd, bs, lengths, dtype, tol, assert_close_f64):
    q, k, v, table, lens = inputs(heads, kv_heads, hd, bs, lengths, dtype, device)
    scale = 0.7 / math.sqrt(hd)
    out = paged_decode_attention(q, k, v, table, lens, bs, scale, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_f64(out, oracle(q, k, v, table, lens, bs, scale), tol, "output")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("n_splits", [1, 2, 5])
def test_split_positions_merge_exactly(device, n_splits, assert_close_f64):
    """Flash-decoding splits (some of them empty for the short rows) give the one-pass result."""
    q, k, v, table, lens = inputs(4, 2, 32, 8, [150, 3, 77], torch.float32, device, seed=1)
    out = paged_decode(q, k, v, table, lens, 8, 0.2, n_splits=n_splits)
    assert_close_f64(out, oracle(q, k, v, table, lens, 8, 0.2), 1e-5, f"{n_splits} splits")


@pytest.mark.triton
@needs_triton
def test_int64_tables_and_default_scale(device, assert_close_f64):
    q, k, v, table, lens = inputs(2, 1, 16, 16, [20, 33], torch.float32, device, share=False)
    out = paged_decode_attention(q, k, v, table.long(), lens.long(), 16, backend="triton")
    assert_close_f64(out, oracle(q, k, v, table, lens, 16, 0.25), 1e-5, "int64")


def test_input_errors():
    q, k, v, table, lens = inputs(4, 2, 16, 8, [5, 9], torch.float32, "cpu")
    with pytest.raises(ValueError, match="not a multiple"):
        paged_decode_attention(q[:, :3], k, v, table, lens, 8)
    with pytest.raises(ValueError, match="must be \\(B, H, head_dim\\)"):
        paged_decode_attention(q[:, :, None], k, v, table, lens, 8)
    with pytest.raises(ValueError, match="block_size 7"):
        paged_decode_attention(q, k, v, table, lens, 7)
    with pytest.raises(ValueError, match="block_table must be an int32/int64"):
        paged_decode_attention(q, k, v, table.float(), lens, 8)
    with pytest.raises(ValueError, match="lengths must be"):
        paged_decode_attention(q, k, v, table, lens[:1], 8)
    with pytest.raises(KeyError, match="unknown kernel op"):
        from tinylm.kernels import dispatch

        dispatch("paged_decode_attentio")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_serving_shapes_on_gpu(assert_close_f64):
    lengths = [int(x) for x in torch.randint(1, 700, (48,), generator=torch.Generator().manual_seed(0))]
    for heads, kv_heads, hd, bs in ((6, 6, 64, 16), (12, 4, 128, 8), (8, 8, 256, 32)):
        q, k, v, table, lens = inputs(heads, kv_heads, hd, bs, lengths, torch.bfloat16, "cuda")
        out = paged_decode_attention(q, k, v, table, lens, bs, backend="triton")
        ref = oracle(q, k, v, table, lens, bs, 1 / math.sqrt(hd))
        assert_close_f64(out, ref, 2e-2, f"{heads}/{kv_heads} heads, hd {hd}, block {bs}")


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)


@pytest.mark.parametrize("scale_type", ["fp32", "fp64"])
def test_decode_kernel_compiles_for_hopper_whatever_the_scale_type(scale_type):
    """Triton compiles the kernel for sm_90 without a GPU (ptxas ships with Triton). A Python float reaches
    the kernel as fp32 from Triton but as fp64 from Inductor (a compiled decode step): the scores must stay
    fp32 either way (fp64 broke the loop-carried types on the GPU box)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tinylm.kernels.paged_attention_triton import _paged_decode_kernel as fn

    constexprs = {"GROUP": 2, "PAGE": 16, "BLOCK_D": 64, "BLOCK_N": 64, "SPLIT": True}
    types = {"O": "*fp32", "M": "*fp32", "L": "*fp32", "Q": "*bf16", "K": "*bf16", "V": "*bf16"}
    types.update(T="*i32", LEN="*i32", scale=scale_type)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert "ld.global" in compiled.asm["ptx"]
