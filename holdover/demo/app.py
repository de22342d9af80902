"""holdover's demo app: a small notes app whose state lives only in process memory.

Run as ``python -m holdover.demo.app --port PORT --release DIR``, one process per
holdover worker.  ``DIR/release.toml`` says which revision this is (title, accent
colour, tagline, feature flags): the code is the same for every revision, so a deploy
is visible at a glance.  Logins, notes and the live element exist only in this
process's memory — exactly what a plain restart or a rolling deploy loses and holdover
keeps, by sending every request of a session to the process that holds it.

Routes: ``/`` (the login page, or your notes), ``POST /login``, ``POST /logout``,
``POST /notes``, ``POST /notes/{id}/delete``, ``POST /notes/{id}/pin`` (revisions with
``pinning``), ``GET /api/me`` (JSON: who you are and who served you), ``GET /ws`` (a
WebSocket that ticks once a second), ``GET /healthz``.  A first visit to ``/`` starts
a guest session (cookie ``session``, a page counter); logging in gives it a new id, as
real apps do, and logging out deletes the cookie, which tells holdover the session has
ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import secrets
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

REVISION = os.environ.get("HOLDOVER_REVISION", "dev")
WORKER = os.environ.get("HOLDOVER_WORKER", "local")
NODE = os.environ.get("HOLDOVER_NODE", "")  # the gateway node whose worker this is
PID = os.getpid()
COOKIE = "session"
MAX_NOTES = 100
MAX_NOTE = 500


@dataclass(frozen=True)
class Release:
    """What ``release.toml`` says about this revision."""

    title: str = "Notes"
    accent: str = "#2563eb"
    tagline: str = ""
    changes: tuple[str, ...] = ()
    features: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Release:
        data = tomllib.loads((folder / "release.toml").read_text())
        return cls(title=str(data.get("title", "Notes")),
                   accent=str(data.get("accent", "#2563eb")),
                   tagline=str(data.get("tagline", "")),
                   changes=tuple(str(c) for c in data.get("changes", ())),
                   features={str(k): bool(v) for k, v in data.get("features", {}).items()})

    def has(self, feature: str) -> bool:
        return self.features.get(feature, False)


@dataclass
class Note:
    id: int
    text: str
    created: float
    pinned: bool = False


@dataclass
class Session:
    """One visitor (a guest until they log in), in this process's memory only."""

    name: str | None  # None: a guest who has not logged in yet
    since: float
    visits: int = 0
    notes: list[Note] = field(default_factory=list)
    next_id: int = 1
    sockets: set[web.WebSocketResponse] = field(default_factory=set)


SESSIONS: dict[str, Session] = {}
SOCKETS: set[web.WebSocketResponse] = set()
RELEASE_KEY = web.AppKey("release", Release)


def _session(request: web.Request) -> tuple[str | None, Session | None]:
    sid = request.cookies.get(COOKIE)
    return sid, SESSIONS.get(sid) if sid else None


def _see_other(location: str = "/") -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _forget_cookie(resp: web.StreamResponse) -> None:
    resp.set_cookie(COOKIE, "", max_age=0, path="/", httponly=True, samesite="Lax")


def _sorted_notes(release: Release, s: Session, query: str) -> list[Note]:
    notes = list(reversed(s.notes))
    if release.has("search") and query:
        notes = [n for n in notes if query.lower() in n.text.lower()]
    if release.has("pinning"):
        notes.sort(key=lambda n: not n.pinned)
    return notes


# -- pages ---------------------------------------------------------------------------

STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2937;
 background:#f3f4f6}
header{background:var(--accent);color:#fff;padding:1.2em 2em;display:flex;
 align-items:center;gap:1.5em}
header h1{margin:0;font-size:1.6em}
header p{margin:.2em 0 0;opacity:.9}
.rev{margin-left:auto;background:#fff;color:var(--accent);font-weight:800;font-size:2.4em;
 padding:.05em .45em;border-radius:.25em;letter-spacing:.02em}
