"""A run's corpus: what its config.json records of it, and finding the same text again.

``config.json`` keeps the corpus's fingerprint, the source as it was asked for
and the folder it was asked from; a resume or ``chargen eval`` reads the ids
straight from the cache by that fingerprint, or prepares the source again and
refuses it unless it is the same text.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from ..config import Options
from ..data.prepared import PreparedCorpus, cached, prepare
from ..errors import ChargenError
from .folder import RunFolder


def corpus_summary(corpus: PreparedCorpus, opts: Options) -> dict:
    """What a run's config.json says of its corpus: enough to find and check the same text again."""
    summary = {
        **corpus.summary(),
        "prepare": dict(opts.prepare),
        "requested_source": None if opts.source is None else str(opts.source),
        "working_folder": os.getcwd(),
    }  # what a relative source was relative to
    summary.pop("cache_dir", None)
    summary.pop("reused", None)
    return summary


def run_corpus(
    folder: RunFolder,
    source: str | os.PathLike[str] | None = None,
    *,
    from_cache: bool = True,
    corpora_dirs: Sequence[str | os.PathLike[str]] = (),
    cache_dir: str | os.PathLike[str] | None = None,
) -> PreparedCorpus:
    """The prepared corpus a run was trained on: with ``from_cache``, straight from the cache by its
    fingerprint (the source is not read); else, or when the cache no longer holds it, prepared again
    from ``source`` (default: the source the run was created with) and checked to be the same text."""
    stored = folder.config["corpus"]
    corpus = cached(stored["fingerprint"], cache_dir) if from_cache and source is None else None
    if corpus is not None:
        corpus.meta["source"] = stored.get("source", corpus.meta["source"])  # as the run names it
    else:
        stored_source = _stored_source(stored)
        # a single file found again under another name is the same corpus: it keeps its name in the fingerprint
        name = Path(stored_source).name if source is not None and stored_source is not None else None
        corpus = prepare(
            source if source is not None else stored_source,
            corpora_dirs=corpora_dirs,
            cache_dir=cache_dir,
            file_name=name,
            **folder.prepare,
        )
        _check_same_corpus(stored, corpus)
    if folder.vocab.chars != corpus.vocab.chars:
        raise ChargenError(
            "the run's tokenizer.json differs from the corpus vocabulary; the run folder was "
            "changed by hand: start a new run"
        )
    return corpus


def _stored_source(stored: dict) -> str | None:
    """The source a run was created with; a relative path that is not here is taken from where it was."""
    source, where = stored.get("requested_source"), stored.get("working_folder")
    if source is None or where is None or os.path.isabs(os.path.expanduser(source)) or source.startswith("hf:"):
        return source
    here_exists = Path(source).exists() or bool(glob.has_magic(source) and glob.glob(source, recursive=True))
    there = os.path.join(where, source)
    if not here_exists and (Path(there).exists() or (glob.has_magic(source) and glob.glob(there, recursive=True))):
        return there
    return source


def _check_same_corpus(stored: dict, corpus: PreparedCorpus) -> None:
    if corpus.fingerprint != stored.get("fingerprint"):
        raise ChargenError(
            f"this corpus differs from the run's: the run was trained on {stored.get('source')} "
            f"({stored.get('chars'):,} characters, fingerprint {str(stored.get('fingerprint'))[:12]}), this is "
            f"{corpus.meta['source']} ({corpus.meta['chars']:,} characters, fingerprint {corpus.fingerprint[:12]}); "
            "pass the text the run was trained on, or start a new run"
        )
