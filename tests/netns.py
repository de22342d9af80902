"""Several hosts on one machine, for tests of what crosses a network: network namespaces.

``Lab`` makes one namespace per host, plus a hub namespace holding a bridge; each host
is joined to the bridge by a veth pair and gets an address on a private /24 that
exists only inside these namespaces (nothing reaches the machine's real network).
Processes run inside a host with ``ip netns exec``.  ``partition(a, b)`` makes every
packet from ``b`` to ``a`` vanish (a blackhole route in ``b``): ``a``'s connections to
``b`` then hang, as over a real partition, instead of failing at once; ``heal`` undoes
it.  ``close`` stops every process the lab started and deletes every namespace and
link, and runs even when the test fails.

Creating namespaces needs root (CAP_NET_ADMIN) and iproute2; ``needs_netns`` says
whether this machine can (tests/skippolicy.py decides whether a skip is allowed).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None when it can."""
    if shutil.which("ip") is None:
        return "iproute2 (the ip command) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = f"hoprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns add failed: {getattr(exc, 'stderr', b'') or exc}"
    with contextlib.suppress(subprocess.CalledProcessError, OSError):
        _ip("netns", "del", name)
    return None


class Host:
    """One namespace: its name, its address on the lab's network, and how to run in it."""

    def __init__(self, lab: Lab, name: str, ns: str, address: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.address = address

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run inside this host."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: Sequence[str], timeout: float = 60, **kw: object
            ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside this host to its end."""
        return subprocess.run(self.argv(cmd), capture_output=True, text=True,
                              timeout=timeout, **kw)  # type: ignore[call-overload]

    def popen(self, cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside this host; the lab stops it at the latest when it closes."""
        proc = subprocess.Popen(self.argv(cmd), start_new_session=True,
                                **kw)  # type: ignore[call-overload]
        self.lab.processes.append(proc)
        return proc


class Lab:
    """Hosts in namespaces on one bridge: ``Lab(["redis", "a", "b"])``, then ``close()``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.tag = secrets.token_hex(3)  # names unique to this lab: tests may run at once
        self.subnet = f"10.{200 + int(self.tag[:2], 16) % 50}.{int(self.tag[2:4], 16)}"
        self.hub = f"hohub{self.tag}"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        try:
            self._add_ns(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, name in enumerate(names, start=1):
                self._add_host(name, i)
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _add_host(self, name: str, i: int) -> None:
        ns = f"ho{self.tag}{i}"
        self._add_ns(ns)
        inside, outside = f"eth{i}", f"v{self.tag}{i}"
        _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", outside,
            "netns", self.hub)
        _ip("-n", self.hub, "link", "set", outside, "master", "br0", "up")
        address = f"{self.subnet}.{i}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        self.hosts[name] = Host(self, name, ns, address)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def partition(self, a: str, b: str) -> None:
        """Nothing ``b`` sends reaches ``a`` any more, so ``a`` hears nothing from ``b``."""
        _ip("-n", self.hosts[b].ns, "route", "add", "blackhole",
            f"{self.hosts[a].address}/32")

    def heal(self, a: str, b: str) -> None:
        """Undo ``partition(a, b)``."""
        _ip("-n", self.hosts[b].ns, "route", "del", "blackhole",
            f"{self.hosts[a].address}/32")

    def close(self) -> None:
        """Stop every process the lab started, then delete its namespaces (and links)."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for ns in reversed(self._namespaces):
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _ip("netns", "del", ns)
        self._namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def netns_names() -> set[str]:
    """The namespaces that exist now (for a test that checks nothing is left behind)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


__all__ = ["Host", "Lab", "netns_names", "netns_unavailable"]
