"""decode_attention over a static cache: every backend against a float64 oracle, splits, padding, GQA,
and the Triton op inside one compiled graph (on a GPU)."""

import math

import pytest
import torch

from tinylm.kernels.decode_attention import decode_attention
from tinylm.kernels.decode_attention_triton import static_decode
from tinylm.kernels.triton_support import triton_available

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)]  # float64: the reference
# (batch, heads, kv heads, head_dim, slots L, position): the position is not a multiple of any tile size
CASES = [
    (3, 4, 4, 16, 40, 0),  # the first decode step: one slot
    (2, 6, 2, 64, 130, 77),
    (1, 8, 1, 32, 272, 271),  # the last slot
    (2, 2, 2, 256, 24, 13),
    (3, 3, 1, 48, 70, 41),  # a head_dim that is not a power of two (masked lanes)
]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton backend not runnable here")


def inputs(b, heads, kv_heads, hd, length, pos, dtype, device, padded=False, seed=0):
    """Random queries and caches (slots past the position hold garbage, as in a reused cache); with
    ``padded``, row r's first 2r slots are padding (``key_valid`` off)."""
    g = torch.Generator().manual_seed(seed + hd + length)
    q = torch.randn(b, heads, hd, generator=g).to(device, dtype)
    k = torch.randn(b, kv_heads, length, hd, generator=g).to(device, dtype)
    v = torch.randn(b, kv_heads, length, hd, generator=g).to(device, dtype)
    valid = None
    if padded:
        valid = torch.ones(b, length, dtype=torch.bool)
        for r in range(b):
            valid[r, : 2 * r] = False
        valid = valid.to(device)
    return q, k, v, torch.tensor([pos], device=device), valid


def oracle(q, k, v, pos, valid, scale):
    """Row by row, head by head, in float64: softmax over the real slots up to the position."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    b, h, hd = q.shape
    group = h // k.shape[1]
    p = int(pos)
    out = torch.empty(b, h, hd, dtype=torch.float64)
    for row in range(b):
        slots = [j for j in range(p + 1) if j == p or valid is None or bool(valid[row, j])]
        for head in range(h):
            keys, vals = k[row, head // group, slots], v[row, head // group, slots]
            out[row, head] = torch.softmax(keys @ q[row, head] * scale, dim=0) @ vals
    return out


@pytest.mark.parametrize(("b", "heads", "kv_heads", "hd", "length", "pos"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_matches_float64(backend, device, b, heads, kv_heads, hd, length, pos, dtype, tol, assert_close_f64):
    q, k, v, p, _ = inputs(b, heads, kv_heads, hd, length, pos, dtype, device)
    scale = 0.7 / math.sqrt(hd)
    out = decode_attention(q, k, v, p, scale=scale, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_f64(out, oracle(q, k, v, p, None, scale), tol, "output")


@pytest.mark.parametrize("pos", [4, 37])
def test_padding_slots_are_left_out(backend, device, pos, assert_close_f64):
    """Left-padded prompts: row 2's first 4 slots are padding; its own slot counts even if marked off."""
    q, k, v, p, valid = inputs(3, 4, 2, 32, 50, pos, torch.float32, device, padded=True, seed=3)
    valid[1, pos] = False  # the query's own slot is never padding
    out = decode_attention(q, k, v, p, valid, scale=0.3, backend=backend)
    assert_close_f64(out, oracle(q, k, v, p, valid, 0.3), 1e-5, "padded")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("n_splits", [1, 2, 5])
def test_split_slots_merge_exactly(device, n_splits, assert_close_f64):
    """Flash-decoding splits, some wholly past the position, give the one-pass result."""
    for pos in (3, 150):
        q, k, v, p, valid = inputs(2, 4, 2, 32, 200, pos, torch.float32, device, padded=True, seed=1)
        out = static_decode(q, k, v, p, valid, 0.2, n_splits=n_splits)
        assert_close_f64(out, oracle(q, k, v, p, valid, 0.2), 1e-5, f"{n_splits} splits, position {pos}")


def test_input_errors():
    q, k, v, p, _ = inputs(2, 4, 2, 16, 20, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="not a multiple"):
        decode_attention(q[:, :3], k, v, p)
    with pytest.raises(ValueError, match="must be \\(B, H, head_dim\\)"):
        decode_attention(q[:, :, None], k, v, p)
    with pytest.raises(ValueError, match="keys and values must both be"):
        decode_attention(q, k, v[:, :, :-1], p)
    with pytest.raises(ValueError, match="position must hold one int32/int64"):
        decode_attention(q, k, v, p.float())
    with pytest.raises(ValueError, match="key_valid must be a bool"):
        decode_attention(q, k, v, p, torch.ones(2, 19, dtype=torch.bool))


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_one_graph_under_compile_with_cuda_graphs(assert_close_f64):
    """The Triton op compiles with fullgraph=True and replays under CUDA graphs as the position moves."""
    q, k, v, p, valid = inputs(2, 12, 12, 64, 272, 20, torch.bfloat16, "cuda", padded=True)

    def step(q, k, v, p, valid):
        return decode_attention(q, k, v, p, valid, backend="triton") * 2.0

    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    for pos in (20, 21, 200):
        p.fill_(pos)
        out = compiled(q, k, v, p, valid).clone()
        assert_close_f64(out, 2.0 * oracle(q, k, v, p, valid, 1 / 8), 2e-2, f"position {pos}")


