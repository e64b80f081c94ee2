"""The run folder: ``folder`` (layout, validation, format version, the lock), ``checkpoint``
(weights, optimizer state, ``last/``), ``replace`` (``--overwrite``'s staged move), ``metrics``
(``metrics.jsonl``, the meter and progress bar), ``info`` and ``plot`` (a run summarized and drawn).
Nothing is imported eagerly: ``folder`` and ``info`` never need torch."""
