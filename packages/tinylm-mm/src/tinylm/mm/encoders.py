"""The media-encoder registry: a config string picks how an image or audio clip becomes LM input.

Continuous encoders return embeddings ``(B, N, out_dim)`` spliced into the LM's input; discrete ones
(``discrete = True``) return code ids ``(B, N)`` that the LM embeds as extra vocabulary entries. Each
factory takes ``out_dim`` (the LM width) plus its own options and returns a module with ``modality``.

    patch         image -> ViT patch embeddings (tinylm.mm.vision)
    vq_image      image -> VQ-VAE codes (tinylm.mm.vq, 2-D)
    whisper_conv  audio -> log-mel -> Whisper conv downsampler embeddings (tinylm.mm.audio)
    vq_audio      audio -> log-mel -> VQ-VAE codes over frames (tinylm.mm.vq, 1-D)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tinylm.core.registry import Registry
from tinylm.mm.audio import AudioEncoderConfig, LogMel, MelConfig, WhisperEncoder
from tinylm.mm.vision import PatchEncoder, PatchEncoderConfig
from tinylm.mm.vq import VQAutoencoder, VQConfig, reconstruction_report, train_vq

MEDIA_ENCODERS: Registry = Registry("media encoder")


@MEDIA_ENCODERS.register("patch")
def patch_encoder(out_dim: int, **options: Any) -> PatchEncoder:
    encoder = PatchEncoder(PatchEncoderConfig(out_dim=out_dim, **options))
    encoder.modality = "image"
    return encoder


@MEDIA_ENCODERS.register("whisper_conv")
def whisper_conv_encoder(out_dim: int, **options: Any) -> WhisperEncoder:
    encoder = WhisperEncoder(AudioEncoderConfig(out_dim=out_dim, **options))
    encoder.modality = "audio"
    return encoder


class VQImageTokenizer(nn.Module):
    """Images ``(B, C, H, W)`` -> VQ-VAE code ids ``(B, N)``; ``fit`` trains the VQ-VAE (then frozen)."""

    discrete, modality = True, "image"

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.vq = VQAutoencoder(VQConfig(dims=2, **options))
        self.num_codes = self.vq.config.codebook_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(self.features(images))

    def fit(self, media: torch.Tensor, held_out: torch.Tensor, steps: int, seed: int = 0) -> dict:
        """Train the VQ-VAE on ``media``; report reconstruction error on ``held_out`` (then eval mode)."""
        with torch.no_grad():
            train, test = self.features(media), self.features(held_out)
        history = train_vq(self.vq, train, steps, seed=seed)
        self.requires_grad_(False)
        return {**reconstruction_report(self.vq, test, mean_of=train), "train_mse_last": history[-1]}


class VQAudioTokenizer(VQImageTokenizer):
    """Audio ``(B, samples)`` -> log-mel ``(B, n_mels, T)`` -> VQ-VAE code ids over frames ``(B, N)``."""

    modality = "audio"

    def __init__(self, mel: dict | None = None, **options: Any) -> None:
        nn.Module.__init__(self)
        self.mel = LogMel(MelConfig(**(mel or {})))
        n_mels = self.mel.config.n_mels
        self.vq = VQAutoencoder(VQConfig(dims=1, in_channels=n_mels, **options))
        self.num_codes = self.vq.config.codebook_size

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        log_mel = self.mel(wave)  # (B, n_mels, T)
        step = 2**self.vq.config.downsample
        return log_mel[..., : log_mel.size(-1) // step * step]  # whole code steps only


@MEDIA_ENCODERS.register("vq_image")
def vq_image_tokenizer(out_dim: int, **options: Any) -> VQImageTokenizer:
    return VQImageTokenizer(**options)  # codes are embedded by the LM, so out_dim is not needed


@MEDIA_ENCODERS.register("vq_audio")
def vq_audio_tokenizer(out_dim: int, **options: Any) -> VQAudioTokenizer:
    return VQAudioTokenizer(**options)
