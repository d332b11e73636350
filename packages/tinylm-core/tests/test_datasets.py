"""Datasets: config validation, the synthetic stories, local text/json/csv/parquet files, offline presets.

Nothing here touches the network: hub loading is tested offline (env) or with ``load_dataset`` replaced.
"""

import itertools
import json
import os
import time
from pathlib import Path
from typing import ClassVar

import pytest

from tinylm.core import DATASETS, UnknownNameError
from tinylm.core.data import (
    DataConfig,
    DataPathError,
    DatasetUnavailableError,
    dataset_identity,
    generate_stories,
    iter_documents,
    register_dataset,
)

TINYSHAKESPEARE = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def docs(**cfg) -> list[str]:
    return list(iter_documents(DataConfig(**cfg)))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_documents", 1, "num_documents must be an integer >= 2"),
        ("val_fraction", 0.0, r"val_fraction must be in \(0, 1\)"),
        ("val_fraction", 1.0, r"val_fraction must be in \(0, 1\)"),
        ("max_documents", 1, "max_documents must be None or an integer >= 2"),
        ("seed", "1", "seed must be an integer"),
        ("sample_by", "sentence", "sample_by must be one of paragraph, document, line"),
        ("split", "", "split must be a non-empty string"),
        ("text_field", None, "text_field must be a non-empty string"),
        ("doc_separator", "", "doc_separator must be None or a non-empty string"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{field: value})


def test_unknown_dataset_lists_known_names():
    with pytest.raises(
        UnknownNameError, match="known dataset names: .*hf, .*synthetic_stories, text, tinyshakespeare"
    ):
        DataConfig(name="openwebtext")


def test_default_is_synthetic_stories():
    cfg = DataConfig()
    assert cfg.name == "synthetic_stories" and cfg.num_documents == 20000 and cfg.seed == 1337


class TestSyntheticStories:
    def test_count_and_determinism(self):
        a = docs(num_documents=50, seed=3)
        assert len(a) == 50 and a == docs(num_documents=50, seed=3)
        assert a != docs(num_documents=50, seed=4)
        assert docs(num_documents=200, seed=3)[:50] == a  # story i depends only on (seed, i)

    def test_story_like_and_varied(self):
        stories = list(generate_stories(400, seed=1))
        assert len(set(stories)) >= 395
        assert all(s.startswith(("Once upon a time", "There once was")) for s in stories)
        assert all(s.rstrip().endswith((".", "!", '"')) for s in stories)
        text = " ".join(stories)
        for word in ("Lily", "park", "happy", "friend", '"', "One day"):
            assert word in text
        openings = {s.split(".")[0].split(" named ")[1] for s in stories}  # hero names
        assert len(openings) > 30
        assert all(50 < len(s.split()) < 400 for s in stories)

    def test_fast(self):
        start = time.perf_counter()
        assert sum(1 for _ in generate_stories(2000)) == 2000
        assert time.perf_counter() - start < 2.0  # ~0.1 s: 20k stories take about a second

    def test_max_documents_caps_any_dataset(self):
        assert len(docs(num_documents=30, max_documents=7)) == 7


class TestTextFiles:
    def test_paragraphs_of_a_file(self, tmp_path):
        f = tmp_path / "corpus.txt"
        f.write_text("First para\nline two\n\nSecond para\n\n\n\nThird, no newline at end")
        assert docs(name="text", path=str(f)) == [
            "First para\nline two",
            "Second para",
            "Third, no newline at end",
        ]

    def test_folder_of_files_as_documents(self, tmp_path):
        (tmp_path / "b.txt").write_text("bee\n\nbuzz")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "a.txt").write_text("ant")
        (tmp_path / ".hidden.txt").write_text("never read")
        (tmp_path / "notes.md").write_text("not a .txt file")
        assert docs(name="text", path=str(tmp_path), sample_by="document") == ["bee\n\nbuzz", "ant"]
        assert docs(name="text", path=str(tmp_path)) == ["bee", "buzz", "ant"]

    def test_separator_lines(self, tmp_path):
        f = tmp_path / "stories.txt"
        f.write_text("One.\nStill one.\n<|endoftext|>\nTwo.<|endoftext|>\nThree.\n")
        assert docs(name="text", path=str(f), doc_separator="<|endoftext|>") == [
            "One.\nStill one.",
            "Two.",
            "Three.",
        ]

    def test_missing_path_says_what_to_pass(self, tmp_path):
        with pytest.raises(DataPathError, match="data.path=/path/to/file.txt") as e:
            docs(name="text")
        assert isinstance(e.value, FileNotFoundError)
        missing = tmp_path / "nope.txt"
        with pytest.raises(FileNotFoundError, match=f"data path {missing} does not exist.*data.path="):
            docs(name="text", path=str(missing))
        with pytest.raises(DataPathError, match="has no .txt files"):
            docs(name="text", path=str(tmp_path))


