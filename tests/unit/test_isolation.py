"""Unit tests cannot open a socket or start a process (the guard in tests/isolation.py).

Each check attempts the forbidden thing in a harmless form, so that if the guard ever
stopped working the attempt would succeed and the test would fail.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import subprocess
import sys

import pytest
import uvloop
from isolation import IsolationError


@pytest.fixture(scope="module")
def module_fixture_attempt() -> str:
    """A module-scoped fixture is set up under the guard too."""
    try:
        socket.socket().close()
    except IsolationError as exc:
        return str(exc)
    return "opened a socket"


def test_module_scoped_fixtures_are_guarded(module_fixture_attempt: str) -> None:
    assert "must not open a socket" in module_fixture_attempt


def test_no_socket() -> None:
    with pytest.raises(IsolationError, match="tests/e2e"):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    with pytest.raises(IsolationError):
        socket.create_connection(("127.0.0.1", 9)).close()
    with pytest.raises(IsolationError):
        socket.create_server(("127.0.0.1", 0)).close()


def test_a_socket_taken_before_the_guard_cannot_connect() -> None:
    a, b = socket.socketpair()  # allowed: an in-process pipe, as an event loop uses
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"
        with pytest.raises(IsolationError):
            a.connect(("127.0.0.1", 9))


def test_no_process() -> None:
    with pytest.raises(IsolationError, match="tests/e2e"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(IsolationError):
        subprocess.Popen([sys.executable, "-c", "pass"]).wait()
    proc = multiprocessing.Process(target=int)
    with pytest.raises(IsolationError):
        proc.start()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_no_socket_or_process_from_an_event_loop(loop_factory) -> None:  # type: ignore[no-untyped-def]
    async def attempts() -> list[str]:
        refused = []
        loop = asyncio.get_running_loop()
        for name, start in [
            ("server", lambda: loop.create_server(asyncio.Protocol, "127.0.0.1", 0)),
            ("connection", lambda: loop.create_connection(asyncio.Protocol, "127.0.0.1", 9)),
            ("open_connection", lambda: asyncio.open_connection("127.0.0.1", 9)),
            ("subprocess", lambda: asyncio.create_subprocess_exec(sys.executable, "-c", "")),
        ]:
            try:
                made = await start()
            except IsolationError:
                refused.append(name)
            else:  # the guard failed: clean up what was made, then report it
                for part in made if isinstance(made, tuple) else (made,):
                    for close in ("close", "kill"):
                        if hasattr(part, close):
                            getattr(part, close)()
        return refused

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        refused = runner.run(attempts())
    assert refused == ["server", "connection", "open_connection", "subprocess"]
