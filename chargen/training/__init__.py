"""Training a run: ``launch`` (``open_run``: options checked, folder locked, corpus prepared, the run
created or reopened), ``trainer`` (``train`` and the loop) and ``distributed`` (torchrun/DDP)."""
