"""The ViT patch encoder and the VQ-VAE tokenizers: shapes, quantization, gradients, reconstruction."""

import pytest
import torch

from tinylm.mm import PatchEncoder, PatchEncoderConfig, VectorQuantizer, VQAutoencoder, VQConfig
from tinylm.mm.data import digits
from tinylm.mm.encoders import VQImageTokenizer


def test_patch_encoder_shapes_and_patch_order():
    cfg = PatchEncoderConfig(image_size=12, channels=3, patch_size=4, width=16, n_layers=0, out_dim=8)
    enc = PatchEncoder(cfg)
    images = torch.rand(2, 3, 12, 12)
    out = enc(images)
    assert out.shape == (2, 9, 8) and cfg.num_patches == 9
    # with no transformer layers, patch 5 (row 1, col 2) depends only on pixels [4:8, 8:12]
    changed = images.clone()
    changed[:, :, 4:8, 8:12] += 1.0
    diff = (enc(changed) - out).abs().sum(-1)
    assert (diff[:, 5] > 0).all() and torch.allclose(diff[:, [0, 1, 2, 3, 4, 6, 7, 8]], torch.zeros(2, 8))


def test_patch_encoder_rejects_bad_geometry():
    with pytest.raises(ValueError, match="not divisible"):
        PatchEncoderConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="images must be"):
        PatchEncoder(PatchEncoderConfig())(torch.rand(2, 1, 9, 9))


def test_quantizer_picks_nearest_code_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=7, code_dim=5).eval()
    z = torch.randn(3, 4, 5, requires_grad=True)
    out = vq(z)
    brute = torch.cdist(z.detach().reshape(-1, 5).double(), vq.codebook.detach().double()).argmin(1)
    assert torch.equal(out.codes.flatten(), brute)
    torch.testing.assert_close(out.vectors, vq.codebook[out.codes])
    out.vectors.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through estimator


def test_quantizer_initializes_from_data_and_frozen_codebooks_stay_put():
    vq = VectorQuantizer(codebook_size=4, code_dim=2)
    z = torch.randn(1, 50, 2) + 10.0
    vq.train()(z)
    assert bool(vq.initialized) and (vq.codebook.detach().mean() > 5)  # seeded from the encoder outputs
    vq.requires_grad_(False)
    before = vq.codebook.clone()
    vq(torch.randn(1, 50, 2) - 10.0)
    assert torch.equal(before, vq.codebook)


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 8, 12)), (1, (2, 5, 20))])
def test_vq_autoencoder_round_trip_shapes(dims, shape):
    vq = VQAutoencoder(VQConfig(dims=dims, in_channels=shape[1], hidden=8, code_dim=4, downsample=2))
    x = torch.randn(shape)
    recon, quantized = vq(x)
    assert recon.shape == x.shape
    grid = tuple(s // 4 for s in shape[2:])
    assert quantized.codes.shape == (2, torch.Size(grid).numel())
    assert vq.decode(vq.encode(x), grid).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        vq(torch.randn(*shape[:-1], shape[-1] + 1))


def test_vq_image_tokenizer_learns_to_reconstruct_digits():
    torch.manual_seed(0)
    train, test = digits(test_fraction=0.2, seed=0)
    tok = VQImageTokenizer(hidden=32, code_dim=16, codebook_size=32, downsample=1)
    report = tok.fit(train.media[:400], test.media[:200], steps=300)  # 100 left it at the bar (0.50x)
    assert report["mse"] < 0.5 * report["mean_baseline_mse"]  # well below predicting the mean digit
    assert report["codes_used"] > 8
    codes = tok(test.media[:5])
    assert codes.shape == (5, 16) and codes.max() < 32
    assert not any(p.requires_grad for p in tok.parameters())  # frozen after fitting
