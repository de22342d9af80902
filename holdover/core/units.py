"""Durations and sizes as people write them in a configuration file: ``30s``, ``10MiB``.

Pure parsers with no I/O, so that every layer can read the same units the same way;
holdover/config.py's settings table uses them (and re-exports them under its own name).
"""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {
    None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
    "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``30s``, ``5m``, ``250ms``, ``1h``, ``2d`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\", \"5m\" or \"250ms\"")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(
                f"expected a duration like \"30s\", \"5m\" or \"250ms\", got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite duration >= 0, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``64KiB``, ``10MiB``, ``1GiB``, ``500kb`` or a bare integer."""
    if isinstance(value, bool):
        raise ValueError("expected a size like \"64KiB\" or \"10MiB\"")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"expected a size like \"64KiB\" or \"10MiB\", got {value!r}")
        unit = m.group(2).lower() if m.group(2) else None
        n = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if n < 0:
        raise ValueError("expected a size >= 0")
    return n
