"""Audio to embeddings: a log-mel front end in plain torch and a Whisper-style conv downsampler.

``LogMel``: Hann-windowed ``torch.stft`` (centered, reflect padding) -> power spectrum -> triangular mel
filter bank (HTK mel scale, Slaney area normalization) -> ``log10`` with Whisper's 80 dB dynamic-range
clamp and ``(x + 4) / 4`` scaling. No torchaudio. ``WhisperEncoder``: two Conv1d + GELU (the second with
stride 2, halving the frame rate), sinusoidal positions, a few pre-norm transformer layers, then a linear
projection into the LM width. References: Radford et al., 2022, "Robust Speech Recognition via Large-Scale
Weak Supervision" (Whisper, arXiv 2212.04356), its ``audio.py`` / ``model.py``; Slaney's Auditory Toolbox.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class MelConfig:
    """Front-end settings. Defaults suit the 8 kHz synthetic clips; Whisper uses 16000/400/160/80."""

    sample_rate: int = 8000
    n_fft: int = 512
    hop_length: int = 128
    n_mels: int = 48
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"mel settings must be positive: {self}")
        top = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not 0 <= self.f_min < top <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate/2 = {self.sample_rate / 2}, got {self.f_min}, {top}"
            )


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filter_bank(cfg: MelConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Triangular filters ``(n_fft // 2 + 1, n_mels)`` on the rfft bins, each normalized to unit area."""
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    lo, hi = hz_to_mel(torch.tensor([cfg.f_min, f_max], dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(float(lo), float(hi), cfg.n_mels + 2, dtype=torch.float64))  # (M+2,)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    up = (freqs[:, None] - left) / (center - left)  # (F, M)
    down = (right - freqs[:, None]) / (right - center)
    filters = torch.clamp(torch.minimum(up, down), min=0.0)
    filters = filters * (2.0 / (right - left))  # Slaney: equal area per filter
    return filters.to(dtype)


class LogMel(nn.Module):
    """Waveform ``(B, samples)`` (or ``(samples,)``) -> log-mel spectrogram ``(B, n_mels, frames)``.

    ``frames = samples // hop_length + 1`` (centered STFT).
    """

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MelConfig()
        # float64 tables, cast to the input's dtype per call: float64 audio is then float64 end to end
        self.register_buffer("window", torch.hann_window(cfg.n_fft, dtype=torch.float64), persistent=False)
        self.register_buffer("filters", mel_filter_bank(cfg, torch.float64), persistent=False)

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """``|STFT|^2`` ``(B, n_fft // 2 + 1, frames)`` in the dtype of ``wave``."""
        cfg = self.config
        if wave.size(-1) <= cfg.n_fft // 2:
            raise ValueError(
                f"audio of {wave.size(-1)} samples is too short for n_fft={cfg.n_fft} "
                f"(need more than {cfg.n_fft // 2})"
            )
        spec = torch.stft(
            wave, cfg.n_fft, cfg.hop_length, window=self.window.to(wave.dtype), center=True,
            pad_mode="reflect", return_complex=True,
        )  # fmt: skip
        return spec.abs().pow(2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2:
            raise ValueError(f"audio must be (samples,) or (batch, samples), got shape {tuple(wave.shape)}")
        power = self.power_spectrogram(wave)  # (B, F, frames)
        mel = torch.einsum("bft,fm->bmt", power, self.filters.to(power.dtype))  # (B, n_mels, frames)
        log_mel = torch.clamp(mel, min=1e-10).log10()
        peak = log_mel.amax(dim=(1, 2), keepdim=True)
        log_mel = torch.maximum(log_mel, peak - 8.0)  # keep the top 80 dB of each clip
        return (log_mel + 4.0) / 4.0

    def num_frames(self, samples: int) -> int:
        return samples // self.config.hop_length + 1


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed sinusoidal position table ``(length, channels)``."""
    inv = torch.exp(-math.log(10000) / (channels // 2 - 1) * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


def transformer_layers(width: int, n_layers: int, n_heads: int) -> nn.TransformerEncoder | nn.Identity:
    """Pre-norm bidirectional transformer layers (GELU MLP of 4x width) for the media encoders."""
    if n_layers == 0:
        return nn.Identity()
    layer = nn.TransformerEncoderLayer(
        width, n_heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


@dataclass
class AudioEncoderConfig:
    """``WhisperEncoder`` settings: front end, conv width, transformer depth, output width (LM dim)."""

    out_dim: int = 64
    width: int = 64
    n_layers: int = 1
    n_heads: int = 4
    max_frames: int = 512  # after downsampling
    mel: MelConfig | dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mel, MelConfig):
            self.mel = MelConfig(**(self.mel or {}))

    def to_dict(self) -> dict:
        return asdict(self)


class WhisperEncoder(nn.Module):
    """Waveform ``(B, samples)`` -> embeddings ``(B, frames // 2 (rounded up), out_dim)``."""

    discrete = False

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.mel = LogMel(cfg.mel)
        self.conv1 = nn.Conv1d(cfg.mel.n_mels, cfg.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.width, cfg.width, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", sinusoids(cfg.max_frames, cfg.width), persistent=False)
        self.layers = transformer_layers(cfg.width, cfg.n_layers, cfg.n_heads)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.out_dim)

    def downsample(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(B, n_mels, T)`` -> ``(B, ceil(T / 2), width)`` with positions added."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(log_mel))))  # (B, width, T')
        x = x.transpose(1, 2)  # (B, T', width)
        if x.size(1) > self.config.max_frames:
            raise ValueError(
                f"audio gives {x.size(1)} frames after downsampling, more than max_frames="
                f"{self.config.max_frames}; use shorter clips or raise max_frames"
            )
        return x + self.positions[: x.size(1)].to(x.dtype)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.downsample(self.mel(wave)))
        return self.proj(self.norm(x))  # (B, N, out_dim)
