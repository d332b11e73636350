"""Discrete media tokens: a vector quantizer and small VQ-VAEs for images (2-D) and log-mel audio (1-D).

``VectorQuantizer`` maps each encoder vector to its nearest codebook entry (straight-through gradient,
codebook + beta * commitment loss; the codebook is initialized from the first training batch's encoder
outputs, and codes unused in a batch are re-seeded from random encoder outputs, so few codes die).
``VQAutoencoder`` is conv encoder -> quantizer -> conv decoder; ``dims=2`` for images ``(B, C, H, W)``,
``dims=1`` for log-mel ``(B, n_mels, T)`` (mel bins as channels). Its ``encode`` gives code ids
``(B, N)`` that the multimodal LM adds to its vocabulary. Reference: van den Oord et al., 2017,
"Neural Discrete Representation Learning" (arXiv 1711.00937).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


class Quantized(NamedTuple):
    """Straight-through quantized vectors, their code ids and the VQ loss."""

    vectors: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization of ``(..., code_dim)`` vectors onto ``codebook_size`` codes."""

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(codebook_size, code_dim) * 0.1)
        self.beta = beta
        self.register_buffer("initialized", torch.tensor(False))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Code ids ``(...)`` of the nearest codebook entries to ``z`` ``(..., code_dim)``."""
        flat = z.reshape(-1, z.size(-1))  # (M, D)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)
        return dist.argmin(1).view(z.shape[:-1])

    @torch.no_grad()
    def _reseed(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        k = self.codebook.size(0)
        pick = torch.randint(0, flat.size(0), (k,), device=flat.device)
        if not bool(self.initialized):
            self.codebook.copy_(flat[pick])
            self.initialized.fill_(True)
            return
        unused = torch.bincount(codes.flatten(), minlength=k) == 0
        self.codebook[unused] = flat[pick][unused]

    def forward(self, z: torch.Tensor) -> Quantized:
        if self.training and self.codebook.requires_grad:  # a frozen tokenizer never changes its codes
            self._reseed(z.detach().reshape(-1, z.size(-1)), self.nearest(z.detach()))
        codes = self.nearest(z)
        q = self.lookup(codes)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        return Quantized(z + (q - z).detach(), codes, loss)


@dataclass
class VQConfig:
    """``VQAutoencoder`` settings: 2-D (images) or 1-D (log-mel), channels, widths, codebook, downsampling."""

    dims: int = 2
    in_channels: int = 1
    hidden: int = 64
    code_dim: int = 32
    codebook_size: int = 64
    downsample: int = 1  # number of stride-2 stages: 2**downsample pixels/frames per code along each axis
    beta: float = 0.25

    def __post_init__(self) -> None:
        if self.dims not in (1, 2):
            raise ValueError(f"vq.dims must be 1 (audio frames) or 2 (images), got {self.dims}")
        if self.downsample < 0 or self.codebook_size < 2:
            raise ValueError(f"need downsample >= 0 and codebook_size >= 2, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class VQAutoencoder(nn.Module):
    """Conv encoder -> ``VectorQuantizer`` -> conv decoder; ``encode`` -> ``(B, N)`` codes."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = cfg = config
        conv = nn.Conv2d if cfg.dims == 2 else nn.Conv1d
        deconv = nn.ConvTranspose2d if cfg.dims == 2 else nn.ConvTranspose1d
        enc: list[nn.Module] = [conv(cfg.in_channels, cfg.hidden, 3, padding=1), nn.GELU()]
        for _ in range(cfg.downsample):
            enc += [conv(cfg.hidden, cfg.hidden, 4, stride=2, padding=1), nn.GELU()]
        enc += [conv(cfg.hidden, cfg.hidden, 3, padding=1), nn.GELU(), conv(cfg.hidden, cfg.code_dim, 1)]
        dec: list[nn.Module] = [conv(cfg.code_dim, cfg.hidden, 3, padding=1), nn.GELU()]
        for _ in range(cfg.downsample):
            dec += [deconv(cfg.hidden, cfg.hidden, 4, stride=2, padding=1), nn.GELU()]
        dec += [conv(cfg.hidden, cfg.in_channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.beta)

    def _check(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != cfg.dims + 2 or x.size(1) != cfg.in_channels:
            layout = "(B, C, H, W)" if cfg.dims == 2 else "(B, C, T)"
            raise ValueError(f"expected {layout} with C={cfg.in_channels}, got shape {tuple(x.shape)}")
        step = 2**cfg.downsample
        if any(s % step for s in x.shape[2:]):
            raise ValueError(f"spatial/time sizes {tuple(x.shape[2:])} must be multiples of {step}")

    def _quantize(self, x: torch.Tensor) -> tuple[Quantized, tuple[int, ...]]:
        self._check(x)
        z = self.encoder(x)  # (B, D, *grid)
        grid = tuple(z.shape[2:])
        z = z.flatten(2).transpose(1, 2)  # (B, N, D)
        return self.quantizer(z), grid

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code ids ``(B, N)``, row-major over the code grid."""
        return self._quantize(x)[0].codes

    def decode(self, codes: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Reconstruction from code ids ``(B, N)`` laid out on ``grid`` (``(h, w)`` or ``(t,)``)."""
        q = self.quantizer.lookup(codes).transpose(1, 2)  # (B, D, N)
        return self.decoder(q.reshape(*q.shape[:2], *grid))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """``(reconstruction, Quantized)``; train on ``mse(reconstruction, x) + quantized.loss``."""
        quantized, grid = self._quantize(x)
        q = quantized.vectors.transpose(1, 2)
        return self.decoder(q.reshape(*q.shape[:2], *grid)), quantized


def train_vq(
    model: VQAutoencoder,
    data: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Fit ``model`` to ``data`` ``(N, C, ...)`` with Adam; returns the reconstruction MSE per step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        batch = data[torch.randint(0, data.size(0), (batch_size,), generator=gen)]
        recon, quantized = model(batch)
        mse = F.mse_loss(recon, batch)
        opt.zero_grad(set_to_none=True)
        (mse + quantized.loss).backward()
        opt.step()
        history.append(mse.item())
    model.eval()
    return history


@torch.no_grad()
def reconstruction_report(model: VQAutoencoder, data: torch.Tensor, mean_of: torch.Tensor) -> dict:
    """Reconstruction MSE on ``data`` vs the baseline of predicting ``mean_of``'s mean, and codes used."""
    model.eval()
    recon, quantized = model(data)
    baseline = float(F.mse_loss(mean_of.mean(0, keepdim=True).expand_as(data), data))
    used = int(torch.unique(quantized.codes).numel())
    return {
        "mse": float(F.mse_loss(recon, data)),
        "mean_baseline_mse": baseline,
        "codes_used": used,
        "codebook_size": model.config.codebook_size,
    }
