"""Tokenizers: one conformance suite that every registered tokenizer passes, then each one's own behaviour."""

import json

import pytest

from tinylm.core import TOKENIZERS, UnknownNameError
from tinylm.core.data import (
    BPETokenizer,
    ByteLevelTokenizer,
    CharTokenizer,
    Tokenizer,
    WhitespaceTokenizer,
    build_tokenizer,
    generate_stories,
    load_tokenizer,
)

STORIES = list(generate_stories(60, seed=7))
UNICODE = "Grüße, 世界! Ça va? 🙂 naïve café\ttabs\n\nand  double  spaces  "


class TokenizerConformance:
    """What every tokenizer must do; a subclass sets ``name``, ``vocab_size`` and ``round_trip_texts``.

    The tokenizer is trained on a few stories plus the round-trip texts (so they are in its vocabulary).
    """

    name: str
    vocab_size: int | None = None
    round_trip_texts: tuple[str, ...] = (STORIES[0], STORIES[1])

    @pytest.fixture
    def tok(self) -> Tokenizer:
        return build_tokenizer(self.name, STORIES + list(self.round_trip_texts), self.vocab_size)

    def test_is_registered(self, tok):
        assert (
            self.name in TOKENIZERS and isinstance(tok, TOKENIZERS.get(self.name)) and tok.name == self.name
        )

    def test_round_trip(self, tok):
        for text in self.round_trip_texts:
            ids = tok.encode(text)
            assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
            assert tok.decode(ids) == text

    def test_special_tokens(self, tok):
        specials = {tok.pad_id, tok.bos_id, tok.eos_id}
        assert len(specials) == 3 and all(0 <= i < tok.vocab_size for i in specials)
        plain = tok.encode("Lily had a ball.")
        framed = tok.encode("Lily had a ball.", add_bos=True, add_eos=True)
        assert framed == [tok.bos_id, *plain, tok.eos_id]
        assert tok.decode(framed) == tok.decode(plain)
        shown = tok.decode([tok.bos_id, *plain, tok.eos_id, tok.pad_id], skip_special=False)
        assert shown.startswith("<bos>") and shown.replace(" ", "").endswith("ball.<eos><pad>")
        assert not specials & set(plain)

    def test_save_load_equal(self, tok, tmp_path):
        path = tok.save(tmp_path / "tok")
        assert path == tmp_path / "tok" / "tokenizer.json"
        assert json.loads(path.read_text())["type"] == self.name
        for source in (tmp_path / "tok", path):
            loaded = load_tokenizer(source)
            assert loaded == tok and type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
            assert loaded.encode(STORIES[2], add_eos=True) == tok.encode(STORIES[2], add_eos=True)

    def test_encode_batch_matches_encode(self, tok):
        assert tok.encode_batch(STORIES[:5], add_bos=True) == [
            tok.encode(t, add_bos=True) for t in STORIES[:5]
        ]

    def test_out_of_range_id_raises(self, tok):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([0, tok.vocab_size])

    def test_vocab_size(self, tok):
        if self.vocab_size is not None:
            assert tok.vocab_size <= self.vocab_size
        assert max(tok.encode(" ".join(STORIES))) < tok.vocab_size


class TestByteLevel(TokenizerConformance):
    name = "bytelevel"
    round_trip_texts = (STORIES[0], UNICODE, "", "<eos> is just text here")

    def test_fixed_vocab_without_training(self):
        tok = build_tokenizer("bytelevel")
        assert isinstance(tok, ByteLevelTokenizer) and tok.vocab_size == 259
        assert tok.encode("é") == [0xC3, 0xA9] and (tok.pad_id, tok.bos_id, tok.eos_id) == (256, 257, 258)
        with pytest.raises(ValueError, match="fixed vocab of 259"):
            build_tokenizer("bytelevel", vocab_size=512)

    def test_a_broken_character_decodes_to_a_replacement(self):
        tok = build_tokenizer("bytelevel")
        assert tok.decode([0xC3]) == "\ufffd" and tok.decode([0xC3, 257, 0xA9], skip_special=True) == "é"


class TestChar(TokenizerConformance):
    name = "char"
    round_trip_texts = (STORIES[0], "Lily, Tom!\n", "")

    def test_alphabet_from_texts_and_unk(self):
        tok = build_tokenizer("char", ["abca", "cab!"])
        assert (
            isinstance(tok, CharTokenizer) and tok.tokens[4:] == ["!", "a", "b", "c"] and tok.vocab_size == 8
        )
        assert tok.encode("abz") == [5, 6, tok.unk_id] and tok.decode(tok.encode("abz")) == "ab<unk>"

    def test_vocab_size_keeps_the_most_frequent(self):
        tok = build_tokenizer("char", ["aaaabbbccd"], vocab_size=6)
        assert tok.vocab_size == 6 and set(tok.tokens[4:]) == {"a", "b"}

    def test_needs_texts(self):
        with pytest.raises(ValueError, match="pass texts="):
            build_tokenizer("char")


