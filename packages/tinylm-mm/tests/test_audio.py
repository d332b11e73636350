"""The log-mel front end against an independent float64 numpy reference; the Whisper conv encoder's shapes."""

import numpy as np
import pytest
import torch

from tinylm.mm.audio import AudioEncoderConfig, LogMel, MelConfig, WhisperEncoder, mel_filter_bank


def reference_filter_bank(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Slaney-normalized HTK-mel triangles, written bin by bin in plain Python/numpy (float64)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for k in range(n_fft // 2 + 1):
        f = k * sr / n_fft
        for m in range(n_mels):
            lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
            if lo < f <= c:
                fb[k, m] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[k, m] = (hi - f) / (hi - c)
            fb[k, m] *= 2.0 / (hi - lo)
    return fb


def reference_log_mel(x: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Framed numpy rfft with a periodic Hann window, mel projection, Whisper's log scaling (float64)."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    padded = np.pad(x, n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([padded[i * hop : i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, F)
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    mel = power @ reference_filter_bank(cfg.sample_rate, n_fft, cfg.n_mels, cfg.f_min, f_max)  # (T, M)
    log_mel = np.log10(np.maximum(mel, 1e-10)).T
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


CONFIGS = [
    MelConfig(sample_rate=8000, n_fft=512, hop_length=128, n_mels=48),
    MelConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80),  # Whisper's settings
    MelConfig(sample_rate=11025, n_fft=256, hop_length=97, n_mels=23, f_min=60.0, f_max=5000.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"sr{c.sample_rate}_fft{c.n_fft}_mels{c.n_mels}")
def test_filter_bank_matches_reference(cfg):
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    ref = reference_filter_bank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, f_max)
    np.testing.assert_allclose(mel_filter_bank(cfg).numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"sr{c.sample_rate}_fft{c.n_fft}_mels{c.n_mels}")
def test_log_mel_matches_float64_reference(cfg):
    rng = np.random.default_rng(0)
    n = 3 * cfg.sample_rate // 10 + 37  # an awkward length
    t = np.arange(n) / cfg.sample_rate
    x = 0.5 * np.sin(2 * np.pi * 437.0 * t) + 0.1 * rng.standard_normal(n)
    front = LogMel(cfg)
    ref = reference_log_mel(x, cfg)
    out64 = front(torch.tensor(x, dtype=torch.float64))[0].numpy()
    assert out64.shape == (cfg.n_mels, front.num_frames(n)) == ref.shape
    np.testing.assert_allclose(out64, ref, rtol=1e-9, atol=1e-9)
    out32 = front(torch.tensor(x, dtype=torch.float32))[0].double().numpy()
    np.testing.assert_allclose(out32, ref, atol=2e-4)


def test_log_mel_batches_rows_independently():
    cfg = CONFIGS[0]
    front = LogMel(cfg)
    waves = torch.randn(3, 2000, dtype=torch.float64)
    batched = front(waves)
    for i in range(3):
        torch.testing.assert_close(batched[i], front(waves[i])[0])


def test_log_mel_rejects_bad_input():
    front = LogMel(CONFIGS[0])
    with pytest.raises(ValueError, match="too short"):
        front(torch.randn(100))
    with pytest.raises(ValueError, match="batch, samples"):
        front(torch.randn(2, 2, 3000))
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(sample_rate=8000, f_max=9000.0)


def test_whisper_encoder_halves_the_frames():
    cfg = AudioEncoderConfig(out_dim=24, width=16, n_layers=1, n_heads=2, mel=dict(n_mels=20))
    enc = WhisperEncoder(cfg)
    wave = torch.randn(2, 4001)
    frames = enc.mel.num_frames(4001)  # 32
    out = enc(wave)
    assert out.shape == (2, (frames + 1) // 2, 24)
    out.sum().backward()
    assert enc.conv1.weight.grad is not None and enc.conv1.weight.grad.abs().sum() > 0


def test_whisper_encoder_rejects_too_long_audio():
    enc = WhisperEncoder(AudioEncoderConfig(out_dim=8, width=8, n_layers=0, max_frames=4))
    with pytest.raises(ValueError, match="max_frames"):
        enc(torch.randn(1, 4000))
