"""Tokenizers: text <-> token ids, saved as one JSON file, chosen by name from the ``TOKENIZERS`` registry.

Every tokenizer has the special tokens ``<pad>``, ``<bos>`` and ``<eos>`` and the same small interface
(``Tokenizer``). Four are registered (bytelevel here, char and whitespace in ``vocab_tokenizers``, bpe in
``bpe_tokenizer``):

- ``bytelevel``: UTF-8 bytes are ids 0-255, specials 256-258 (259 ids); no training; lossless on any text.
- ``char``: one id per character seen in the training texts; other characters encode to ``<unk>`` (and
  decode as the literal text ``<unk>``). Lossless on text within its alphabet.
- ``whitespace``: word level. Text splits into words (letters/digits, with inner apostrophes: ``didn't``),
  single punctuation marks and newlines; the ``vocab_size`` most frequent tokens are kept, others are
  ``<unk>``. Decoding joins tokens with spaces and re-attaches punctuation, so it is lossless on
  *normalized* text, ``WhitespaceTokenizer.normalize(text)``.
- ``bpe``: byte-level BPE trained with the Hugging Face ``tokenizers`` library (GPT-2 style ByteLevel
  pre-tokenizer and decoder); lossless on any text, including text that spells a special token.

``vocab_size`` always counts every id, specials included; char and whitespace treat it as a cap.
A saved ``tokenizer.json`` holds ``{"type": <registry name>, ...}`` and, for bpe, the library's own JSON
embedded, so ``load_tokenizer`` needs no network.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from tinylm.core.registry import TOKENIZERS, UnknownNameError

TOKENIZER_FILE = "tokenizer.json"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


class Tokenizer(ABC):
    """Common interface: ``encode``/``decode``, special ids, ``save``; subclasses add training and state."""

    name: ClassVar[str]  # the registry name, saved as "type"
    needs_training: ClassVar[bool] = True
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    @abstractmethod
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally framed by ``<bos>`` / ``<eos>``."""

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped, or written as ``<bos>`` etc. when not skipped."""

    @classmethod
    @abstractmethod
    def build(cls, texts: Iterable[str] | None = None, vocab_size: int | None = None, **kwargs: Any) -> Self:
        """A tokenizer trained on ``texts`` (or built without them when ``needs_training`` is False)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state that ``from_state_dict`` rebuilds the tokenizer from."""

    @classmethod
    @abstractmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Self:
        """The tokenizer saved as ``state``."""

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """``encode`` over many texts (subclasses may do it faster)."""
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.pad_id, self.bos_id, self.eos_id))

    def to_json(self) -> str:
        """The content of ``tokenizer.json``; equal tokenizers give equal strings (used as cache identity)."""
        return json.dumps({"type": self.name, **self.state_dict()}, sort_keys=True, ensure_ascii=False)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/tokenizer.json`` (atomically) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        tmp = path.with_name(f".{TOKENIZER_FILE}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def _frame(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token id {bad[0]} is out of range for a {self.name} vocab of {self.vocab_size}"
            )
        return ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def require_texts(name: str, texts: Iterable[str] | None) -> Iterable[str]:
    if texts is None:
        raise ValueError(f"tokenizer {name!r} is trained on texts: pass texts=... (an iterable of strings)")
    return texts


@TOKENIZERS.register("bytelevel")
class ByteLevelTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255, then ``<pad>``, ``<bos>``, ``<eos>`` (259 ids); needs no training."""

    name = "bytelevel"
    needs_training = False
    vocab_size, pad_id, bos_id, eos_id = 259, 256, 257, 258

    @classmethod
    def build(cls, texts: Iterable[str] | None = None, vocab_size: int | None = None, **kwargs: Any) -> Self:
        if vocab_size not in (None, cls.vocab_size):
            raise ValueError(f"bytelevel has a fixed vocab of {cls.vocab_size} ids; leave vocab_size unset")
        if kwargs:
            raise TypeError(f"bytelevel takes no options, got {sorted(kwargs)}")
        return cls()

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._frame(list(text.encode("utf-8")), add_bos, add_eos)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out, run = [], bytearray()  # bytes are decoded together: a character may span several ids
        for i in self._check_ids(ids):
            if i < 256:
                run.append(i)
                continue
            if not skip_special:
                out.append(run.decode("utf-8", errors="replace") + SPECIAL_TOKENS[i - 256])
                run = bytearray()
        return "".join(out) + run.decode("utf-8", errors="replace")

    def state_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Self:
        return cls()


def build_tokenizer(
    name: str, texts: Iterable[str] | None = None, vocab_size: int | None = None, **kwargs: Any
) -> Tokenizer:
    """The ``name`` tokenizer, trained on ``texts`` when it needs training (bpe, char, whitespace)."""
    return TOKENIZERS.get(name).build(texts, vocab_size, **kwargs)


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer saved in ``directory/tokenizer.json`` (or at that file's path)."""
    path = Path(directory)
    if path.is_dir() or not path.suffix:
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path} (save one with tokenizer.save(directory))")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid tokenizer file (bad JSON: {e})") from None
    if not isinstance(state, dict) or "type" not in state:
        raise ValueError(f"{path} is not a tokenizer file: it has no 'type' field")
    name = state.pop("type")
    try:
        cls = TOKENIZERS.get(name)
    except UnknownNameError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        return cls.from_state_dict(state)
    except Exception as e:  # whatever a corrupt state breaks inside a constructor or the library
        raise ValueError(f"{path} is a corrupt {name} tokenizer file ({type(e).__name__}: {e})") from e