class TestWhitespace(TokenizerConformance):
    name = "whitespace"
    vocab_size = 1000
    round_trip_texts = (
        STORIES[0],
        'She said, "Can I play too?" and (smiling) left.\nThe end!',
        "A well-known dog's ball: red/blue; 'tis fine...",
    )

    def test_words_and_punctuation(self):
        assert WhitespaceTokenizer.split('Lily\'s ball, "hi!"\nok') == [
            "Lily's", "ball", ",", '"', "hi", "!", '"', "\n", "ok",
        ]  # fmt: skip

    def test_normalize_is_idempotent_and_round_trips(self):
        messy = '  Tom   said ,"hello"  to\t Lily .\n\nThey  played ( all day ) .'
        norm = WhitespaceTokenizer.normalize(messy)
        assert norm == 'Tom said, "hello" to Lily.\n\nThey played (all day).'
        assert WhitespaceTokenizer.normalize(norm) == norm
        tok = build_tokenizer("whitespace", [messy])
        assert tok.decode(tok.encode(messy)) == norm

    def test_vocab_capped_to_most_frequent_words_and_unk(self):
        tok = build_tokenizer("whitespace", ["the cat the dog the cat . ."], vocab_size=7)
        assert tok.vocab_size == 7 and tok.tokens[4:] == ["the", ".", "cat"]
        assert tok.encode("the dog") == [4, tok.unk_id] and tok.decode(tok.encode("the dog")) == "the <unk>"

    def test_rejects_tiny_vocab(self):
        with pytest.raises(ValueError, match="at least 5"):
            build_tokenizer("whitespace", STORIES, vocab_size=3)


class TestBPE(TokenizerConformance):
    name = "bpe"
    vocab_size = 320
    round_trip_texts = (STORIES[0], UNICODE, "text that spells <eos> and <pad> stays text", "")

    def test_trained_vocab(self, tok):
        assert isinstance(tok, BPETokenizer) and 259 < tok.vocab_size <= 320
        assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
        assert len(tok.encode(STORIES[3])) < 0.8 * len(STORIES[3].encode())  # merges were learned

    def test_library_json_is_embedded(self, tok, tmp_path):
        saved = json.loads(tok.save(tmp_path).read_text())
        assert (
            saved["hf_tokenizer"]["model"]["type"] == "BPE"
            and len(saved["hf_tokenizer"]["model"]["merges"]) > 0
        )

    def test_spelled_special_is_not_special(self, tok):
        assert tok.eos_id not in tok.encode("<eos>")

    def test_options_and_errors(self):
        with pytest.raises(ValueError, match="vocab_size >= 259"):
            build_tokenizer("bpe", STORIES, vocab_size=100)
        with pytest.raises(TypeError, match="min_frequency"):
            build_tokenizer("bpe", STORIES, vocab_size=300, dropout=0.1)
        rare = build_tokenizer("bpe", STORIES, vocab_size=2000, min_frequency=1)
        common = build_tokenizer("bpe", STORIES, vocab_size=2000, min_frequency=50)
        assert common.vocab_size < rare.vocab_size


def test_every_registered_tokenizer_runs_the_conformance_suite():
    assert {suite.name for suite in TokenizerConformance.__subclasses__()} == set(TOKENIZERS.names())


def test_unknown_tokenizer_lists_known_names():
    with pytest.raises(UnknownNameError, match="known tokenizer names: bpe, bytelevel, char, whitespace"):
        build_tokenizer("sentencepiece", STORIES)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        load_tokenizer(tmp_path)
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path} is not a valid tokenizer file"):
        load_tokenizer(tmp_path)
    path.write_text('{"tokens": []}')
    with pytest.raises(ValueError, match="no 'type' field"):
        load_tokenizer(tmp_path)
    path.write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match=r"unknown tokenizer 'wordpiece'.*bpe, bytelevel, char, whitespace"):
        load_tokenizer(path)
    path.write_text('{"type": "char", "tokens": ["a", "b"]}')
    with pytest.raises(ValueError, match="corrupt char tokenizer file"):
        load_tokenizer(path)
    path.write_text('{"type": "bpe", "hf_tokenizer": {"model": 3}}')
    with pytest.raises(ValueError, match="corrupt bpe tokenizer file"):
        load_tokenizer(path)
