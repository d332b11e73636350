"""Tokenized caches: train/val split by document, memmaps on disk, reuse by key, atomic writes, build_data."""

import json

import numpy as np
import pytest
import torch

from tinylm.core import DATASETS
from tinylm.core.data import (
    BatchIterator,
    DataConfig,
    PackedBlocks,
    WhitespaceTokenizer,
    build_data,
    build_tokenizer,
    generate_stories,
    iter_documents,
    load_tokenizer,
    prepare_tokens,
    register_dataset,
    split_documents,
    token_cache,
    training_texts,
)
from tinylm.core.data.tokenizers import BOS, EOS, PAD, UNK


@pytest.fixture
def counted():
    """A dataset ``counted_test`` (synthetic stories) that records each time it is read."""
    calls = []

    @register_dataset("counted_test")
    def source(cfg):
        calls.append(cfg.num_documents)
        return generate_stories(cfg.num_documents, cfg.seed)

    yield calls
    DATASETS.unregister("counted_test")


def test_split_is_by_document_even_and_deterministic():
    pairs = list(split_documents([f"d{i}" for i in range(100)], 0.1))
    val = [d for d, is_val in pairs if is_val]
    assert [d for d, _ in pairs] == [f"d{i}" for i in range(100)]
    assert val == [f"d{i}" for i in range(9, 100, 10)]
    assert pairs == list(split_documents([f"d{i}" for i in range(100)], 0.1))


def test_validation_gets_at_least_one_document():
    assert list(split_documents(["a", "b", "c"], 0.05)) == [("a", False), ("b", False), ("c", True)]
    with pytest.raises(ValueError, match="yielded 1 document"):
        list(split_documents(["only"], 0.5))
    with pytest.raises(ValueError, match="yielded 0 document"):
        list(split_documents([], 0.5))


def test_prepare_tokens_layout(tmp_path):
    cfg = DataConfig(num_documents=40, val_fraction=0.25)
    tok = build_tokenizer("bytelevel")
    splits = prepare_tokens(cfg, tok, tmp_path)
    documents = list(iter_documents(cfg))
    val_docs = [d for d, is_val in split_documents(documents, 0.25) if is_val]
    assert splits.train.dtype == np.uint16 and splits.val.dtype == np.uint16
    assert splits.meta["train_documents"] == 30 and splits.meta["val_documents"] == 10
    assert (splits.train == tok.eos_id).sum() == 30 and splits.val[-1] == tok.eos_id
    assert len(splits.train) + len(splits.val) == sum(len(d.encode()) + 1 for d in documents)
    assert tok.decode(splits.val[: len(val_docs[0].encode())]) == val_docs[0]
    assert tok.decode(splits.train[: len(documents[0].encode())]) == documents[0]
    assert splits.directory == tmp_path / splits.key and sorted(p.name for p in tmp_path.iterdir()) == [
        splits.key
    ]
    assert sorted(p.name for p in splits.directory.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    assert load_tokenizer(splits.directory) == tok
    meta = json.loads((splits.directory / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["key"] == splits.key and meta["val_tokens"] == len(splits.val)
    with pytest.raises(ValueError, match="read-only"):
        splits.train[0] = 1


def test_second_call_loads_the_cache_without_reading_the_dataset(tmp_path, counted):
    cfg = DataConfig(name="counted_test", num_documents=30)
    tok = build_tokenizer("bytelevel")
    first = prepare_tokens(cfg, tok, tmp_path)
    assert counted == [30]
    second = prepare_tokens(cfg, tok, tmp_path)
    assert counted == [30] and second.key == first.key
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)


def test_key_follows_dataset_and_tokenizer(tmp_path):
    byte = build_tokenizer("bytelevel")
    char = build_tokenizer("char", generate_stories(20))
    base = prepare_tokens(DataConfig(num_documents=20), byte, tmp_path).key
    assert prepare_tokens(DataConfig(num_documents=20, cache_dir="elsewhere"), byte, tmp_path).key == base
    others = {
        prepare_tokens(DataConfig(num_documents=20, seed=2), byte, tmp_path).key,
        prepare_tokens(DataConfig(num_documents=21), byte, tmp_path).key,
        prepare_tokens(DataConfig(num_documents=20, val_fraction=0.2), byte, tmp_path).key,
        prepare_tokens(DataConfig(num_documents=20), char, tmp_path).key,
    }
    assert len(others) == 4 and base not in others


def test_large_vocab_is_stored_as_uint32(tmp_path):
    tok = WhitespaceTokenizer([PAD, BOS, EOS, UNK, *(f"w{i}" for i in range(70_000)), "Once"])
    splits = prepare_tokens(DataConfig(num_documents=4), tok, tmp_path)
    assert splits.train.dtype == np.uint32 and splits.train[0] == 70_004 and splits.meta["dtype"] == "uint32"


def test_interrupted_write_leaves_no_cache(tmp_path, monkeypatch):
    class Exploding(WhitespaceTokenizer):
        calls = 0

        def encode_batch(self, texts, add_bos=False, add_eos=False):
            Exploding.calls += 1
            if Exploding.calls == 2:
                raise KeyboardInterrupt  # the second batch of documents: the files are half written
            return super().encode_batch(texts, add_bos, add_eos)

    monkeypatch.setattr(token_cache, "_ENCODE_BATCH", 4)
    cfg = DataConfig(num_documents=20)
    tok = Exploding.build(generate_stories(20))
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(cfg, tok, tmp_path)
    assert list(tmp_path.iterdir()) == []
    splits = prepare_tokens(cfg, tok, tmp_path)
    assert splits.meta["train_documents"] + splits.meta["val_documents"] == 20


def test_corrupt_cache_is_reported(tmp_path):
    splits = prepare_tokens(DataConfig(num_documents=10), build_tokenizer("bytelevel"), tmp_path)
    path = splits.directory / "train.bin"
    del splits
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"missing or truncated; delete .* to rebuild"):
        prepare_tokens(DataConfig(num_documents=10), build_tokenizer("bytelevel"), tmp_path)


def test_training_texts_skip_validation_and_stop_at_the_budget():
    cfg = DataConfig(num_documents=50, val_fraction=0.2)
    train_docs = [d for d, is_val in split_documents(iter_documents(cfg), 0.2) if not is_val]
    assert list(training_texts(cfg, max_bytes=10**9)) == train_docs
    few = list(training_texts(cfg, max_bytes=1000))
    assert few == train_docs[: len(few)] and 1 <= len(few) < 5
    assert sum(len(d.encode()) for d in few[:-1]) < 1000 <= sum(len(d.encode()) for d in few)


def test_build_data_bytelevel(tmp_path):
    tok, splits = build_data(DataConfig(num_documents=20), "bytelevel", None, tmp_path)
    assert tok.vocab_size == 259 and not (tmp_path / "tokenizers").exists()
    x, y = next(iter(BatchIterator(PackedBlocks(splits.train, block_size=32), batch_size=4, seed=0)))
    assert x.shape == (4, 32) and (x[:, 1:] == y[:, :-1]).all()


@pytest.mark.parametrize(("name", "vocab_size"), [("char", 40), ("whitespace", 200), ("bpe", 300)])
def test_build_data_trains_once_and_reuses(tmp_path, counted, name, vocab_size):
    cfg = DataConfig(name="counted_test", num_documents=40)
    tok, splits = build_data(cfg, name, vocab_size, tmp_path)
    assert counted == [40, 40]  # once to train the tokenizer, once to tokenize
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
    assert tok.vocab_size <= vocab_size and int(splits.train.max()) < tok.vocab_size
    again, splits_again = build_data(cfg, name, vocab_size, tmp_path)
    assert counted == [40, 40] and again == tok and splits_again.key == splits.key
    bigger, _ = build_data(cfg, name, vocab_size + 20, tmp_path)  # another tokenizer: trained and cached anew
    assert len(counted) == 4 and bigger != tok and len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_build_data_uses_the_config_cache_dir(tmp_path):
    _, splits = build_data(DataConfig(num_documents=10, cache_dir=str(tmp_path / "c")), "bytelevel")
    assert splits.directory.parent == tmp_path / "c"


def test_val_split_end_takes_the_tail_of_the_stream(tmp_path):
    """nanoGPT's split: with one document, val is the last val_fraction of its tokens."""
    from tinylm.core.data import DataConfig, build_data, build_tokenizer, prepare_tokens

    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    path = tmp_path / "one.txt"
    path.write_text(text)
    cfg = DataConfig(name="text", path=str(path), sample_by="document", val_split="end", val_fraction=0.1)
    tok = build_tokenizer("char", texts=[text])
    splits = prepare_tokens(cfg, tok, tmp_path / "cache")
    stream = tok.encode(text, add_eos=True)
    assert len(splits.val) == 100 and len(splits.train) == len(stream) - 100
    assert splits.train.tolist() == stream[:-100] and splits.val.tolist() == stream[-100:]
    tok2, splits2 = build_data(cfg, "char", cache_dir=tmp_path / "c3")  # the tokenizer trains on train text
    assert len(splits2.val) == 100 and tok2.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="needs at least 2"):  # one document cannot be spread
        prepare_tokens(DataConfig(name="text", path=str(path), sample_by="document"), tok, tmp_path / "c2")
    with pytest.raises(ValueError, match="data.val_split must be 'spread' or 'end'"):
        DataConfig(val_split="middle")


