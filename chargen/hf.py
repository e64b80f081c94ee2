"""Hugging Face dataset sources: ``hf:NAME`` (a hub name) or ``hf:path`` (local files).

Local ``.jsonl``/``.json``/``.csv``/``.parquet`` files (or a folder of them)
are loaded through ``datasets`` with the matching builder; the text is in
``--text-column``. ``datasets`` is imported only here, only when needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .corpus import Source
from .errors import ChargenError

HF_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def hf_source(name: str, text_column: str) -> Source:
    if not name:
        raise ChargenError("hf: needs a dataset name or local files, e.g. hf:data/train.jsonl")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in HF_EXTENSIONS and p.is_file())
            if not files:
                raise ChargenError(f"folder {name} holds no {'/'.join(HF_EXTENSIONS)} files")
        else:
            files = [path]
        builders = {HF_EXTENSIONS.get(p.suffix) for p in files}
        if None in builders or len(builders) != 1:
            raise ChargenError(f"hf:{name}: local datasets must be all .jsonl/.json, all .csv or "
                               "all .parquet files")
        builder = builders.pop()

        def load():
            return _hf_load(builder, name, data_files=[str(p) for p in files])
        root = path if path.is_dir() else path.parent
        src = Source(name=f"hf:{name}", kind="hf", files=files, root=root,
                     hf_identity=f"{builder}:{text_column}")
    else:
        def load():
            return _hf_load(name, name)
        src = Source(name=f"hf:{name}", kind="hf", hf_identity=f"hub:{name}:{text_column}")

    def documents(_encoding: str) -> Iterator[str]:
        ds = load()
        if text_column not in ds.column_names:
            raise ChargenError(f"hf:{name} has no column {text_column!r} (columns: "
                               f"{', '.join(ds.column_names)}); pass --text-column COL")
        for batch in ds.iter(batch_size=1024):
            for value in batch[text_column]:
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise ChargenError(f"hf:{name}: column {text_column!r} holds "
                                       f"{type(value).__name__} values, not text; pass --text-column COL")
                yield value

    src.hf_documents = documents
    if not src.files:
        # A hub dataset is identified by the fingerprint datasets gives its files.
        src.hf_identity += ":" + str(getattr(load(), "_fingerprint", ""))
    return src


def _hf_load(builder: str, name: str, data_files=None):
    try:
        import datasets  # heavy: imported only when an hf: source is used
    except ImportError:
        raise ChargenError("hf: sources need the 'datasets' package; pip install datasets") from None
    datasets.disable_progress_bars()
    try:
        if data_files is not None:
            return datasets.load_dataset(builder, data_files=data_files, split="train")
        return datasets.load_dataset(builder, split="train")
    except ChargenError:
        raise
    except Exception as e:  # datasets raises many types; all mean "could not load"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChargenError(f"could not load Hugging Face dataset {name}: {first}; "
                           "check the name, or use local files (hf:path/to/data.jsonl)") from None
