"""``python -m zoo`` is the ``zoo`` command (also what torchrun runs)."""
from .cli import main

raise SystemExit(main())
