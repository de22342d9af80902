"""``python -m holdover`` is the ``holdover`` command."""

from .cli import main

raise SystemExit(main())
