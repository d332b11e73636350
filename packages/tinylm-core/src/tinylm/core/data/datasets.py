"""Datasets: raw documents (strings) for a ``DataConfig``, chosen by name from the ``DATASETS`` registry.

A dataset is a function ``DataConfig -> Iterable[str]`` registered with ``@register_dataset("name")``.
Registered here:

- ``synthetic_stories`` (the default): children's stories generated on the spot (``synthetic_stories.py``).
- ``text``: a local text file or a folder of ``.txt`` files, one document per paragraph (blank-line
  separated) by default; ``sample_by="document"`` makes each file one document, ``doc_separator`` ends a
  document at a separator line (``<|endoftext|>``).
- ``hf``: a Hugging Face hub dataset (``hf_name``, ``hf_config``, ``split``, ``streaming``), or local
  json/jsonl/csv/parquet/txt files (``path``), reading ``text_field``.
- ``tinyshakespeare`` and ``tinystories``: ``path`` when given, else the hub; offline, a one-line error
  says how to pass a local file.

Local files are read lazily through ``datasets`` in streaming mode (nothing is copied to its cache).
``datasets`` is the optional extra ``tinylm-core[data]`` and is imported only when a dataset needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinylm.core.data.synthetic_stories import GENERATOR_VERSION, generate_stories
from tinylm.core.registry import DATASETS

DatasetSource = Callable[["DataConfig"], Iterable[str]]
SAMPLE_BY = ("paragraph", "document", "line")
LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
TINYSTORIES_SEPARATOR = "<|endoftext|>"


class DataPathError(FileNotFoundError):
    """``data.path`` is missing, does not exist, or holds no usable files; the message says what to pass."""


class DatasetUnavailableError(RuntimeError):
    """A hub dataset could not be loaded (offline, unreachable, unknown); the message says what to pass."""


@dataclass
class DataConfig:
    """Which documents to read, and how they are split into train/val.

    ``num_documents`` and ``seed`` drive ``synthetic_stories``; ``max_documents`` caps any dataset;
    ``val_fraction`` of the documents (at least one) go to validation. ``cache_dir`` is where tokenized
    data and trained tokenizers are cached (default ``$TINYLM_DATA_CACHE`` or ``~/.cache/tinylm/data``).
    ``sample_by`` and ``doc_separator`` say how local text files split into documents; ``streaming``
    applies to hub datasets (local files are always read lazily).
    """

    name: str = "synthetic_stories"
    path: str | None = None
    hf_name: str | None = None
    hf_config: str | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = False
    num_documents: int = 20000
    seed: int = 1337
    val_fraction: float = 0.05
    val_split: str = "spread"  # spread: every k-th document; end: the last val_fraction of all tokens
    max_documents: int | None = None
    cache_dir: str | None = None
    sample_by: str = "paragraph"
    doc_separator: str | None = None

    def __post_init__(self) -> None:
        DATASETS.get(self.name)  # an unknown name lists the known ones
        if self.path is not None:
            self.path = str(self.path)
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        if not isinstance(self.num_documents, int) or self.num_documents < 2:
            raise ValueError(f"data.num_documents must be an integer >= 2, got {self.num_documents!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"data.seed must be an integer, got {self.seed!r}")
        if self.val_split not in ("spread", "end"):
            raise ValueError(f"data.val_split must be 'spread' or 'end', got {self.val_split!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.max_documents is not None and (
            not isinstance(self.max_documents, int) or self.max_documents < 2
        ):
            raise ValueError(
                f"data.max_documents must be None or an integer >= 2, got {self.max_documents!r}"
            )
        if self.sample_by not in SAMPLE_BY:
            raise ValueError(f"data.sample_by must be one of {', '.join(SAMPLE_BY)}, got {self.sample_by!r}")
        for field in ("split", "text_field"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise ValueError(f"data.{field} must be a non-empty string, got {getattr(self, field)!r}")
        if self.doc_separator == "":
            raise ValueError("data.doc_separator must be None or a non-empty string")


def register_dataset(name: str, version: int = 1) -> Callable[[DatasetSource], DatasetSource]:
    """Register ``fn(cfg) -> Iterable[str]`` as dataset ``name``; bump ``version`` when its output changes."""

    def wrap(fn: DatasetSource) -> DatasetSource:
        fn.version = version  # type: ignore[attr-defined]  # part of the cache key
        return DATASETS.register(name)(fn)

    return wrap


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """The documents of ``cfg``, stripped, without empty or missing ones, ``max_documents`` at most."""
    count = 0
    for doc in DATASETS.get(cfg.name)(cfg):
        if doc is None:
            continue
        if not isinstance(doc, str):
            raise TypeError(f"dataset {cfg.name!r} yielded a {type(doc).__name__}, not a string document")
        if doc := doc.strip():
            yield doc
            count += 1
            if cfg.max_documents is not None and count >= cfg.max_documents:
                return


def dataset_identity(cfg: DataConfig) -> dict[str, Any]:
    """What determines the documents of ``cfg`` (fields, source version, local files' sizes and mtimes)."""
    ident = {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "streaming")}
    ident["version"] = getattr(DATASETS.get(cfg.name), "version", 1)
    if cfg.path is not None:
        root = _existing_path(cfg.path, cfg.name)
        ident["path"] = str(root.resolve())
        files = (
            {root.name: root}
            if root.is_file()
            else {str(f.relative_to(root)): f for f in _visible_files(root)}
        )
        ident["files"] = [[name, (s := f.stat()).st_size, s.st_mtime_ns] for name, f in files.items()]
    return ident


