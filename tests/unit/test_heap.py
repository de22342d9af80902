"""The proxy process's malloc tuning (holdover/proxy/heap.py)."""

from __future__ import annotations

import platform

from holdover.proxy import heap


def test_glibc_takes_the_thresholds() -> None:
    # mallopt answers 1 when it accepted a parameter; on glibc both must be accepted.
    assert platform.libc_ver()[0] == "glibc"
    assert heap.keep_freed_memory() is True


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch) -> None:
    class NoMallopt:
        def __init__(self, _name: object) -> None:
            pass

    monkeypatch.setattr(heap.ctypes, "CDLL", NoMallopt)
    assert heap.keep_freed_memory() is False