@pytest.mark.parametrize("scale_type", ["fp32", "fp64"])
@pytest.mark.parametrize("split", [False, True])
def test_kernel_compiles_for_hopper(scale_type, split):
    """Triton compiles the kernel for sm_90 without a GPU (ptxas ships with Triton), with the scale as
    Triton passes it (fp32) and as Inductor does inside a compiled decode step (fp64)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tinylm.kernels.decode_attention_triton import _static_decode_kernel as fn

    constexprs = {
        "GROUP": 1,
        "HAS_VALID": True,
        "ROTATE": False,
        "BLOCK_D": 64,
        "BLOCK_N": 64,
        "SPLIT": split,
    }
    types = {"O": "*bf16", "M": "*fp32", "L": "*fp32", "Q": "*bf16", "K": "*bf16", "V": "*bf16"}
    types.update(POS="*i64", VALID="*i1", scale=scale_type)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert "ld.global" in compiled.asm["ptx"]


def rope_oracle(q, k_new, v_new, cos, sin, keys, values, pos, valid, scale):
    """Float64: rotate q and k_new (half-split), place k/v at the position of a copy of the cache, attend."""
    f = lambda t: t.double().cpu()  # noqa: E731
    q, k_new, v_new, cos, sin = map(f, (q, k_new, v_new, cos, sin))

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]

    keys, values = f(keys).clone(), f(values).clone()
    keys[:, :, int(pos)] = rot(k_new)
    values[:, :, int(pos)] = v_new
    return oracle(rot(q), keys, values, pos, valid, scale), keys, values


def rope_inputs(b, heads, kv_heads, hd, length, pos, dtype, device, padded=False, seed=0):
    q, k, v, p, valid = inputs(b, heads, kv_heads, hd, length, pos, dtype, device, padded, seed)
    g = torch.Generator().manual_seed(seed + 7)
    k_new = torch.randn(b, kv_heads, hd, generator=g).to(device, dtype)
    v_new = torch.randn(b, kv_heads, hd, generator=g).to(device, dtype)
    angle = torch.rand(b, hd // 2, generator=g) * 6.0
    angle = torch.cat((angle, angle), dim=-1)  # the half-split layout repeats each frequency
    return q, k_new, v_new, angle.cos().to(device, dtype), angle.sin().to(device, dtype), k, v, p, valid


ROPE_CASES = [case for case in CASES if case[3] % 2 == 0]


@pytest.mark.parametrize(("b", "heads", "kv_heads", "hd", "length", "pos"), ROPE_CASES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_rope_decode_matches_float64_and_writes_the_cache(
    backend, device, b, heads, kv_heads, hd, length, pos, dtype, tol, assert_close_f64
):
    """RoPE of q and the new key, the key/value written at the position, attention over it: one op."""
    from tinylm.kernels.decode_attention import rope_decode_attention

    q, k_new, v_new, cos, sin, k, v, p, _ = rope_inputs(b, heads, kv_heads, hd, length, pos, dtype, device)
    expected, keys64, values64 = rope_oracle(q, k_new, v_new, cos, sin, k, v, p, None, 0.6)
    before_k = k.clone()
    out = rope_decode_attention(q, k_new, v_new, cos, sin, k, v, p, scale=0.6, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_f64(out, expected, tol, "output")
    assert_close_f64(k, keys64, tol, "keys")  # the new slot rotated; every other slot untouched
    assert_close_f64(v, values64, tol, "values")
    others = torch.arange(length, device=k.device) != pos
    assert torch.equal(k[:, :, others], before_k[:, :, others])


@pytest.mark.parametrize(("dtype", "tol"), DTYPES[:2])
def test_rope_decode_takes_views_of_a_fused_projection(backend, device, dtype, tol, assert_close_f64):
    """q, k and v sliced from one fused q/k/v output (batch stride past the head stride) and cos/sin one
    row broadcast over the batch (batch stride 0): read in place, same result."""
    from tinylm.kernels.decode_attention import rope_decode_attention

    b, heads, kv_heads, hd, length, pos = 3, 6, 2, 32, 90, 41
    q, k_new, v_new, cos, sin, k, v, p, valid = rope_inputs(b, heads, kv_heads, hd, length, pos, dtype,
                                                            device, padded=True, seed=4)  # fmt: skip
    cos, sin = cos[:1].expand(b, hd), sin[:1].expand(b, hd)
    fused = torch.cat([q.reshape(b, -1), k_new.reshape(b, -1), v_new.reshape(b, -1)], dim=1)
    qv, kv, vv = fused.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=1)
    qv, kv, vv = qv.view(b, heads, hd), kv.view(b, kv_heads, hd), vv.view(b, kv_heads, hd)
    assert not qv.is_contiguous() and cos.stride(0) == 0
    expected, keys64, _ = rope_oracle(q, k_new, v_new, cos, sin, k, v, p, valid, 0.3)
    out = rope_decode_attention(qv, kv, vv, cos, sin, k, v, p, valid, scale=0.3, backend=backend)
    assert_close_f64(out, expected, tol, "output")
    assert_close_f64(k, keys64, tol, "keys")


@pytest.mark.triton
@needs_triton
@pytest.mark.parametrize("n_splits", [1, 3, 7])
def test_rope_decode_splits_and_padding(device, n_splits, assert_close_f64):
    """The new token is counted once, in the split holding its slot (some splits lie past it), padded
    rows included; with GQA only one program per kv head stores it."""
    from tinylm.kernels.decode_attention_triton import static_decode

    for pos in (0, 5, 150):
        q, k_new, v_new, cos, sin, k, v, p, valid = rope_inputs(
            3, 6, 2, 32, 200, pos, torch.float32, device, padded=True, seed=2
        )
        expected, keys64, _ = rope_oracle(q, k_new, v_new, cos, sin, k, v, p, valid, 0.2)
        out = static_decode(q, k, v, p, valid, 0.2, n_splits=n_splits, rope=(k_new, v_new, cos, sin))
        what = f"{n_splits} splits, position {pos}"
        assert_close_f64(out, expected, 1e-5, what)
        assert_close_f64(k, keys64, 1e-5, what)


def test_rope_decode_input_errors():
    from tinylm.kernels.decode_attention import rope_decode_attention

    q, k_new, v_new, cos, sin, k, v, p, _ = rope_inputs(2, 4, 2, 16, 20, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="k_new and v_new must be"):
        rope_decode_attention(q, k_new[:, :1], v_new, cos, sin, k, v, p)
    with pytest.raises(ValueError, match="cos and sin must be"):
        rope_decode_attention(q, k_new, v_new, cos[:, :8], sin, k, v, p)
    q, k_new, v_new, cos, sin, k, v, p, _ = rope_inputs(2, 4, 2, 16, 20, 5, torch.float32, "cpu")
    q, k, v = q[..., :15], k[..., :15], v[..., :15]
    with pytest.raises(ValueError, match="even head_dim"):
        rope_decode_attention(q, k_new[..., :15], v_new[..., :15], cos[:, :15], sin[:, :15], k, v, p)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rope_op_in_one_compiled_graph_writes_the_cache(assert_close_f64):
    """Under torch.compile + CUDA graphs the fused op writes the cache in place, step after step."""
    from tinylm.kernels.decode_attention import rope_decode_attention

    q, k_new, v_new, cos, sin, k, v, p, valid = rope_inputs(2, 12, 4, 64, 272, 20, torch.bfloat16, "cuda",
                                                            padded=True)  # fmt: skip

    def step(q, k_new, v_new, cos, sin, k, v, p, valid):
        return rope_decode_attention(q, k_new, v_new, cos, sin, k, v, p, valid, backend="triton") * 2.0

    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    for pos in (20, 21, 200):
        p.fill_(pos)
        expected, keys64, _ = rope_oracle(q, k_new, v_new, cos, sin, k, v, p, valid, 1 / 8)
        out = compiled(q, k_new, v_new, cos, sin, k, v, p, valid).clone()
        assert_close_f64(out, 2.0 * expected, 2e-2, f"position {pos}")
        assert_close_f64(k, keys64, 2e-2, f"keys after position {pos}")


@pytest.mark.parametrize("group", [1, 3])
def test_rope_kernel_compiles_for_hopper(group):
    """The fused variant (ROTATE) compiles for sm_90 without a GPU, with the scale as Inductor passes it."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tinylm.kernels.decode_attention_triton import _static_decode_kernel as fn

    constexprs = {"GROUP": group, "HAS_VALID": True, "ROTATE": True, "BLOCK_D": 64, "BLOCK_N": 64,
                  "SPLIT": True}  # fmt: skip
    types = {n: "*bf16" for n in ("O", "Q", "K", "V", "KN", "VN", "COS", "SIN")}
    types.update(M="*fp32", L="*fp32", POS="*i64", VALID="*i1", scale="fp64")
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert "st.global" in compiled.asm["ptx"]
