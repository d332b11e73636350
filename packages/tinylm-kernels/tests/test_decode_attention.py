"""decode_attention over a static (B, Hkv, L, hd) cache: every backend against a float64 oracle."""

import math

import pytest
import torch

from tinylm.kernels.decode_attention import decode_attention

CUDA = torch.cuda.is_available()
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)]  # float64: the reference
# (heads, kv heads, head_dim, cache length, row lengths): a full row, one-token rows, GQA, MQA, odd dims
CASES = [
    (4, 4, 16, 24, [1, 9, 24]),
    (6, 2, 64, 80, [17, 80, 5, 33]),
    (8, 1, 32, 300, [299, 1]),
    (3, 1, 48, 37, [31, 2, 16]),  # a head_dim that is not a power of two (masked lanes)
]


def inputs(heads, kv_heads, hd, length, lengths, dtype, device, seed=0):
    """Random queries and a random cache, the unwritten tail included (the kernel must not read it)."""
    g = torch.Generator().manual_seed(seed + hd + length)
    b = len(lengths)
    q = torch.randn(b, heads, hd, generator=g).to(device, dtype)
    k = torch.randn(b, kv_heads, length, hd, generator=g).to(device, dtype)
    v = torch.randn(b, kv_heads, length, hd, generator=g).to(device, dtype)
    return q, k, v, torch.tensor(lengths, dtype=torch.int32, device=device)


def oracle(q, k, v, lengths, scale):
    """Row by row, head by head, in float64."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    b, h, hd = q.shape
    group = h // k.shape[1]
    out = torch.empty(b, h, hd, dtype=torch.float64)
    for row in range(b):
        n = int(lengths[row])
        for head in range(h):
            keys, vals = k[row, head // group, :n], v[row, head // group, :n]
            out[row, head] = torch.softmax(keys @ q[row, head] * scale, dim=0) @ vals
    return out


@pytest.mark.parametrize(("heads", "kv_heads", "hd", "length", "lengths"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
def test_matches_float64(backend, device, heads, kv_heads, hd, length, lengths, dtype, tol, assert_close_f64):
    q, k, v, lens = inputs(heads, kv_heads, hd, length, lengths, dtype, device)
    scale = 0.7 / math.sqrt(hd)
    out = decode_attention(q, k, v, lens, scale, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_f64(out, oracle(q, k, v, lens, scale), tol, "output")


@pytest.mark.triton
def test_default_scale_and_int64_lengths(backend, device, assert_close_f64):
    q, k, v, lens = inputs(4, 2, 16, 40, [20, 33], torch.float32, device)
    out = decode_attention(q, k, v, lens.long(), backend=backend)
    assert_close_f64(out, oracle(q, k, v, lens, 0.25), 1e-5, "int64 lengths")


def test_input_errors():
    q, k, v, lens = inputs(4, 2, 16, 12, [5, 9], torch.float32, "cpu")
    with pytest.raises(ValueError, match="not a multiple"):
        decode_attention(q[:, :3], k, v, lens)
    with pytest.raises(ValueError, match="must be \\(B, H, head_dim\\)"):
        decode_attention(q[:, :, None], k, v, lens)
    with pytest.raises(ValueError, match="keys and values must both be"):
        decode_attention(q, k, v[:, :, :5], lens)
    with pytest.raises(ValueError, match="the cache"):
        decode_attention(q[:1], k, v, lens)
    with pytest.raises(ValueError, match="lengths must be"):
        decode_attention(q, k, v, lens.float())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_serving_shapes_on_gpu(assert_close_f64):
    lengths = [int(x) for x in torch.randint(1, 700, (16,), generator=torch.Generator().manual_seed(0))]
    for heads, kv_heads, hd in ((6, 6, 64), (12, 4, 128), (12, 12, 64)):
        q, k, v, lens = inputs(heads, kv_heads, hd, 700, lengths, torch.bfloat16, "cuda")
        out = decode_attention(q, k, v, lens, backend="triton")
        assert_close_f64(out, oracle(q, k, v, lens, 1 / math.sqrt(hd)), 2e-2, f"{heads}/{kv_heads}, hd {hd}")


def test_triton_kernels_under_interpreter(run_triton_tests_under_interpreter):
    run_triton_tests_under_interpreter(__file__)
