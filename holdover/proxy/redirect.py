"""The plain-HTTP listener of a TLS gateway: every request is sent to HTTPS (308).

308 keeps the method and body (unlike 301/302), so a POST to http:// is retried as a
POST to https://.  The Host header names where to go; a request without one gets 400.
"""

from __future__ import annotations

import asyncio

import httptools

from .http1 import error_response


class RedirectToHttps(asyncio.Protocol):
    """Answers each request with ``308 Permanent Redirect`` to the same URL over HTTPS."""

    __slots__ = ("_host", "_https_port", "_url", "parser", "transport")

    def __init__(self, https_port: int) -> None:
        self._https_port = https_port
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._host: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(error_response(400))
            self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._host = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > 8192:
            raise ValueError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._host = value

    def on_message_complete(self) -> None:
        host = self._host
        if not host or any(c in host for c in b" /\\@"):
            self.transport.write(error_response(400))
            self.transport.close()
            return
        name = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
        if self._https_port != 443:
            name += b":%d" % self._https_port
        path = self._url if self._url.startswith(b"/") else b"/"
        location = b"https://" + name + path
        self.transport.write(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + location +
                             b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.close()
