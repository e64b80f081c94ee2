"""Training a run: ``launch`` (``open_run``: options checked, folder locked, corpus prepared, the run
created or reopened; with ``claim`` for a new run's folder and ``finetune`` for ``--init-from``),
``trainer`` (``train`` and the loop), ``budget`` (when to stop, the learning rate), ``evaluation``,
``checkpointing`` (``last/`` and the best weights) and ``distributed`` (torchrun/DDP)."""
