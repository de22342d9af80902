"""Behind a TLS terminator or another proxy (``[gateway] trusted_proxies``), socket-free.

From a trusted peer, X-Forwarded-For/Forwarded are kept and extended, X-Forwarded-Proto
and -Host are believed, the client is the last address the proxies name, and an https
original scheme makes the exchange (so the pin cookie) secure.  From anyone else
nothing of it is believed, exactly as before.
"""

from __future__ import annotations

import ipaddress

from test_protocol import client, split_head, values

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))
RAW = (b"GET / HTTP/1.1\r\nHost: internal:8080\r\nX-Forwarded-For: 203.0.113.7, 10.1.2.3\r\n"
       b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
       b"Forwarded: for=203.0.113.7;proto=https\r\n\r\n")


def request(peer: tuple[str, int], raw: bytes = RAW) -> tuple[object, list]:
    g, c, _ = client(peer=peer, trusted=TRUSTED)
    c.data_received(raw)
    assert len(g.routed) == 1
    ex = g.routed[0]
    return ex, split_head(ex.head)[1]


def test_a_trusted_proxy_s_forwarding_is_kept_and_extended() -> None:
    ex, headers = request(("10.9.9.9", 4000))
    assert values(headers, b"X-Forwarded-For") == [b"203.0.113.7, 10.1.2.3, 10.9.9.9"]
    assert values(headers, b"X-Forwarded-Proto") == [b"https"]
    assert values(headers, b"X-Forwarded-Host") == [b"shop.example"]
    assert values(headers, b"Forwarded") == [
        b'for=203.0.113.7;proto=https, for=10.9.9.9;proto=https;host="shop.example"']
    assert ex.secure, "https before the proxy: the pin cookie is Secure"
    assert ex.client == b"203.0.113.7", "the client is the last address not a proxy"


def test_anyone_else_s_forwarding_is_replaced() -> None:
    ex, headers = request(("198.51.100.4", 4000))
    assert values(headers, b"X-Forwarded-For") == [b"198.51.100.4"]
    assert values(headers, b"X-Forwarded-Proto") == [b"http"]
    assert values(headers, b"X-Forwarded-Host") == [b"internal:8080"]
    assert not ex.secure and ex.client is None


def test_a_malformed_forwarded_scheme_or_host_is_not_believed() -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: gopher\r\n"
           b"X-Forwarded-Host: evil.com/x?y\r\n\r\n")
    ex, headers = request(("127.0.0.1", 4000), raw)
    assert values(headers, b"X-Forwarded-Proto") == [b"http"] and not ex.secure
    assert values(headers, b"X-Forwarded-Host") == [b"h"]
    assert values(headers, b"X-Forwarded-For") == [b"127.0.0.1"]
    assert ex.client is None, "no X-Forwarded-For: the proxy is the client"


def test_over_tls_every_exchange_is_secure() -> None:
    g, c, _ = client(proto=b"https", tls=True)
    c.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert g.routed[0].secure
