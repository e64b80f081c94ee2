"""chargen: character-level text generation with LSTM/GRU language models.

The public API is the handful of names below; they are imported lazily so
that ``import chargen`` (and ``chargen --help``) stays fast and does not pull
in torch until it is needed.
"""

from .errors import ChargenError
from .version import __version__

_LAZY = {
    "Sampler": ("chargen.generate.sampler", "Sampler"),
    "SampleOptions": ("chargen.config", "SampleOptions"),
    "train": ("chargen.training.trainer", "train"),
    "TrainConfig": ("chargen.config", "TrainConfig"),
    "ModelConfig": ("chargen.config", "ModelConfig"),
    "CharRNN": ("chargen.model.network", "CharRNN"),
    "prepare": ("chargen.data.prepared", "prepare"),
    "export": ("chargen.generate.export", "export"),
    "PreparedCorpus": ("chargen.data.prepared", "PreparedCorpus"),
    "CharVocab": ("chargen.data.vocab", "CharVocab"),
    "StatefulStreams": ("chargen.data.batches", "StatefulStreams"),
    "RandomWindows": ("chargen.data.batches", "RandomWindows"),
}

__all__ = ["ChargenError", "__version__", *_LAZY]  # noqa: PLE0604 - the lazy names are strings


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chargen' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
