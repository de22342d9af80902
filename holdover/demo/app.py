"""A small sample app with in-memory state, run as holdover's demo worker.

Stdlib only, so the demo works on a fresh machine.  Each visitor gets a session cookie
and a counter kept in this process's memory: exactly the kind of state a plain rolling
restart loses and holdover keeps.  Every page shows the revision and worker serving it.
"""

from __future__ import annotations

import argparse
import html
import os
import secrets
import signal
import threading
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REVISION = os.environ.get("HOLDOVER_REVISION", "dev")
WORKER = os.environ.get("HOLDOVER_WORKER", "local")
SESSIONS: dict[str, int] = {}
LOCK = threading.Lock()

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>holdover demo</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;color:#222}}
.rev{{display:inline-block;padding:.2em .6em;border-radius:.4em;background:#2b6cb0;color:#fff}}
</style></head><body><h1>holdover demo <span class="rev">revision {rev}</span></h1>
<p>Served by worker <b>{worker}</b> (pid {pid}).</p>
<p>Your visits in this worker's memory: <b id="count">{count}</b></p>
<form method="post" action="/logout"><button>Forget me</button></form></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "holdover-demo"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _session(self) -> str | None:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        sid = cookie["session"].value if "session" in cookie else None
        return sid if sid in SESSIONS else None

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain", {})
            return
        headers = {}
        with LOCK:
            sid = self._session()
            if sid is None:
                sid = secrets.token_urlsafe(16)
                SESSIONS[sid] = 0
                headers["Set-Cookie"] = f"session={sid}; Path=/; HttpOnly; SameSite=Lax"
            SESSIONS[sid] += 1
            count = SESSIONS[sid]
        page = PAGE.format(rev=html.escape(REVISION), worker=html.escape(WORKER),
                           pid=os.getpid(), count=count)
        self._send(200, page.encode(), "text/html; charset=utf-8", headers)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with LOCK:
            sid = self._session()
            if sid is not None:
                del SESSIONS[sid]
        self._send(303, b"", "text/plain", {
            "Location": "/", "Set-Cookie": "session=; Path=/; Max-Age=0"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
