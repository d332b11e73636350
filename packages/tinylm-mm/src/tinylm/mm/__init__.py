"""tinylm.mm: images and audio to tokens, a multimodal TinyLM, and tiny captioning data sets.

    from tinylm.mm import MM_DATASETS, CaptionTrainConfig, build_captioner, train_captioner
    train, test = MM_DATASETS.build("mm_digits")
    model, tokenizer = build_captioner(train, lm={"dim": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64},
                                       encoders={"image": {"name": "patch", "patch_size": 2}})
    summary = train_captioner(model, tokenizer, train, test, CaptionTrainConfig(steps=600))
    summary["test"]["accuracy"]

Encoders (``MEDIA_ENCODERS``): ``patch`` (ViT), ``vq_image`` (VQ-VAE codes), ``whisper_conv`` (log-mel +
conv downsampler), ``vq_audio`` (log-mel VQ-VAE codes). Data (``MM_DATASETS``): ``mm_digits``, ``mm_audio``,
``imagefolder``, ``audiofolder``.
"""

from tinylm.mm.audio import AudioEncoderConfig, LogMel, MelConfig, WhisperEncoder, mel_filter_bank
from tinylm.mm.captioning import caption_file, run_captioner, write_examples
from tinylm.mm.data import MM_DATASETS, CaptionData, batches, collate, load_media, write_png, write_wav
from tinylm.mm.encoders import MEDIA_ENCODERS, VQAudioTokenizer, VQImageTokenizer
from tinylm.mm.model import (
    CaptionBatch,
    MultimodalConfig,
    MultimodalLM,
    is_captioner,
    load_captioner,
    save_captioner,
)
from tinylm.mm.training import (
    CaptionTrainConfig,
    baselines,
    build_captioner,
    caption_accuracy,
    train_captioner,
)
from tinylm.mm.vision import PatchEncoder, PatchEncoderConfig
from tinylm.mm.vq import VectorQuantizer, VQAutoencoder, VQConfig

__all__ = [
    "MEDIA_ENCODERS",
    "MM_DATASETS",
    "AudioEncoderConfig",
    "CaptionBatch",
    "CaptionData",
    "CaptionTrainConfig",
    "LogMel",
    "MelConfig",
    "MultimodalConfig",
    "MultimodalLM",
    "PatchEncoder",
    "PatchEncoderConfig",
    "VQAudioTokenizer",
    "VQAutoencoder",
    "VQConfig",
    "VQImageTokenizer",
    "VectorQuantizer",
    "WhisperEncoder",
    "baselines",
    "batches",
    "build_captioner",
    "caption_accuracy",
    "caption_file",
    "collate",
    "is_captioner",
    "load_captioner",
    "load_media",
    "mel_filter_bank",
    "run_captioner",
    "save_captioner",
    "train_captioner",
    "write_examples",
    "write_png",
    "write_wav",
]