# ---------------------------------------------------------------------------------------------- sources


@register_dataset("synthetic_stories", version=GENERATOR_VERSION)
def synthetic_stories(cfg: DataConfig) -> Iterator[str]:
    """``cfg.num_documents`` generated children's stories, deterministic for ``cfg.seed``."""
    return generate_stories(cfg.num_documents, cfg.seed)


@register_dataset("text")
def text_files(cfg: DataConfig) -> Iterator[str]:
    """A local ``.txt`` file or folder of them, split into documents by ``sample_by`` / ``doc_separator``."""
    if cfg.path is None:
        raise DataPathError(
            "data=text needs a local file or folder of .txt files: pass data.path=/path/to/file.txt"
        )
    return _text_documents(_local_files(cfg.path, cfg.name, (".txt",)), cfg.sample_by, cfg.doc_separator)


@register_dataset("hf")
def hf_dataset(cfg: DataConfig) -> Iterator[str]:
    """``cfg.text_field`` of a hub dataset (``hf_name``) or of local json/jsonl/csv/parquet/txt (``path``)."""
    if cfg.path is not None:
        return _local_documents(cfg)
    if cfg.hf_name is None:
        raise ValueError(
            "data=hf needs data.hf_name=<hub dataset> or data.path=/path/to/file.jsonl "
            "(json, jsonl, csv, parquet or txt)"
        )
    hint = "to use local files pass data=hf data.path=/path/to/file.jsonl (json, csv, parquet or txt)"
    return _hub_texts(cfg, cfg.hf_name, cfg.hf_config, cfg.text_field, hint)


@register_dataset("tinyshakespeare")
def tinyshakespeare(cfg: DataConfig) -> Iterator[str]:
    """Tiny Shakespeare, a document per speech: ``path``, else hub ``karpathy/tiny_shakespeare``."""
    if cfg.path is not None:
        return _local_documents(cfg)
    hint = "to use a local copy pass data=tinyshakespeare data.path=/path/to/tinyshakespeare.txt"
    texts = _hub_texts(cfg, cfg.hf_name or "karpathy/tiny_shakespeare", cfg.hf_config, cfg.text_field, hint)
    return (para for text in texts for para in text.split("\n\n"))  # the hub has one row per split


@register_dataset("tinystories")
def tinystories(cfg: DataConfig) -> Iterator[str]:
    """TinyStories: ``path`` (``.txt``: stories end at ``<|endoftext|>``), else ``roneneldan/TinyStories``."""
    if cfg.path is not None:
        return _local_documents(cfg, default_separator=TINYSTORIES_SEPARATOR)
    hint = "to use a local copy pass data=tinystories data.path=/path/to/TinyStories-train.txt"
    return _hub_texts(cfg, cfg.hf_name or "roneneldan/TinyStories", cfg.hf_config, cfg.text_field, hint)