main{max-width:46em;margin:1.5em auto;padding:0 1em}
.card{background:#fff;border-radius:.6em;padding:1em 1.3em;margin:0 0 1em;
 box-shadow:0 1px 3px #0002}
.banner{display:none;background:#fef3c7;border:2px solid #f59e0b;font-weight:600}
.who{display:flex;align-items:center;gap:1em;flex-wrap:wrap}
.who form{margin-left:auto}
.live{font-family:ui-monospace,monospace;font-size:.95em}
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;background:#9ca3af;
 margin-right:.4em}
.dot.on{background:#22c55e}
ul.notes{list-style:none;padding:0;margin:0}
ul.notes li{display:flex;align-items:center;gap:.6em;padding:.45em 0;
 border-bottom:1px solid #e5e7eb}
ul.notes li.pinned span{font-weight:600}
.tag{font-size:.75em;font-weight:700;text-transform:uppercase;color:var(--accent);
 border:1px solid var(--accent);border-radius:.3em;padding:0 .35em}
ul.notes li span{flex:1}
input[type=text]{font:inherit;padding:.4em .6em;border:1px solid #d1d5db;border-radius:.35em;
 width:100%}
button{font:inherit;white-space:nowrap;padding:.35em .9em;border:0;border-radius:.35em;
 background:var(--accent);color:#fff;cursor:pointer}
button.quiet{background:#e5e7eb;color:#374151}
form.row{display:flex;gap:.6em}
small,.muted{color:#6b7280}
code{background:#f3f4f6;padding:.1em .3em;border-radius:.25em}
"""

SCRIPT = """
const live = document.getElementById('live');
const banner = document.getElementById('banner');
let ticks = 0;
function connect() {
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://')
                           + location.host + '/ws');
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    ticks = m.tick;
    live.innerHTML = '<span class="dot on"></span>connected to revision <b>' + m.revision
      + '</b>, worker <b>' + m.worker + '</b> (pid ' + m.pid + ') &middot; tick ' + m.tick
      + ' &middot; ' + m.online + ' online on this worker';
  };
  ws.onclose = () => {
    live.innerHTML = '<span class="dot"></span>disconnected after ' + ticks
      + ' ticks &middot; reconnecting&hellip;';
    setTimeout(connect, 1500);
  };
}
async function poll() {
  try {
    const r = await fetch('/api/me', {headers: {'Accept': 'application/json'}});
    const served = r.headers.get('X-Holdover-Revision');
    const latest = r.headers.get('X-Holdover-Latest');
    const me = await r.json();
    if (!me.user) { location.reload(); return; }
    if (served && latest && served !== latest) {
      banner.style.display = 'block';
      banner.textContent = 'A newer version (' + latest + ') is available \u2014 log out to '
        + 'switch. You stay on ' + served + ' (with your notes) until then.';
    } else {
      banner.style.display = 'none';
    }
  } catch (e) { /* the next poll tries again */ }
}
if (live) { connect(); poll(); setInterval(poll, 3000); }
"""


def _icon(accent: str) -> str:
    """A round favicon in the revision's colour (a data URL: no extra request)."""
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" '
           f'cy="8" r="7" fill="{accent}"/></svg>')
    return html.escape(urllib.parse.quote(svg))


def _layout(release: Release, body: str) -> str:
    r = release
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(REVISION)} · {html.escape(r.title)} — holdover demo</title>
<link rel="icon" href="data:image/svg+xml,{_icon(r.accent)}">
<style>:root{{--accent:{html.escape(r.accent)}}}{STYLE}</style></head><body>
<header><div><h1>{html.escape(r.title)} <small style="color:#fff;opacity:.8">holdover demo</small>
</h1><p>{html.escape(r.tagline)}</p></div>
<div class="rev" title="the revision that served this page">{html.escape(REVISION)}</div>
</header><main>
<div class="card banner" id="banner"></div>
{body}
<p class="muted"><small>Revision <b>{html.escape(REVISION)}</b> · worker
<b>{html.escape(WORKER)}</b> · pid {PID}. Everything on this page lives in the memory of
that one process: a plain restart would lose it. holdover keeps your session on it, through
deploys, until you log out or leave it idle.</small></p>
</main><script>{SCRIPT}</script></body></html>"""


def _changes(release: Release) -> str:
    if not release.changes:
        return ""
    items = "".join(f"<li>{html.escape(c)}</li>" for c in release.changes)
    return (f'<div class="card"><b>What\'s in {html.escape(REVISION)}</b>'
            f'<ul>{items}</ul></div>')


def _login_page(release: Release, s: Session, notice: str = "") -> str:
    note = f'<div class="card banner" style="display:block">{html.escape(notice)}</div>' \
        if notice else ""
    body = f"""{note}<div class="card"><h2>Log in</h2>
<form class="row" method="post" action="/login">
<input type="text" name="name" placeholder="any name, e.g. alice" maxlength="40" required
 autofocus><button>Log in</button></form>
<p class="muted">No password: this is a demo. Your notes will live in the memory of the
worker process that answers your login. Pages you have seen in this session:
<b id="count">{s.visits}</b>.</p></div>
<div class="card"><b>Try this</b><ol>
<li>Log in and write a note or two. Watch the live counter tick.</li>
<li>Deploy the next revision: <code>holdover demo next</code> (in another terminal).</li>
<li>Reload this tab: still <b>{html.escape(REVISION)}</b>, notes intact, counter still
connected. A banner offers the new version.</li>
<li>Open a private window: it gets the new revision.</li>
<li>Log out here: you move to the new revision, and this one retires once its last
session has ended.</li></ol></div>
{_changes(release)}"""
    return _layout(release, body)


def _notes_page(release: Release, s: Session, query: str) -> str:
    rows = []
    for n in _sorted_notes(release, s, query):
        pin = ""
        if release.has("pinning"):
            pin = (f'<form method="post" action="/notes/{n.id}/pin"><button class="quiet" '
                   f'title="pin to the top">{"unpin" if n.pinned else "pin"}</button></form>')
        tag = '<em class="tag">pinned</em>' if n.pinned else ""
        rows.append(f'<li class="{"pinned" if n.pinned else ""}" data-note="{n.id}">'
                    f'{tag}<span>{html.escape(n.text)}</span>{pin}'
                    f'<form method="post" action="/notes/{n.id}/delete"><button '
                    f'class="quiet">delete</button></form></li>')
    notes = "".join(rows) or '<li class="muted">No notes yet.</li>'
    search = ""
    if release.has("search"):
        search = (f'<form class="row" method="get" action="/" style="margin-bottom:.8em">'
                  f'<input type="text" name="q" value="{html.escape(query)}" '
                  f'placeholder="search your notes"><button class="quiet">Search</button>'
                  f'</form>')
    body = f"""<div class="card who"><div>Hello <b id="user">{html.escape(s.name)}</b> ·
served by worker <b>{html.escape(WORKER)}</b> (pid {PID}{_on_node()}) of revision
<b>{html.escape(REVISION)}</b></div>
<form method="post" action="/logout"><button class="quiet">Log out</button></form></div>
<div class="card live" id="live"><span class="dot"></span>connecting&hellip;</div>
<div class="card"><form class="row" method="post" action="/notes">
<input type="text" name="text" placeholder="write a note" maxlength="{MAX_NOTE}" required
 autofocus><button>Add</button></form></div>
<div class="card">{search}<ul class="notes" id="notes">{notes}</ul>
<p class="muted"><small>{len(s.notes)} note(s) · logged in
{int(time.time() - s.since)} s ago · pages seen: <b id="count">{s.visits}</b></small></p></div>
{_changes(release)}"""
    return _layout(release, body)


# -- handlers ------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    """Your notes, or the login page; a first visit starts a (guest) session here."""
    release = request.app[RELEASE_KEY]
    sid, s = _session(request)
    new_sid = None
    if s is None:
        new_sid = secrets.token_urlsafe(18)
        s = SESSIONS[new_sid] = Session(name=None, since=time.time())
    s.visits += 1
    if s.name is None:
        page = _login_page(release, s, "Your session is not in this worker's memory any "
                           "more: please log in again." if sid else "")
    else:
        page = _notes_page(release, s, request.query.get("q", "").strip())
    resp = web.Response(text=page, content_type="text/html",
                        headers={"Cache-Control": "no-store"})
    if new_sid is not None:
        resp.set_cookie(COOKIE, new_sid, path="/", httponly=True, samesite="Lax")
    return resp


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    name = str(form.get("name", "")).strip()[:40]
    if not name:
        return web.Response(status=400, text="a name, please\n")
    old, guest = _session(request)
    if old:
        _end(old)
    # A new session id at login (as real apps do); holdover moves the pin along with it.
    sid = secrets.token_urlsafe(18)
    SESSIONS[sid] = Session(name=name, since=time.time(),
                            visits=guest.visits if guest is not None else 0)
    resp = _see_other()
    resp.set_cookie(COOKIE, sid, path="/", httponly=True, samesite="Lax")
    return resp


def _end(sid: str) -> None:
    s = SESSIONS.pop(sid, None)
    if s is not None:
        for ws in list(s.sockets):
            asyncio.get_running_loop().create_task(ws.close(message=b"logged out"))


async def logout(request: web.Request) -> web.Response:
    sid, _ = _session(request)
    if sid:
        _end(sid)
    resp = _see_other()
    _forget_cookie(resp)
    return resp


async def add_note(request: web.Request) -> web.Response:
    _, s = _session(request)
    if s is None or s.name is None:
        return _see_other()
    text = str((await request.post()).get("text", "")).strip()[:MAX_NOTE]
    if text and len(s.notes) < MAX_NOTES:
        s.notes.append(Note(s.next_id, text, time.time()))
        s.next_id += 1
    return _see_other()


def _note(request: web.Request) -> tuple[Session | None, Note | None]:
    _, s = _session(request)
    if s is None:
        return None, None
    try:
        nid = int(request.match_info["id"])
    except ValueError:
        return s, None
    return s, next((n for n in s.notes if n.id == nid), None)


async def delete_note(request: web.Request) -> web.Response:
    s, n = _note(request)
    if s is not None and n is not None:
        s.notes.remove(n)
    return _see_other()


async def pin_note(request: web.Request) -> web.Response:
    if not request.app[RELEASE_KEY].has("pinning"):
        raise web.HTTPNotFound(text=f"revision {REVISION} cannot pin notes yet\n")
    _, n = _note(request)
    if n is not None:
        n.pinned = not n.pinned
    return _see_other()


def _on_node() -> str:
    """", on node web-1" in a cluster, where which node's worker answered matters."""
    return f", on node <b>{html.escape(NODE)}</b>" if NODE else ""


def _me(release: Release, s: Session | None) -> dict[str, Any]:
    return {"revision": REVISION, "worker": WORKER, "node": NODE, "pid": PID,
            "title": release.title,
            "features": release.features, "online": len(SOCKETS),
            "user": s.name if s else None,
            "notes": [n.text for n in s.notes] if s else []}


async def me(request: web.Request) -> web.Response:
    _, s = _session(request)
    return web.json_response(_me(request.app[RELEASE_KEY], s),
                             headers={"Cache-Control": "no-store"})


async def websocket(request: web.Request) -> web.StreamResponse:
    _, s = _session(request)
    if s is None or s.name is None:
        return web.Response(status=401, text="log in first\n")
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    SOCKETS.add(ws)
    s.sockets.add(ws)
    release = request.app[RELEASE_KEY]

    async def ticker() -> None:
        tick = 0
        while not ws.closed:
            tick += 1
            msg = {**_me(release, s), "notes": len(s.notes), "tick": tick}
            await ws.send_str(json.dumps(msg))
            await asyncio.sleep(1.0)

    task = asyncio.get_running_loop().create_task(ticker())
    try:
        async for msg in ws:  # the client may say anything; "ping" gets an answer
            if msg.type == WSMsgType.TEXT and msg.data == "ping":
                await ws.send_str(json.dumps({"pong": True, "revision": REVISION,
                                              "worker": WORKER}))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        SOCKETS.discard(ws)
        s.sockets.discard(ws)
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(release: Release) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[RELEASE_KEY] = release
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/notes", add_note)
    app.router.add_post("/notes/{id}/delete", delete_note)
    app.router.add_post("/notes/{id}/pin", pin_note)
    app.router.add_get("/api/me", me)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="holdover's demo app (one worker)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--release", default=".",
                        help="folder with this revision's release.toml (default: .)")
    args = parser.parse_args(argv)
    folder = Path(args.release)
    if not (folder / "release.toml").is_file():
        from . import RELEASES

        print(f"no release.toml in {folder.resolve()}: looking like v1", flush=True)
        folder = RELEASES / "v1"
    web.run_app(make_app(Release.load(folder)), host=args.host, port=args.port,
                shutdown_timeout=2.0, print=None, access_log=None)


if __name__ == "__main__":
    main()
