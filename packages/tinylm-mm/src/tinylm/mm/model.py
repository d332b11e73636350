"""A multimodal TinyLM: media embeddings spliced between special tokens, loss on text only, captioning.

Sequence layout (one clip per example, LLaVA-style):

    <bos> <image> m_1 ... m_N </image> c_1 ... c_L <eos>

``m_i`` are the encoder's outputs: continuous embeddings (patch / Whisper conv encoders) or discrete codes
embedded by the LM's own table (VQ tokenizers; codes get ids after the text and special tokens). The LM is
an ordinary ``TinyLM`` fed through its ``inputs_embeds`` argument. Labels are -100 everywhere except the
text targets ``c_1 ... c_L <eos>``, so the model never learns to predict media. ``generate`` prefills the
prefix once into a key/value cache and samples text tokens only (media and special ids are masked out).

Vocabulary layout: ``[0, text_vocab)`` text, then ``<image> </image> <audio> </audio>``, then the codes of
each discrete encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from tinylm.core import ModelConfig, TinyLM
from tinylm.core.cache import StandardCache
from tinylm.core.data import load_tokenizer
from tinylm.core.generate import sample_next
from tinylm.core.model.transformer import IGNORE_INDEX, LMOutput
from tinylm.mm.encoders import MEDIA_ENCODERS

MODALITIES = ("image", "audio")
MM_CONFIG_NAME, MM_WEIGHTS_NAME = "mm_config.json", "model.safetensors"


class CaptionBatch(NamedTuple):
    """``media`` ``(B, ...)`` of one ``modality``; ``text`` ``(B, L)`` caption ids + EOS, right-padded."""

    modality: str
    media: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor  # (B, L) 1 = real token, 0 = padding

    def to(self, device: torch.device | str) -> CaptionBatch:
        return CaptionBatch(
            self.modality, self.media.to(device), self.text.to(device), self.text_mask.to(device)
        )


@dataclass
class MultimodalConfig:
    """The LM (``ModelConfig`` fields but ``vocab_size``), the text vocab, and one encoder per modality.

    ``encoders`` maps a modality to ``{"name": <MEDIA_ENCODERS name>, **options}``; ``preprocess`` records
    how raw files become encoder input (image size, sample rate, ...) so inference reads files the same way.
    """

    lm: dict[str, Any]
    text_vocab_size: int
    encoders: dict[str, dict[str, Any]]
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    preprocess: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.encoders) - set(MODALITIES))
        if unknown or not self.encoders:
            raise ValueError(
                f"encoders must map some of {MODALITIES} to an encoder, got {sorted(self.encoders)}"
            )
        if "vocab_size" in self.lm:
            raise ValueError("lm.vocab_size is derived (text vocab + special tokens + codes); leave it out")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MultimodalLM(nn.Module):
    """``TinyLM`` + media encoders. ``forward(CaptionBatch)`` -> ``LMOutput`` with a text-only loss."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim = ModelConfig(**cfg.lm).dim
        self.encoders = nn.ModuleDict()
        for modality, spec in sorted(cfg.encoders.items()):
            spec = dict(spec)
            encoder = MEDIA_ENCODERS.build(spec.pop("name"), dim, **spec)
            if encoder.modality != modality:
                raise ValueError(f"encoder for {modality!r} handles {encoder.modality!r} input")
            self.encoders[modality] = encoder
        v = cfg.text_vocab_size
        self.special = {m: (v + 2 * i, v + 2 * i + 1) for i, m in enumerate(MODALITIES)}  # (open, close)
        self.code_offset, next_id = {}, v + 2 * len(MODALITIES)
        for modality, encoder in self.encoders.items():
            if encoder.discrete:
                self.code_offset[modality], next_id = next_id, next_id + encoder.num_codes
        self.lm = TinyLM(ModelConfig(vocab_size=next_id, **cfg.lm))

    @property
    def dim(self) -> int:
        return self.lm.config.dim

    def encoder(self, modality: str) -> nn.Module:
        if modality not in self.encoders:
            raise ValueError(f"this model reads {sorted(self.encoders)}, not {modality!r}")
        return self.encoders[modality]

    def media_embeddings(self, modality: str, media: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim)``: encoder outputs, or the LM's embeddings of the encoder's codes."""
        encoder = self.encoder(modality)
        if encoder.discrete:
            with torch.no_grad():  # the VQ tokenizer is trained beforehand (encoder.fit) and frozen
                codes = encoder(media)
            return self.lm.tok_emb(codes + self.code_offset[modality])
        return encoder(media)

    def prefix_embeddings(self, modality: str, media: torch.Tensor) -> torch.Tensor:
        """``<bos> <open> media </close>`` as ``(B, N + 3, dim)``."""
        m = self.media_embeddings(modality, media)
        open_id, close_id = self.special[modality]
        ids = torch.tensor([self.config.bos_id, open_id, close_id], device=m.device)
        emb = self.lm.tok_emb(ids).to(m.dtype).expand(m.size(0), -1, -1)  # (B, 3, dim)
        return torch.cat([emb[:, :2], m, emb[:, 2:]], dim=1)

    def inputs_and_labels(self, batch: CaptionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings ``(B, P + L - 1, dim)`` and labels: -100 but on the caption + EOS targets."""
        prefix = self.prefix_embeddings(batch.modality, batch.media)  # (B, P, dim)
        text_in = self.lm.tok_emb(batch.text[:, :-1])  # the last text token is only a target
        embeds = torch.cat([prefix, text_in.to(prefix.dtype)], dim=1)
        targets = batch.text.masked_fill(batch.text_mask == 0, IGNORE_INDEX)
        ignore = targets.new_full((targets.size(0), prefix.size(1) - 1), IGNORE_INDEX)
        return embeds, torch.cat([ignore, targets], dim=1)

    def forward(self, batch: CaptionBatch, loss_reduction: str = "mean") -> LMOutput:
        embeds, labels = self.inputs_and_labels(batch)
        return self.lm(None, labels=labels, inputs_embeds=embeds, loss_reduction=loss_reduction)

    @torch.no_grad()
    def generate(
        self,
        modality: str,
        media: torch.Tensor,
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Caption ids per example (text ids only, EOS removed), conditioned on ``media``."""
        was_training = self.training
        self.eval()
        try:
            cache = StandardCache()
            x = self.prefix_embeddings(modality, media)
            limit = self.lm.config.max_seq_len
            max_new_tokens = min(max_new_tokens, limit - x.size(1))
            if max_new_tokens <= 0:
                raise ValueError(f"the media prefix ({x.size(1)} positions) fills the context ({limit})")
            out = [[] for _ in range(x.size(0))]
            done = torch.zeros(x.size(0), dtype=torch.bool, device=x.device)
            logits = self.lm(None, inputs_embeds=x, cache=cache).logits[:, -1]
            for _ in range(max_new_tokens):
                logits[:, self.config.text_vocab_size :] = float("-inf")  # text tokens only
                nxt = sample_next(logits, temperature, top_k, generator=generator)
                done |= nxt == self.config.eos_id
                for i in (~done).nonzero().flatten().tolist():
                    out[i].append(int(nxt[i]))
                if bool(done.all()):
                    break
                logits = self.lm(nxt[:, None], cache=cache).logits[:, -1]
            return out
        finally:
            self.train(was_training)


def save_captioner(model: MultimodalLM, tokenizer: Any, directory: str | Path) -> Path:
    """Write ``model.safetensors``, ``mm_config.json`` and ``tokenizer.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / MM_WEIGHTS_NAME))
    (directory / MM_CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
    tokenizer.save(directory)
    return directory


def is_captioner(directory: str | Path) -> bool:
    return (Path(directory) / MM_CONFIG_NAME).is_file()


def load_captioner(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MultimodalLM, Any]:
    """``(model, tokenizer)`` from a directory written by ``save_captioner`` (safetensors, no pickle)."""
    directory = Path(directory)
    if not is_captioner(directory):
        raise FileNotFoundError(f"{directory}: no {MM_CONFIG_NAME}; not a tinylm-mm captioner checkpoint")
    model = MultimodalLM(MultimodalConfig(**json.loads((directory / MM_CONFIG_NAME).read_text())))
    missing, unexpected = load_model(model, str(directory / MM_WEIGHTS_NAME), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory}: weights do not match the config (missing {missing}, extra {unexpected})"
        )
    return model.to(device).eval(), load_tokenizer(directory)