# ---------------------------------------------------------------------------------------------- readers


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "reading text files and Hugging Face datasets needs the `datasets` library: "
            "pip install tinylm-core[data]"
        ) from e
    return datasets


def _existing_path(path: str, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataPathError(
            f"data path {p} does not exist; pass an existing file or folder: "
            f"data={name} data.path=/path/to/file.txt"
        )
    return p


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )


def _local_files(path: str, name: str, suffixes: Iterable[str]) -> list[Path]:
    p = _existing_path(path, name)
    if p.is_file():
        return [p]
    suffixes = tuple(suffixes)
    files = [f for f in _visible_files(p) if f.suffix.lower() in suffixes]
    if not files:
        raise DataPathError(f"folder {p} has no {'/'.join(suffixes)} files; pass data.path=/path/to/file.txt")
    return files


def plain_text_rows(files: list[Path], sample_by: str) -> Iterator[dict[str, str]]:
    """What ``datasets``' text loader yields for local files, in plain Python (used when it is missing)."""
    for f in files:
        text = f.read_text(encoding="utf-8")
        if sample_by == "document":
            yield {"text": text}
        elif sample_by == "paragraph":
            yield from ({"text": para} for para in text.split("\n\n") if para.strip())
        else:
            yield from ({"text": line} for line in text.splitlines())


def _text_documents(files: list[Path], sample_by: str, separator: str | None) -> Iterator[str]:
    sample_by = "line" if separator else sample_by
    try:
        import datasets
    except ImportError:  # plain local text needs no extra library
        ds: Iterable[dict[str, Any]] = plain_text_rows(files, sample_by)
    else:
        ds = datasets.load_dataset(
            "text", data_files=[str(f) for f in files], split="train", streaming=True, sample_by=sample_by
        )
    if not separator:
        yield from (row["text"] for row in ds)
        return
    lines: list[str] = []
    for row in ds:
        line = row["text"]
        while separator in line:  # a separator may also end a line: "The end.<|endoftext|>"
            head, line = line.split(separator, 1)
            yield "\n".join([*lines, head])
            lines = []
        lines.append(line)
    yield "\n".join(lines)


def _local_documents(cfg: DataConfig, default_separator: str | None = None) -> Iterator[str]:
    files = _local_files(cfg.path or "", cfg.name, LOCAL_BUILDERS)
    builders = {
        LOCAL_BUILDERS.get(f.suffix.lower(), "text") for f in files
    }  # a single file of any name: text
    if len(builders) > 1:
        raise DataPathError(
            f"{cfg.path} mixes {', '.join(sorted(builders))} files; point data.path at one kind"
        )
    builder = builders.pop()
    if builder == "text":
        return _text_documents(files, cfg.sample_by, cfg.doc_separator or default_separator)
    ds = _datasets().load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)
    return _field(ds, cfg.text_field, str(cfg.path))


def _field(rows: Iterable[dict[str, Any]], field: str, source: str) -> Iterator[str]:
    for row in rows:
        if field not in row:
            raise ValueError(
                f"{source} has no field {field!r} (fields: {', '.join(row)}); set data.text_field=..."
            )
        yield row[field]


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` asks for no network."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_texts(cfg: DataConfig, hf_name: str, hf_config: str | None, field: str, hint: str) -> Iterator[str]:
    if hub_offline():
        raise DatasetUnavailableError(
            f"data={cfg.name} would load {hf_name!r} from the Hugging Face hub, but it is offline "
            f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); {hint}"
        )
    try:
        ds = _datasets().load_dataset(hf_name, hf_config, split=cfg.split, streaming=cfg.streaming)
    except Exception as e:  # connection errors come from several libraries; the hint is the same for all
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise DatasetUnavailableError(
            f"data={cfg.name} could not load {hf_name!r} from the Hugging Face hub "
            f"({type(e).__name__}: {detail}); {hint}"
        ) from e
    return _field(ds, field, hf_name)
