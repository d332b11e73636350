"""Byte-level BPE (GPT-2 style) trained with the Hugging Face ``tokenizers`` library, saved as its JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Self

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinylm.core.data.tokenizers import SPECIAL_TOKENS, Tokenizer, require_texts
from tinylm.core.registry import TOKENIZERS


@TOKENIZERS.register("bpe")
class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with Hugging Face ``tokenizers`` (specials are ids 0-2, then 256 bytes, merges).

    Text that spells a special token (``"<eos>"``) is encoded as ordinary text, so any text round-trips.
    ``build`` options: ``min_frequency`` (of a merge, default 2).
    """

    name = "bpe"

    def __init__(self, hf_tokenizer: HFTokenizer) -> None:
        self._tok = hf_tokenizer
        self._tok.encode_special_tokens = True  # not saved by the library, so set on every construction
        ids = [self._tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if None in ids:
            raise ValueError(f"a bpe tokenizer must have the special tokens {SPECIAL_TOKENS}")
        self.pad_id, self.bos_id, self.eos_id = ids
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def build(cls, texts: Iterable[str] | None = None, vocab_size: int | None = None, **kwargs: Any) -> Self:
        texts = require_texts(cls.name, texts)
        minimum = 256 + len(SPECIAL_TOKENS)
        if vocab_size is None or vocab_size < minimum:
            raise ValueError(f"bpe needs vocab_size >= {minimum} (256 bytes + 3 specials), got {vocab_size}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=kwargs.pop("min_frequency", 2),
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so nothing is unknown
            show_progress=False,
        )
        if kwargs:
            raise TypeError(f"bpe options are min_frequency; got {sorted(kwargs)}")
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._frame(self._tok.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets: about twice as fast
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encodings = encode(list(texts), add_special_tokens=False)
        return [self._frame(e.ids, add_bos, add_eos) for e in encodings]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = self._check_ids(ids)
        if skip_special:
            return self._tok.decode(ids, skip_special_tokens=True)
        # The library decodes specials inline but would merge their bytes with neighbours': decode in runs.
        out, run = [], []
        for i in ids:
            if i in self.special_ids:
                out += [self._tok.decode(run), self._tok.id_to_token(i)]
                run = []
            else:
                run.append(i)
        return "".join(out) + self._tok.decode(run)

    def state_dict(self) -> dict[str, Any]:
        return {"hf_tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Self:
        return cls(HFTokenizer.from_str(json.dumps(state["hf_tokenizer"])))
