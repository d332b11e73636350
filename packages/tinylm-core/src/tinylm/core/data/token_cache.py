"""Tokenized datasets on disk: documents -> ids (EOS after each) -> train/val memmaps, cached by content key.

``prepare_tokens`` encodes a dataset once and stores ``train.bin`` / ``val.bin`` (``uint16`` when the vocab
fits, else ``uint32``) with ``meta.json`` and the tokenizer under ``cache_dir/<key>/``. The key hashes the
dataset's identity (``dataset_identity``: config, source version, local files' sizes and mtimes) and the
tokenizer's saved JSON, so any change rebuilds and the same inputs load instantly. A cache is written in a
temporary folder and renamed into place, so an interrupted run never leaves half of one.

Documents are split by document: document ``i`` goes to validation when ``floor((i+1) f) > floor(i f)``
(``f = val_fraction``), spreading validation evenly; if that picks none, the last document does.

``build_data`` is the one-call entry point: it trains the tokenizer when needed (on the first
``tokenizer_train_bytes`` of training documents; cached the same way) and prepares the tokens.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinylm.core.data.datasets import DataConfig, dataset_identity, iter_documents
from tinylm.core.data.tokenizers import TOKENIZER_FILE, Tokenizer, build_tokenizer, load_tokenizer
from tinylm.core.registry import TOKENIZERS

CACHE_FORMAT_VERSION = 1
META_FILE = "meta.json"
DEFAULT_TOKENIZER_TRAIN_BYTES = 8 << 20  # 8 MB of text trains a small tokenizer in seconds
_ENCODE_BATCH = 512  # documents encoded (and written) at a time

logger = logging.getLogger("tinylm.data")


@dataclass
class TokenSplits:
    """Train and validation token streams (read-only memmaps) and the cache folder that holds them."""

    train: np.memmap
    val: np.memmap
    directory: Path
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        return self.meta["key"]


def default_cache_dir() -> Path:
    """``$TINYLM_DATA_CACHE``, else ``~/.cache/tinylm/data``."""
    return Path(os.environ.get("TINYLM_DATA_CACHE") or Path.home() / ".cache" / "tinylm" / "data")


def _cache_root(cache_dir: str | os.PathLike[str] | None, data_cfg: DataConfig) -> Path:
    return Path(cache_dir or data_cfg.cache_dir or default_cache_dir()).expanduser()


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def cache_key(data_cfg: DataConfig, tokenizer: Tokenizer) -> str:
    """The folder name of the tokenized cache of ``data_cfg`` under ``tokenizer``."""
    return _hash(
        {
            "format": CACHE_FORMAT_VERSION,
            "dataset": dataset_identity(data_cfg),
            "tokenizer": tokenizer.to_json(),
        }
    )


def split_documents(
    documents: Iterable[str], val_fraction: float, name: str = "dataset"
) -> Iterator[tuple[str, bool]]:
    """``(document, is_val)`` pairs, deterministic for ``val_fraction``; validation gets at least one.

    The last document is held back one step, since it goes to validation when no other one did.
    """
    pending: tuple[str, bool] | None = None
    n_docs = n_val = 0
    for i, doc in enumerate(documents):
        if pending is not None:
            yield pending
        is_val = int((i + 1) * val_fraction) > int(i * val_fraction)
        n_docs, n_val, pending = i + 1, n_val + is_val, (doc, is_val)
    if pending is None or n_docs < 2:
        raise ValueError(f"{name} yielded {n_docs} document(s); a train/val split needs at least 2")
    yield (pending[0], True) if n_val == 0 else pending


def training_texts(data_cfg: DataConfig, max_bytes: int = DEFAULT_TOKENIZER_TRAIN_BYTES) -> Iterator[str]:
    """Training documents of ``data_cfg`` (never validation ones), up to about ``max_bytes`` of UTF-8 text.

    With ``val_split="end"`` the documents are read from the start, capped at the train share of the text.
    """
    used = 0
    if data_cfg.val_split == "end":
        text = "\n".join(iter_documents(data_cfg))
        text = text[: int(len(text) * (1 - data_cfg.val_fraction))]
        yield text[:max_bytes]
        return
    for doc, is_val in split_documents(iter_documents(data_cfg), data_cfg.val_fraction, data_cfg.name):
        if is_val:
            continue
        yield doc
        used += len(doc.encode("utf-8"))
        if used >= max_bytes:
            return


def prepare_tokens(
    data_cfg: DataConfig, tokenizer: Tokenizer, cache_dir: str | os.PathLike[str] | None = None
) -> TokenSplits:
    """Train/val token memmaps of ``data_cfg`` encoded by ``tokenizer``, built once and cached by key."""
    root = _cache_root(cache_dir, data_cfg)
    key = cache_key(data_cfg, tokenizer)
    final = root / key
    if not (final / META_FILE).is_file():
        logger.info("tokenizing %s with %s into %s", data_cfg.name, tokenizer, final)
        _build_atomically(root, final, lambda tmp: _write_splits(data_cfg, tokenizer, key, tmp))
    else:
        logger.info("using cached tokens %s", final)
    splits = _load_splits(final)
    logger.info(
        "%s: %d train tokens (%d documents), %d val tokens (%d documents)",
        data_cfg.name,
        len(splits.train),
        splits.meta["train_documents"],
        len(splits.val),
        splits.meta["val_documents"],
    )
    return splits


def build_data(
    data_cfg: DataConfig,
    tokenizer_name: str,
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    tokenizer_train_bytes: int = DEFAULT_TOKENIZER_TRAIN_BYTES,
    **tokenizer_kwargs: Any,
) -> tuple[Tokenizer, TokenSplits]:
    """The tokenizer (trained on ``data_cfg``'s training documents when it needs training) and the tokens.

    A trained tokenizer is cached under ``cache_dir/tokenizers/<key>`` (key: dataset identity, tokenizer
    name, ``vocab_size``, options), so a second run reuses it and then the tokens it produced.
    """
    root = _cache_root(cache_dir, data_cfg)
    if not TOKENIZERS.get(tokenizer_name).needs_training:
        tokenizer = build_tokenizer(tokenizer_name, None, vocab_size, **tokenizer_kwargs)
    else:
        ident = {
            "format": CACHE_FORMAT_VERSION,
            "dataset": dataset_identity(data_cfg),
            "tokenizer": tokenizer_name,
            "vocab_size": vocab_size,
            "train_bytes": tokenizer_train_bytes,
            "options": tokenizer_kwargs,
        }
        folder = root / "tokenizers" / _hash(ident)
        if not (folder / TOKENIZER_FILE).is_file():
            logger.info("training a %s tokenizer on %s into %s", tokenizer_name, data_cfg.name, folder)
            texts = training_texts(data_cfg, tokenizer_train_bytes)
            trained = build_tokenizer(tokenizer_name, texts, vocab_size, **tokenizer_kwargs)
            _build_atomically(folder.parent, folder, trained.save)
        tokenizer = load_tokenizer(folder)
    return tokenizer, prepare_tokens(data_cfg, tokenizer, root)


def _build_atomically(root: Path, final: Path, write: Callable[[Path], Any]) -> None:
    """``write`` into a fresh temporary folder under ``root``, then rename it to ``final``."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        write(tmp)
        if final.exists() and not any(final.iterdir()):
            final.rmdir()  # an empty leftover folder would block the rename
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            logger.info("%s was written by another process meanwhile; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_splits(data_cfg: DataConfig, tokenizer: Tokenizer, key: str, folder: Path) -> None:
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32)
    tokens, docs = {"train": 0, "val": 0}, {"train": 0, "val": 0}
    if data_cfg.val_split == "end":  # everything to train.bin first, the tail moves to val.bin below
        pairs = ((doc, False) for doc in iter_documents(data_cfg))
    else:
        pairs = split_documents(iter_documents(data_cfg), data_cfg.val_fraction, f"dataset {data_cfg.name!r}")
    with open(folder / "train.bin", "wb") as train_file, open(folder / "val.bin", "wb") as val_file:
        files = {"train": train_file, "val": val_file}
        while batch := list(itertools.islice(pairs, _ENCODE_BATCH)):
            encoded = tokenizer.encode_batch([doc for doc, _ in batch], add_eos=True)
            for split in ("train", "val"):
                seqs = [
                    ids for ids, (_, is_val) in zip(encoded, batch, strict=True) if is_val == (split == "val")
                ]
                arr = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype)
                files[split].write(arr.tobytes())
                tokens[split] += len(arr)
                docs[split] += len(seqs)
    if data_cfg.val_split == "end":
        tokens = _move_tail_to_val(folder, dtype, tokens["train"], data_cfg.val_fraction)
    tokenizer.save(folder)
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "key": key,
        "dtype": dtype.name,
        "train_tokens": tokens["train"],
        "val_tokens": tokens["val"],
        "train_documents": docs["train"],
        "val_documents": docs["val"],
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "dataset": dataset_identity(data_cfg),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def _move_tail_to_val(folder: Path, dtype: np.dtype, total: int, val_fraction: float) -> dict[str, int]:
    """nanoGPT's split: the last ``val_fraction`` of the token stream becomes val.bin."""
    n_val = max(1, int(total * val_fraction))
    if total - n_val < 2:
        raise ValueError(f"{total} tokens are too few to split off {val_fraction:.0%} for validation")
    train = np.fromfile(folder / "train.bin", dtype=dtype)
    train[total - n_val :].tofile(folder / "val.bin")
    train[: total - n_val].tofile(folder / "train.bin")
    return {"train": total - n_val, "val": n_val}


def _load_splits(folder: Path) -> TokenSplits:
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        lengths = {split: int(meta[f"{split}_tokens"]) for split in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"token cache {meta_path} is unreadable ({e}); delete {folder} to rebuild it") from e
    arrays = {}
    for split, n in lengths.items():
        path = folder / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            raise ValueError(
                f"token cache file {path} is missing or truncated; delete {folder} to rebuild it"
            )
        arrays[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    return TokenSplits(train=arrays["train"], val=arrays["val"], directory=folder, meta=meta)