class TestHFLocalFiles:
    ROWS: ClassVar = [
        {"text": "alpha story", "id": 1},
        {"text": "beta story", "id": 2},
        {"text": "", "id": 3},
    ]

    def test_jsonl_csv_parquet(self, tmp_path):
        pytest.importorskip("datasets")  # json, csv and parquet are read through datasets
        pd = pytest.importorskip("pandas")

        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in self.ROWS))
        pd.DataFrame(self.ROWS).to_csv(tmp_path / "d.csv", index=False)
        pd.DataFrame(self.ROWS).to_parquet(tmp_path / "d.parquet")
        for name in ("d.jsonl", "d.csv", "d.parquet"):
            assert docs(name="hf", path=str(tmp_path / name)) == ["alpha story", "beta story"], name

    def test_text_field(self, tmp_path):
        f = tmp_path / "d.json"
        f.write_text("\n".join(json.dumps({"story": r["text"] + "!"}) for r in self.ROWS))
        assert docs(name="hf", path=str(f), text_field="story") == ["alpha story!", "beta story!", "!"]
        with pytest.raises(ValueError, match=r"has no field 'text' \(fields: story\); set data.text_field"):
            docs(name="hf", path=str(f))

    def test_folder_must_hold_one_kind(self, tmp_path):
        (tmp_path / "a.jsonl").write_text('{"text": "a"}')
        (tmp_path / "b.txt").write_text("b")
        with pytest.raises(DataPathError, match="mixes json, text files"):
            docs(name="hf", path=str(tmp_path))

    def test_needs_a_name_or_a_path(self):
        with pytest.raises(ValueError, match="data=hf needs data.hf_name=.* or data.path="):
            docs(name="hf")


@pytest.mark.parametrize(
    ("name", "hub", "hint"),
    [
        (
            "tinyshakespeare",
            "karpathy/tiny_shakespeare",
            "data=tinyshakespeare data.path=/path/to/tinyshakespeare.txt",
        ),
        (
            "tinystories",
            "roneneldan/TinyStories",
            "data=tinystories data.path=/path/to/TinyStories-train.txt",
        ),
        ("hf", "someone/corpus", "data=hf data.path=/path/to/file.jsonl"),
    ],
)
class TestHub:
    def test_offline_error_is_one_line_with_the_fix(self, name, hub, hint, offline):
        with pytest.raises(DatasetUnavailableError, match="offline") as e:
            docs(name=name, hf_name="someone/corpus" if name == "hf" else None)
        message = str(e.value)
        assert "\n" not in message and hint in message and hub in message

    def test_connection_error_is_one_line_with_the_fix(self, name, hub, hint, monkeypatch):
        import datasets

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        calls = []

        def unreachable(path, *args, **kwargs):
            calls.append((path, kwargs.get("split")))
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (ConnectionError)\nmore detail")

        monkeypatch.setattr(datasets, "load_dataset", unreachable)
        with pytest.raises(DatasetUnavailableError, match="ConnectionError: Couldn't reach") as e:
            docs(name=name, hf_name="someone/corpus" if name == "hf" else None)
        assert "\n" not in str(e.value) and hint in str(e.value) and calls == [(hub, "train")]


def test_tinyshakespeare_from_a_local_file(offline):
    if not TINYSHAKESPEARE.is_file():
        pytest.skip(f"{TINYSHAKESPEARE} is absent")
    speeches = docs(name="tinyshakespeare", path=str(TINYSHAKESPEARE))
    assert speeches[0] == "First Citizen:\nBefore we proceed any further, hear me speak."
    assert 7000 < len(speeches) < 7500 and all("\n\n" not in s for s in speeches)


def test_tinystories_local_txt_splits_at_endoftext(tmp_path, offline):
    f = tmp_path / "TinyStories-valid.txt"
    f.write_text("Once upon a time, a cat.\n\nIt slept.\n<|endoftext|>\nTom ran.\n<|endoftext|>\n")
    assert docs(name="tinystories", path=str(f)) == ["Once upon a time, a cat.\n\nIt slept.", "Tom ran."]


def test_identity_tracks_files_and_ignores_where_caches_go(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("one\n\ntwo")
    cfg = DataConfig(name="text", path=str(f))
    ident = dataset_identity(cfg)
    assert ident == dataset_identity(DataConfig(name="text", path=str(f), cache_dir="x", streaming=True))
    assert ident["files"][0][:2] == ["c.txt", 8] and ident["version"] == 1
    f.write_text("one\n\ntwo\n\nthree")
    os.utime(f, ns=(0, 10**18))
    assert dataset_identity(cfg) != ident
    assert dataset_identity(DataConfig(seed=1)) != dataset_identity(DataConfig(seed=2))


def test_a_new_dataset_is_one_decorator():
    @register_dataset("letters_test", version=3)
    def letters(cfg):
        return (chr(ord("a") + i % 26) * 3 for i in range(cfg.num_documents))

    try:
        assert docs(name="letters_test", num_documents=4) == ["aaa", "bbb", "ccc", "ddd"]
        assert dataset_identity(DataConfig(name="letters_test"))["version"] == 3
    finally:
        DATASETS.unregister("letters_test")


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_yields_documents_or_says_what_to_pass(name, offline):
    """Offline and without a path, each registered dataset works or tells the user what to pass."""
    try:
        got = list(itertools.islice(iter_documents(DataConfig(name=name, num_documents=5)), 5))
    except (DataPathError, DatasetUnavailableError, ValueError) as e:
        assert "data.path=" in str(e) and "\n" not in str(e)
    else:
        assert len(got) == 5 and all(isinstance(d, str) and d for d in got)


@pytest.mark.parametrize("sample_by", ["document", "paragraph", "line"])
def test_plain_reader_matches_the_datasets_text_loader(sample_by, tmp_path):
    """Without `datasets`, local text is read in plain Python with the same documents."""
    datasets = pytest.importorskip("datasets")
    from tinylm.core.data.datasets import plain_text_rows

    f = tmp_path / "t.txt"
    f.write_text("\n\nFirst para\nline two\n\n\nSecond para\n\n  \nThird, café ☕\nend\n")
    ref = datasets.load_dataset(
        "text", data_files=[str(f)], split="train", streaming=True, sample_by=sample_by
    )
    assert [r["text"] for r in plain_text_rows([f], sample_by)] == [r["text"] for r in ref]
