"""rms_norm against a float64 reference on awkward shapes, through the public dispatching function."""

import pytest
import torch

from tinylm.kernels import rms_norm, rms_norm_reference


def rms_norm_f64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 33), (4, 129), (2, 3, 4, 1000)])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]
)
def test_matches_float64(shape, dtype, tol):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3 + 0.5).to(dtype)
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype)
    y = rms_norm(x, w, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), rms_norm_f64(x, w, 1e-6), atol=tol, rtol=tol)


def test_gradients_match_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 37, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.rand(37, dtype=torch.float64, generator=g, requires_grad=True)
    dy = torch.randn(3, 5, 37, dtype=torch.float64, generator=g)
    gx, gw = torch.autograd.grad((rms_norm(x, w, 1e-5) * dy).sum(), (x, w))
    rx, rw = torch.autograd.grad((rms_norm_f64(x, w, 1e-5) * dy).sum(), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_no_weight_and_eps_matter():
    x = torch.randn(4, 16) * 1e-3
    torch.testing.assert_close(rms_norm(x, None, 1e-6), rms_norm_reference(x, torch.ones(16), 1e-6))
    assert not torch.allclose(rms_norm(x, None, 1e-6), rms_norm(x, None, 1e-2))


def test_weight_shape_error():
    with pytest.raises(ValueError, match=r"weight has shape \(8,\), expected \(16,\)"):
        rms_norm(torch.randn(2, 16), torch.ones(8))
