"""``python -m chargen`` is the ``chargen`` command."""
from .cli import main

raise SystemExit(main())
