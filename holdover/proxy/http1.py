"""HTTP/1.1 pieces of the proxy that need no socket: header rules, framing, error pages.

The parsing itself is done by httptools (llhttp, the parser of Node.js and uvicorn), which
already refuses most smuggling shapes (Content-Length with Transfer-Encoding, duplicate
or signed Content-Length, bad chunk sizes, obsolete line folding, bare CR/LF).  What is
left to us is deciding which headers travel to the other side, the extra rules llhttp
does not enforce, and the bytes of our own error answers.  Everything here is a pure
function over bytes so that it can be tested without a network.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

# Headers that describe one connection, never the message (RFC 9110 section 7.6.1), plus
# the framing headers the proxy rewrites itself.  Looked up by lower-cased name.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length",
})
# Client-supplied forwarding headers are replaced by ours, unless told to append.
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"forwarded"})

# The gateway's own header names (docs/session-protocol.md): a client's are dropped before
# the worker, an app's before the client, so that each side can trust that one of these
# came from holdover.  (X-Holdover-Session from the app is read, then dropped; only the
# peer listener of a cluster node reads X-Holdover-Peer.)
HOLDOVER_HEADERS = frozenset({b"x-holdover-session", b"x-holdover-revision",
                              b"x-holdover-latest", b"x-holdover-peer"})

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
NO_BODY_STATUSES = frozenset({204, 304})


class RequestRejected(Exception):
    """A request the gateway answers itself with ``status`` and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def status_for_parser_error(message: str) -> int:
    """Map an llhttp error message to the status a client should get."""
    m = message.lower()
    if "header overflow" in m or "headers overflow" in m:
        return 431
    if "uri" in m and "too" in m:
        return 414
    if "transfer-encoding" in m and "invalid" in m and "request has" in m:
        return 501
    return 400


def check_transfer_encoding(value: bytes) -> None:
    """Only a single ``chunked`` coding is forwarded; anything else is refused.

    llhttp accepts ``gzip, chunked``, but the proxy re-frames bodies and would have to
    forward the other codings untouched; a proxy that half-understands a coding is how
    smuggling starts, so such requests get 501 as RFC 9112 section 6.1 allows.
    """
    if value.strip().lower() != b"chunked":
        raise RequestRejected(501, "unsupported Transfer-Encoding")


