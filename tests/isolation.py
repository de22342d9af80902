"""The guard that keeps tests/unit/ in-process: no network socket, no child process.

tests/conftest.py installs it around the setup, call and teardown of every test under
tests/unit/ (so module-scoped fixtures are covered too).  Each way a test could open a
socket or start a process raises ``IsolationError`` instead, so a test that quietly needs
the network or a worker fails at once rather than becoming slow or flaky; such a test
belongs in tests/e2e/.  A socket that wraps an existing descriptor stays allowed: that is
how ``socket.socketpair`` builds the in-process pipe an asyncio event loop wakes itself by.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import multiprocessing.process
import os
import socket
import subprocess
from collections.abc import Callable

import pytest
import uvloop


class IsolationError(AssertionError):
    """A unit test tried to open a socket or start a process."""


def _refuse(what: str) -> Callable[..., object]:
    def refuse(*_args: object, **_kw: object) -> object:
        raise IsolationError(f"a unit test must not {what}; move it to tests/e2e/")
    return refuse


_socket_init = socket.socket.__init__


def _guarded_socket_init(self: socket.socket, family: int = -1, type: int = -1,
                         proto: int = -1, fileno: int | None = None) -> None:
    if fileno is None:
        raise IsolationError("a unit test must not open a socket; move it to tests/e2e/")
    _socket_init(self, family, type, proto, fileno)


def install(mp: pytest.MonkeyPatch) -> None:
    """Make every socket- or process-opening entry point raise ``IsolationError``.

    Patched on the classes where possible (``socket.socket.__init__``,
    ``Popen._execute_child``, the event loop classes of asyncio and uvloop), so a reference
    taken at import time is caught as well.
    """
    mp.setattr(socket.socket, "__init__", _guarded_socket_init)
    for name in ("connect", "connect_ex", "bind"):
        mp.setattr(socket.socket, name, _refuse(f"call socket.{name}"))
    for name in ("create_connection", "create_server", "getaddrinfo"):
        mp.setattr(socket, name, _refuse(f"call socket.{name}"))
    for loop_cls in (asyncio.base_events.BaseEventLoop, uvloop.Loop):
        for name in ("create_connection", "create_server", "create_datagram_endpoint",
                     "create_unix_connection", "create_unix_server", "subprocess_exec",
                     "subprocess_shell", "getaddrinfo"):
            mp.setattr(loop_cls, name, _refuse(f"call loop.{name}"))
    for name in ("create_subprocess_exec", "create_subprocess_shell", "open_connection",
                 "start_server", "open_unix_connection", "start_unix_server"):
        mp.setattr(asyncio, name, _refuse(f"call asyncio.{name}"))
    mp.setattr(subprocess.Popen, "_execute_child", _refuse("start a process (subprocess)"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv",
                 "execve", "execvp", "execvpe"):
        if hasattr(os, name):
            mp.setattr(os, name, _refuse(f"call os.{name}"))
    mp.setattr(multiprocessing.process.BaseProcess, "start",
               _refuse("start a multiprocessing process"))