def test_batch_iterator_shifts_block_boundaries_each_epoch():
    """Shuffled epochs cut the stream at a seeded offset; targets stay the next tokens."""
    import numpy as np

    from tinylm.core.data import BatchIterator, PackedBlocks

    blocks = PackedBlocks(np.arange(400, dtype=np.uint16), 16)
    it = BatchIterator(blocks, batch_size=4, seed=0)
    starts = set()
    for _ in range(60):
        x, y = next(it)
        assert torch.equal(y, x + 1)
        starts.update((x[:, 0] % 16).tolist())
    assert len(starts) > 1  # block starts are not all multiples of 16
    again = BatchIterator(blocks, batch_size=4, seed=0)
    state = None
    for i in range(60):
        if i == 33:
            state = again.state_dict()
        next(again)
    resumed = BatchIterator(blocks, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    replay = BatchIterator(blocks, batch_size=4, seed=0)
    for _ in range(33):
        next(replay)
    for _ in range(10):
        assert torch.equal(next(resumed)[0], next(replay)[0])
    plain = BatchIterator(blocks, batch_size=4, seed=0, shuffle=False)
    assert all((next(plain)[0][:, 0] % 16 == 0).all() for _ in range(30))


def test_packed_blocks_batch_equals_stacked_blocks():
    import numpy as np

    from tinylm.core.data import PackedBlocks

    tokens = np.random.default_rng(0).integers(0, 60000, 1000).astype(np.uint16)
    blocks = PackedBlocks(tokens, 16)
    for offset, idx in ((0, [3, 0, 60, 7]), (5, [61, 2])):
        x, y = blocks.batch(idx, offset)
        pairs = [blocks.block(i, offset) for i in idx]
        assert x.dtype == torch.int64 and x.shape == (len(idx), 16)
        assert torch.equal(x, torch.stack([p[0] for p in pairs]))
        assert torch.equal(y, torch.stack([p[1] for p in pairs]))
    with pytest.raises(IndexError, match=r"blocks \[62\] out of range at offset 5"):
        blocks.batch([1, 62], offset=5)
