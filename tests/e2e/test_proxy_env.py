"""With HTTP(S)_PROXY pointing at a trap, every way the tests talk to a gateway still
reaches it directly, and the CLI does too (its bearer token must never go to a proxy).

The trap is a listener on a loopback port that counts the connections it gets; one
deliberately proxy-honouring client proves the variables really are in effect.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest
import websockets
from conftest import NO_PROXY, GatewayProcess, wait_for
from websockets.sync.client import connect as ws_connect

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
              "all_proxy")


class Trap:
    """A loopback listener standing in for a proxy: it records and drops connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self._t.join(5)


@pytest.fixture
def proxied_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trap]:
    trap = Trap()
    for name in PROXY_VARS:
        monkeypatch.setenv(name, f"http://127.0.0.1:{trap.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        yield trap
    finally:
        trap.close()


def test_requests_to_the_gateway_never_go_through_a_proxy(proxied_env: Trap,
                                                          gateway_factory) -> None:
    trap = proxied_env
    gw: GatewayProcess = gateway_factory(workers=1).wait_ready()  # inherits the variables
    base = f"http://127.0.0.1:{gw.port}"

    # The trap works: a client that honours the environment ends up there.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        # A fresh opener reads the environment now (urlopen keeps the first one it built).
        urllib.request.build_opener().open(base + "/echo", timeout=10)  # proxy-env-on-purpose
    wait_for(lambda: trap.hits == 1, what="the proxy-honouring client to reach the trap")

    # Every client the tests use goes straight to the gateway.
    code, _, body = gw.admin_request("GET", "/api/status")
    assert code == 200 and json.loads(body)["active"] == "v1"
    with NO_PROXY.open(base + "/echo", timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read())["path"] == "/echo"
    with ws_connect(f"ws://127.0.0.1:{gw.port}/ws", proxy=None, open_timeout=10) as ws:
        ws.send("sync")
        assert ws.recv(timeout=10).startswith("echo:sync:")

    async def async_clients() -> tuple[str, int]:
        async with websockets.connect(f"ws://127.0.0.1:{gw.port}/ws", proxy=None) as ws:
            await ws.send("async")
            echoed = await ws.recv()
        async with aiohttp.ClientSession() as http, http.get(base + "/echo") as r:
            return str(echoed), r.status
    echoed, aio_status = asyncio.run(async_clients())
    assert echoed.startswith("echo:async:") and aio_status == 200

    # The CLI talks to the admin side directly, whatever the environment says.
    r = gw.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["active"] == "v1"
    assert trap.hits == 1, "a request went to the proxy"
