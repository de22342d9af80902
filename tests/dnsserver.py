"""A real DNS server for the external-worker tests: Debian's dnsmasq on a free loopback port.

The tests play the engine that runs the workers (Kubernetes, Nomad …): they start app
processes on their own loopback addresses and publish them here, as A records and SRV
records, then change what is published while the gateway runs.  dnsmasq re-reads its
``--addn-hosts`` file on SIGHUP (A records), but not its ``--srv-host`` options, so a
change of SRV records restarts it on the same port (``publish`` does whichever is
needed).  It serves only the names given (``--no-resolv``, ``--no-hosts``, ``--local``
for the test zone: anything else is NXDOMAIN, nothing is forwarded) and stays root
(``--user=root``) so that it can read its files in the test's private folder.

``publish`` returns only once the server answers with the new records, asked with
dnspython, so a test never races its own DNS change.  A missing dnsmasq fails the test:
scripts/test.sh installs it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ZONE = "holdover.test"


def dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if Path(p).exists()), None)
    if found is None:
        pytest.fail("dnsmasq is not installed: the external-worker tests need Debian's "
                    "dnsmasq-base package (scripts/test.sh installs it)", pytrace=False)
    return found


def free_udp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class DnsServer:
    """One dnsmasq child serving A records (``hosts``) and SRV records (``srv``)."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.hosts_file = dir / "hosts"
        self.log = dir / "dnsmasq.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.hosts: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[str, int]]] = {}

    @property
    def server(self) -> str:
        """The ``dns_servers`` entry that names this server."""
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        cmd = [dnsmasq_binary(), "--keep-in-foreground", "--conf-file=/dev/null",
               "--no-resolv", "--no-hosts", "--no-poll", f"--local=/{ZONE}/",
               "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}",
               "--user=root", "--pid-file=", "--cache-size=0", "--local-ttl=0",
               f"--addn-hosts={self.hosts_file}", f"--log-facility={self.log}",
               "--log-queries"]
        for name, targets in self.srv.items():
            for prio, (target, port) in enumerate(targets):
                cmd.append(f"--srv-host={name},{target},{port},{prio}")
        return cmd

    def _write_hosts(self) -> None:
        lines = [f"{ip} {name}" for name, ips in self.hosts.items() for ip in ips]
        self.hosts_file.write_text("\n".join(lines) + "\n")

    def start(self) -> DnsServer:
        """Start it (on the port it had, if any) and wait until it answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        if not self.port:
            self.port = free_udp_port()
        self.proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.wait_answers()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def publish(self, hosts: Mapping[str, Sequence[str]] | None = None,
                srv: Mapping[str, Sequence[tuple[str, int]]] | None = None) -> None:
        """Serve these records from now on (names left out keep theirs)."""
        restart = False
        if hosts is not None:
            self.hosts.update({k: list(v) for k, v in hosts.items()})
            self._write_hosts()
        if srv is not None:
            new = {**self.srv, **{k: list(v) for k, v in srv.items()}}
            restart = new != self.srv
            self.srv = new
        if self.proc is None:
            return
        if restart:
            self.stop()
            self.start()
        else:
            self.proc.send_signal(signal.SIGHUP)  # re-reads --addn-hosts
            self.wait_answers()

    # -- asking it, as the gateway will ----------------------------------------------

    def ask(self, name: str, rdtype: str) -> set[str]:
        """What it answers for ``name`` now: addresses, or ``target:port`` for SRV."""
        import dns.exception
        import dns.resolver

        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.lifetime = 2.0
        try:
            answer = r.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return set()
        except dns.exception.DNSException:
            return {"<no answer>"}
        if rdtype == "SRV":
            return {f"{rr.target.to_text(omit_final_dot=True)}:{rr.port}" for rr in answer}
        return {rr.address for rr in answer}

    def wait_answers(self, timeout: float = 15.0) -> None:
        """Until every published record is what the server answers (or fail)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                raise AssertionError(f"dnsmasq exited with {self.proc.returncode}: {err}")
            want = [(n, "A", set(ips)) for n, ips in self.hosts.items()] + [
                (n, "SRV", {f"{t}:{p}" for t, p in ts}) for n, ts in self.srv.items()]
            if all(self.ask(n, t) == v for n, t, v in want) and \
                    (want or self.ask(f"nothing.{ZONE}", "A") == set()):
                return
            if time.monotonic() > deadline:
                got = {n: self.ask(n, t) for n, t, _ in want}
                raise AssertionError(f"dnsmasq does not answer what was published: {got}")
            time.sleep(0.05)

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