# What a Host value may hold besides letters and digits (RFC 3986 reg-name: unreserved,
# sub-delims, pct-encoded; ":" for the port; "[", "]" around an IPv6 literal).
_HOST_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               b"-._~!$&'()*+,;=%:[]")


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a ``host[:port]`` (RFC 9110 7.2); an empty one is not.

    One C-speed pass (``translate``) decides almost every value; the rest only for the
    rare ones with a ``:`` or ``[``."""
    if not value or value.translate(None, _HOST_CHARS):
        return False
    if value[0] == 0x5B:  # "[": an IP literal, then nothing or ":port"
        end = value.find(b"]")
        if end < 2 or b"[" in value[1:] or b"]" in value[end + 1:]:
            return False
        rest = value[end + 1:]
        return not rest or ((rest[0] == 0x3A and rest[1:].isdigit()) or rest == b":")
    if b"[" in value or b"]" in value:
        return False
    host, colon, port = value.rpartition(b":")
    if not colon:
        return True
    return bool(host) and b":" not in host and (not port or port.isdigit())


def declared_chunk_size(data: bytes, end: int) -> int | None:
    """The size on the chunk-size line that ends (with its CRLF) at ``data[end]``.

    llhttp has already accepted the line; this only reads its hex digits back, because
    httptools tells that a chunk header was parsed but not its size.  A line that began
    in an earlier packet reads as the digits this packet holds: never more than the size
    declared.  None when there is no such line here."""
    if end < 3 or data[end - 2:end] != b"\r\n":
        return None
    start = data.rfind(b"\n", 0, end - 2) + 1
    digits = data[start:end - 2].partition(b";")[0]
    try:
        return int(digits, 16)
    except ValueError:
        return None


def split_target(method: bytes, url: bytes) -> tuple[bytes | None, bytes]:
    """``(authority, path)`` of an absolute-form target (RFC 9112 3.2.2): the path in
    origin form, the authority to use as Host; ``(None, b"*")`` for ``OPTIONS *``."""
    if url == b"*" and method == b"OPTIONS":
        return None, url
    if method == b"CONNECT":
        raise RequestRejected(405, "CONNECT is not served by a reverse proxy")
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise RequestRejected(400, "malformed request target")
    authority, slash, path = rest.partition(b"/")
    if not authority or b"@" in authority:
        raise RequestRejected(400, "malformed request target")
    return authority, b"/" + path if slash else b"/"


def connection_tokens(value: bytes) -> set[bytes]:
    """The lower-cased tokens of a Connection header."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def forwarded_for_element(ip: str) -> bytes:
    """``for=`` element of RFC 7239: IPv6 addresses are bracketed and quoted."""
    if ":" in ip:
        return b'for="[' + ip.encode() + b']"'
    return b"for=" + ip.encode()


# Request headers that need more than passing through, by lower-cased name.  Codes below
# _H_HOST are dropped from what the worker receives (hop-by-hop, framing, forwarding, and
# the gateway's own X-Holdover-* names).
(_H_CONTENT_LENGTH, _H_TRANSFER_ENCODING, _H_CONNECTION, _H_UPGRADE, _H_XFF, _H_FORWARDED,
 _H_XFP, _H_XFH, _H_OTHER_DROPPED, _H_HOST, _H_COOKIE, _H_ACCEPT) = range(12)
_SPECIAL: dict[bytes, int] = {
    **{h: _H_OTHER_DROPPED for h in HOP_BY_HOP | FORWARDING | HOLDOVER_HEADERS},
    b"content-length": _H_CONTENT_LENGTH, b"transfer-encoding": _H_TRANSFER_ENCODING,
    b"connection": _H_CONNECTION, b"upgrade": _H_UPGRADE, b"x-forwarded-for": _H_XFF,
    b"forwarded": _H_FORWARDED, b"x-forwarded-proto": _H_XFP, b"x-forwarded-host": _H_XFH,
    b"host": _H_HOST, b"cookie": _H_COOKIE, b"accept": _H_ACCEPT,
}



def behind_proxy(proto: bytes, host: bytes | None, xfp: bytes | None, xfh: bytes | None,
                 xff: bytes | None, trusts: Callable[[str], bool]
                 ) -> tuple[bytes, bytes | None, bytes | None]:
    """``(scheme, host, client)`` of a request a trusted proxy forwarded.

    Its X-Forwarded-Proto and -Host are believed (their first value: the original
    client's; a malformed one is ignored), and the client is the last address of
    X-Forwarded-For that is not itself a trusted proxy (None if it names none)."""
    if xfp is not None:
        first = xfp.split(b",", 1)[0].strip().lower()
        if first in (b"http", b"https"):
            proto = first
    if xfh is not None:
        first = xfh.split(b",", 1)[0].strip()
        if first and valid_host(first):
            host = first
    client = None
    if xff is not None:
        for addr in reversed(xff.split(b",")):
            addr = addr.strip()
            if addr and not trusts(addr.decode("latin-1")):
                client = addr
                break
    return proto, host, client


def forwarded_headers(client_ip: bytes, forwarded_for: bytes, proto: bytes, host: bytes | None,
                      prior_xff: bytes | None = None, prior_fwd: bytes | None = None) -> bytes:
    """The X-Forwarded-* and Forwarded lines the worker receives."""
    xff = prior_xff + b", " + client_ip if prior_xff else client_ip
    element = forwarded_for + b";proto=" + proto
    if host:
        element += b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    fwd = prior_fwd + b", " + element if prior_fwd else element
    out = b"X-Forwarded-For: " + xff + b"\r\nX-Forwarded-Proto: " + proto + b"\r\n"
    if host:
        out += b"X-Forwarded-Host: " + host + b"\r\n"
    return out + b"Forwarded: " + fwd + b"\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

_ERROR_CACHE: dict[tuple[int, bool, bool, int], bytes] = {}


def wants_json(accept: bytes | None) -> bool:
    """Whether a client asked for JSON rather than a page."""
    return bool(accept) and b"json" in accept.lower() and b"html" not in accept.lower()


def error_response(status: int, json: bool = False, close: bool = True,
                   retry_after: int = 0) -> bytes:
    """A short, complete error answer: HTML for browsers, JSON for API clients."""
    key = (status, json, close, retry_after)
    cached = _ERROR_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    hint = {
        400: "The request was malformed.",
        405: "This method is not served through this gateway.",
        408: "The request was not received in time.",
        413: "The request body is larger than this gateway accepts.",
        414: "The request line is longer than this gateway accepts.",
        431: "The request headers are larger than this gateway accepts.",
        501: "This request uses a transfer coding the gateway does not support.",
        502: "The application did not give a valid answer.",
        503: "No application worker is available right now; please retry shortly.",
        504: "The application did not answer in time.",
    }.get(status, phrase)
    if json:
        body = b'{"error": {"status": %d, "message": "%b"}}\n' % (status, hint.encode())
        ctype = b"application/json"
    else:
        body = (b"<!doctype html><html><head><title>%d %b</title></head><body><h1>%d %b</h1>"
                b"<p>%b</p><hr><p>holdover</p></body></html>\n"
                % (status, phrase.encode(), status, phrase.encode(), hint.encode()))
        ctype = b"text/html; charset=utf-8"
    head = (b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n" % (status, phrase.encode(), ctype, len(body)))
    if retry_after:
        head += b"Retry-After: %d\r\n" % retry_after
    head += b"Connection: close\r\n" if close else b""
    out = head + b"\r\n" + body
    _ERROR_CACHE[key] = out
    return out


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """The status line sent to clients (always HTTP/1.1), cached per status and reason."""
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        if not reason:
            try:
                reason = HTTPStatus(status).phrase.encode()
            except ValueError:
                reason = b"Unknown"
        line = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line
