"""The network-namespace lab (tests/netns.py) itself: hosts reach each other over the
bridge, a partition makes one side hear nothing (a hang, not a refusal), healing
restores it, and closing leaves no namespace behind.

The cluster's partition test relies on exactly these properties, so they are checked
on their own first, with a real redis-server as the far side.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import wait_for
from netns import Lab, netns_names, netns_unavailable
from redisserver import redis_server_binary

PING = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.settimeout(float(sys.argv[3]))
    s.sendall(b"PING\\r\\n")
    print(s.recv(100).decode().strip())
except TimeoutError:
    print("timeout")
except OSError as e:
    print("error", e)
"""


@pytest.fixture(scope="module", autouse=True)
def _netns_possible() -> None:
    why = netns_unavailable()
    if why is not None:
        pytest.fail(f"network namespace tests need root and iproute2: {why}", pytrace=False)


def _ping(lab: Lab, host: str, address: str, timeout: float = 2.0) -> str:
    return lab[host].run([sys.executable, "-c", PING, address, "6379", str(timeout)],
                         timeout=timeout * 3 + 10).stdout.strip()


def test_hosts_reach_each_other_until_partitioned_and_again_when_healed(tmp_path) -> None:
    before = netns_names()
    with Lab(["redis", "a", "b"]) as lab:
        made = netns_names() - before
        assert len(made) == 4, made  # a hub and three hosts
        r = lab["redis"]
        proc = r.popen([redis_server_binary(), "--bind", r.address, "--port", "6379",
                        "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
                        "--protected-mode", "no"], stdout=subprocess.DEVNULL)
        wait_for(lambda: _ping(lab, "a", r.address) == "+PONG", timeout=20,
                 what="redis reachable from host a")
        assert _ping(lab, "b", r.address) == "+PONG"
        lab.partition("a", "redis")
        # a's packets arrive, nothing comes back: a connection hangs, as over a real cut.
        assert _ping(lab, "a", r.address, timeout=1.0) == "timeout"
        assert _ping(lab, "b", r.address) == "+PONG", "only a is cut off"
        lab.heal("a", "redis")
        assert _ping(lab, "a", r.address) == "+PONG"
        assert proc.poll() is None
    assert proc.poll() is not None, "the lab stopped what it started"
    assert netns_names() == before, "no namespace left behind"
