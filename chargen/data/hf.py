"""Hugging Face dataset sources: ``hf:NAME`` (a hub name) or ``hf:path`` (local files).

Local ``.jsonl``/``.json``/``.csv``/``.parquet`` files (or a folder of them)
are loaded through ``datasets`` with the matching builder; the text is in
``--text-column``. ``datasets`` is imported only here, only when needed.
chargen requires ``datasets`` 4 or later, which never runs a dataset's
loading script (older releases could execute code from the hub). With
``CHARGEN_OFFLINE`` set, hub names are refused and ``datasets`` is told to
stay offline too.

This module hands back an :class:`HFDataset`: its documents and the identity
that goes into the corpus fingerprint. It knows nothing of the other source
kinds (``corpus.py`` wraps it like any other source).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChargenError
from ..files import file_sha256
from .registry import downloads_off

if TYPE_CHECKING:
    from datasets import Dataset

HF_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class HFDataset:
    """A dataset's documents (text values in order) and its fingerprint identity."""

    name: str
    documents: Callable[[], Iterator[str]]
    identity: Callable[[], list]
    files: list[Path] = field(default_factory=list)  # local files; empty for a hub dataset


def hf_dataset(name: str, text_column: str) -> HFDataset:
    """Resolve ``hf:NAME``: local files when ``NAME`` is a path, else a hub dataset."""
    if not name:
        raise ChargenError("hf: needs a dataset name or local files, e.g. hf:data/train.jsonl")
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~user" of no such user: a hub name, then
        path = Path(name)
    if path.exists():
        return _local_dataset(name, path, text_column)
    if downloads_off():
        raise ChargenError(
            f"hf:{name} is not a local path, and a hub dataset needs the network, but downloads "
            "are off (CHARGEN_OFFLINE); use local files (hf:path/to/data.jsonl) or unset it"
        )

    def load() -> Dataset:
        return _hf_load(name, name)

    # A hub dataset is identified by the fingerprint ``datasets`` gives its files. That is a
    # private attribute (``Dataset._fingerprint``); without it the identity is the name alone,
    # so a changed hub dataset would reuse a stale cache rather than fail.
    identity = ["hf", f"hub:{name}:{text_column}:{getattr(load(), '_fingerprint', '')}"]
    return HFDataset(f"hf:{name}", lambda: _texts(load(), name, text_column), lambda: identity)


def _local_dataset(name: str, path: Path, text_column: str) -> HFDataset:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in HF_EXTENSIONS and p.is_file())
        if not files:
            raise ChargenError(f"folder {name} holds no {'/'.join(HF_EXTENSIONS)} files")
    else:
        files = [path]
    builders = {HF_EXTENSIONS.get(p.suffix) for p in files}
    if None in builders or len(builders) != 1:
        raise ChargenError(f"hf:{name}: local datasets must be all .jsonl/.json, all .csv or all .parquet files")
    builder = builders.pop()
    assert builder is not None  # a file of no known type was refused above
    root = path if path.is_dir() else path.parent

    def identity() -> list:
        return ["hf", *([p.relative_to(root).as_posix(), file_sha256(p)] for p in files), f"{builder}:{text_column}"]

    def documents() -> Iterator[str]:
        ds = _hf_load(builder, name, data_files=[str(p) for p in files])
        return _texts(ds, name, text_column)

    return HFDataset(f"hf:{name}", documents, identity, files)


def _texts(ds: Dataset, name: str, text_column: str) -> Iterator[str]:
    if text_column not in ds.column_names:
        raise ChargenError(
            f"hf:{name} has no column {text_column!r} (columns: {', '.join(ds.column_names)}); pass --text-column COL"
        )
    for batch in ds.iter(batch_size=1024):
        for value in batch[text_column]:
            if value is None:
                continue
            if not isinstance(value, str):
                raise ChargenError(
                    f"hf:{name}: column {text_column!r} holds "
                    f"{type(value).__name__} values, not text; pass --text-column COL"
                )
            if "\x00" in value:  # as for files: NUL is binary data, not text
                raise ChargenError(
                    f"hf:{name}: column {text_column!r} holds NUL characters (binary data?); pass a text column"
                )
            yield value


def _hf_load(builder: str, name: str, data_files: list[str] | None = None) -> Dataset:
    if downloads_off():  # local files only: datasets must not reach for the hub either
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets  # heavy: imported only when an hf: source is used
    except ImportError:
        raise ChargenError(
            "hf: sources need the 'datasets' package: pip install \"chargen[train]\" (or datasets)"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # its own failure messages would add lines to chargen's one
    try:
        if data_files is not None:
            return datasets.load_dataset(builder, data_files=data_files, split="train")
        return datasets.load_dataset(builder, split="train")
    except ChargenError:
        raise
    except Exception as e:  # datasets raises many types; all mean "could not load"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChargenError(
            f"could not load Hugging Face dataset {name}: {first}; "
            "check the name, or use local files (hf:path/to/data.jsonl)"
        ) from None
