"""Finding a revision's external workers in DNS: SRV records, or A/AAAA and a port.

Orchestrators publish their processes in DNS — a Kubernetes headless Service, Consul's
``NAME.service.consul`` with SRV records, a zone an operator keeps for systemd units on
several hosts — so ``discover`` asks DNS, with dnspython's asyncio resolver: it queries
the servers of ``dns_servers`` (each with its own port) or those of the system's
resolv.conf, speaks to the event loop without a thread, parses SRV answers into
targets and ports, and says why a query failed.  Answers are never cached here: each
``discover_interval`` asks again, so a removed record is seen at once.

Anything short of at least one address is a ``DiscoveryError`` carrying the reason, so
the caller can keep the last known set instead of emptying a revision.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

from ..core.discovery import Discover, Target


class DiscoveryError(Exception):
    """DNS did not name a single worker; the message says what it answered instead."""


class Resolver:
    """Resolves ``discover`` names against ``servers`` (empty: the system's resolver)."""

    def __init__(self, servers: Sequence[tuple[str, int]] = (), timeout: float = 3.0) -> None:
        self.servers = tuple(servers)
        self.timeout = timeout
        self._resolver: Any = None

    def _get(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver
            import dns.nameserver
            import dns.resolver

            try:
                r = dns.asyncresolver.Resolver(configure=not self.servers)
            except dns.resolver.NoResolverConfiguration as exc:
                raise DiscoveryError(f"no system resolver to ask ({exc}); set dns_servers"
                                     ) from None
            if self.servers:
                r.nameservers = [dns.nameserver.Do53Nameserver(ip, port)
                                 for ip, port in self.servers]
            r.timeout = self.timeout
            r.lifetime = self.timeout
            r.cache = None
            self._resolver = r
        return self._resolver

    async def _query(self, name: str, rdtype: str) -> Any:
        """The answer to one query, None when the name has no such record."""
        import dns.exception
        import dns.resolver

        try:
            return await self._get().resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NoNameservers as exc:
            raise DiscoveryError(f"{rdtype} {name}: no server answered ({exc})") from None
        except dns.exception.Timeout:
            raise DiscoveryError(f"{rdtype} {name}: no answer within {self.timeout:g}s "
                                 f"from {self._where()}") from None
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"{rdtype} {name}: {exc}") from None

    def _where(self) -> str:
        return ", ".join(f"{ip}:{port}" for ip, port in self.servers) or "the system resolver"

    async def addresses(self, name: str, extra: dict[str, set[str]] | None = None
                        ) -> set[str]:
        """The A and AAAA addresses of ``name`` (an IP literal is its own address)."""
        try:
            return {str(ipaddress.ip_address(name))}
        except ValueError:
            pass
        if extra and extra.get(name.lower()):
            return set(extra[name.lower()])
        out: set[str] = set()
        for answer in await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA")):
            if answer is not None:
                out.update(rr.address for rr in answer)
        return out

    async def resolve(self, d: Discover, name: str) -> set[Target]:
        """The workers DNS names for ``name`` now; DiscoveryError when it names none."""
        if not d.srv:
            found = {Target(a, d.port) for a in await self.addresses(name)}
            if not found:
                raise DiscoveryError(f"{name} has no A or AAAA record (asked "
                                     f"{self._where()})")
            return found
        answer = await self._query(name, "SRV")
        if answer is None:
            raise DiscoveryError(f"{name} has no SRV record (asked {self._where()})")
        # Servers usually send the targets' addresses along (the additional section).
        extra: dict[str, set[str]] = {}
        for rrset in answer.response.additional:
            for rr in rrset:
                if hasattr(rr, "address"):
                    extra.setdefault(rrset.name.to_text(omit_final_dot=True).lower(),
                                     set()).add(rr.address)
        records = [(rr.target.to_text(omit_final_dot=True), rr.port) for rr in answer
                   if rr.target.to_text() != "."]  # "." = the service is not offered
        found: set[Target] = set()
        for (host, port), addrs in zip(records, await asyncio.gather(
                *(self.addresses(h, extra) for h, _ in records)), strict=True):
            if not addrs:
                raise DiscoveryError(f"SRV {name}: target {host} has no A or AAAA record")
            found.update(Target(a, port) for a in addrs)
        if not found:
            raise DiscoveryError(f"SRV {name} names no target")
        return found
