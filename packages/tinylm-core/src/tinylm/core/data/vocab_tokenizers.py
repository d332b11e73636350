"""Tokenizers over a list of string tokens: ``char`` (characters) and ``whitespace`` (words and punctuation).

Both learn their vocabulary by counting tokens in training texts and keep the most frequent
``vocab_size - 4`` (after ``<pad> <bos> <eos> <unk>``); anything else encodes to ``<unk>``, which decodes
as the literal text ``<unk>``.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Self

from tinylm.core.data.tokenizers import BOS, EOS, PAD, UNK, Tokenizer, require_texts
from tinylm.core.registry import TOKENIZERS


class VocabTokenizer(Tokenizer):
    """A tokenizer over a fixed list of string tokens: ``<pad> <bos> <eos> <unk>`` then the vocabulary."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if list(tokens[:4]) != [PAD, BOS, EOS, UNK]:
            raise ValueError(f"a {self.name} vocabulary must start with {PAD}, {BOS}, {EOS}, {UNK}")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"a {self.name} vocabulary has duplicate tokens")
        self.tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.vocab_size = len(self.tokens)

    @staticmethod
    @abstractmethod
    def split(text: str) -> list[str]:
        """Text -> token strings."""

    @staticmethod
    @abstractmethod
    def join(tokens: Sequence[str]) -> str:
        """Token strings -> text (the inverse of ``split`` on normalized text)."""

    @classmethod
    def build(cls, texts: Iterable[str] | None = None, vocab_size: int | None = None, **kwargs: Any) -> Self:
        if kwargs:
            raise TypeError(f"{cls.name} takes no options besides texts and vocab_size, got {sorted(kwargs)}")
        if vocab_size is not None and vocab_size < 5:
            raise ValueError(
                f"{cls.name} vocab_size must be at least 5 (4 special tokens + 1), got {vocab_size}"
            )
        counts: Counter[str] = Counter()
        for text in require_texts(cls.name, texts):
            counts.update(cls.split(text))
        for special in (PAD, BOS, EOS, UNK):
            counts.pop(special, None)
        if not counts:
            raise ValueError(f"no {cls.name} tokens in the training texts (empty input?)")
        keep = sorted(counts, key=lambda t: (-counts[t], t))  # most frequent first, ties by token
        if vocab_size is not None:
            keep = keep[: vocab_size - 4]
        return cls([PAD, BOS, EOS, UNK, *cls.order(keep)])

    @staticmethod
    def order(tokens: list[str]) -> list[str]:
        """How the kept tokens are laid out in the vocabulary (default: by frequency)."""
        return tokens

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        get, unk = self._ids.get, self.unk_id
        return self._frame([get(t, unk) for t in self.split(text)], add_bos, add_eos)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        skip = self.special_ids if skip_special else frozenset()
        return self.join([self.tokens[i] for i in self._check_ids(ids) if i not in skip])

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Self:
        return cls(state["tokens"])


@TOKENIZERS.register("char")
class CharTokenizer(VocabTokenizer):
    """One id per character of the training texts (sorted); unseen characters encode to ``<unk>``.

    ``vocab_size`` (optional) keeps only the most frequent characters: ``vocab_size - 4`` of them.
    """

    name = "char"

    @staticmethod
    def split(text: str) -> list[str]:
        return list(text)

    @staticmethod
    def join(tokens: Sequence[str]) -> str:
        return "".join(tokens)

    @staticmethod
    def order(tokens: list[str]) -> list[str]:
        return sorted(tokens)


# A word (letters/digits/_, with inner apostrophes: don't, Lily's), a newline, or one other visible char.
_WORD_RE = re.compile(r"\w+(?:['’]\w+)*|\n|[^\w\s]")
_NO_SPACE_BEFORE = frozenset(".,!?;:)]}%…”’")
_NO_SPACE_AFTER = frozenset("([{$#“‘'")  # a lone ' mostly starts an elision: 'tis, 'em
_JOINERS = frozenset("-/")  # hyphens and slashes attach on both sides: well-known, and/or, sleep--die


@TOKENIZERS.register("whitespace")
class WhitespaceTokenizer(VocabTokenizer):
    """Word level: words, single punctuation marks and newlines; the most frequent ``vocab_size - 4`` kept.

    Decoding writes one space between tokens except around newlines, before closing punctuation (``.,!?``),
    after opening brackets and a lone ``'``, on both sides of ``-`` and ``/``, and inside double quotes
    (``"`` alternates between opening and closing). Spaces, tabs and repeated blanks are not kept, so the
    round trip is exact for ``normalize(text)``.
    """

    name = "whitespace"

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD_RE.findall(text)

    @staticmethod
    def join(tokens: Sequence[str]) -> str:
        out: list[str] = []
        glue, in_quote = True, False  # glue: no space before the next token
        for tok in tokens:
            closing_quote = tok == '"' and in_quote
            if not (glue or closing_quote or tok == "\n" or tok in _NO_SPACE_BEFORE or tok in _JOINERS):
                out.append(" ")
            out.append(tok)
            if tok == '"':
                in_quote = not in_quote
            glue = tok == "\n" or tok in _NO_SPACE_AFTER or tok in _JOINERS or (tok == '"' and in_quote)
        return "".join(out)

    @classmethod
    def normalize(cls, text: str) -> str:
        """``text`` as this tokenizer writes it back (spacing canonicalized)."""
        return cls.join(cls.split(text))
