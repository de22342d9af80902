"""Importing the middlewares pulls in no web framework (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_no_framework_is_imported_with_the_middlewares() -> None:
    code = ("import sys, holdover.middleware.wsgi, holdover.middleware.asgi, "
            "holdover.middleware.django; "
            "print(sorted(m for m in ('flask', 'django', 'starlette', 'fastapi', 'asgiref', "
            "'werkzeug') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
