"""The README's quick start and its deploy section, followed word for word with Flask.

``holdover init``, ``holdover check``, ``holdover run``; a user logs in; the app is edited
and ``holdover deploy --from . --revision v2`` keeps that user on v1's very process while
new users get v2; the user logs out, which ends the session at once, and v1 retires;
``holdover rollback`` says where it goes and makes v1 active again from its snapshot.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
from conftest import wait_for

APP = '''\
import os
from flask import Flask, jsonify, session

app = Flask(__name__)
app.secret_key = "quick-start"
VERSION = "one"


@app.get("/healthz")
def health():
    return "ok"


@app.get("/")
def index():
    return jsonify(pid=os.getpid(), user=session.get("user"), version=VERSION,
                   revision=os.environ.get("HOLDOVER_REVISION"))


@app.post("/login")
def login():
    session["user"] = "alice"
    return jsonify(pid=os.getpid())


@app.post("/logout")
def logout():
    session.clear()
    return jsonify(ok=True)
'''


def holdover(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "holdover", *args], cwd=folder,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def call(port: int, method: str, path: str, cookie: str = "") -> tuple[dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, headers={"Cookie": cookie} if cookie else {})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200, body
        set_cookie = r.getheader("Set-Cookie") or ""
        return body, set_cookie.split(";")[0] if set_cookie.startswith("session=") else ""
    finally:
        conn.close()


def test_the_quick_start_word_for_word(tmp_path: Path) -> None:
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "app.py").write_text(APP)
    # cd myapp && holdover init   (a free port here instead of 8080: tests share a machine)
    r = holdover(app, "init", "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    text = (app / "holdover.toml").read_text()
    assert 'session_cookie = "session"' in text and 'health_path = "/healthz"' in text
    r = holdover(app, "check")
    assert r.returncode == 0, r.stderr
    run = subprocess.Popen([sys.executable, "-m", "holdover", "run"], cwd=app,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(run.stderr.readline, "")),
                              daemon=True)
    reader.start()
    try:
        m = wait_for(lambda: re.search(r"serving http://127\.0\.0\.1:(\d+)/", "".join(log)),
                     60, what="holdover run to serve")
        port = int(m.group(1))  # type: ignore[union-attr]
        login, cookie = call(port, "POST", "/login")
        assert cookie, "Flask set its session cookie"
        me, _ = call(port, "GET", "/", cookie)
        assert (me["user"], me["revision"], me["pid"]) == ("alice", "v1", login["pid"])

        # ... edit app.py ...; holdover deploy --from . --revision v2
        (app / "app.py").write_text(APP.replace('VERSION = "one"', 'VERSION = "two"'))
        r = holdover(app, "deploy", "--from", ".", "--revision", "v2")
        assert r.returncode == 0, r.stderr
        me, _ = call(port, "GET", "/", cookie)
        assert (me["user"], me["version"], me["pid"]) == ("alice", "one", login["pid"]), \
            "the logged-in user stays on v1's very process"
        new, _ = call(port, "GET", "/")
        assert (new["version"], new["revision"]) == ("two", "v2"), "new users get v2"
        r = holdover(app, "status")
        assert r.returncode == 0 and re.search(r"v1\s+draining", r.stdout), r.stdout

        # Logout ends the session at once: v1 has none left and retires.
        call(port, "POST", "/logout", cookie)

        def v1_state() -> str:
            st = json.loads(holdover(app, "status", "--json").stdout)
            return next(x["state"] for x in st["revisions"] if x["id"] == "v1")
        wait_for(lambda: v1_state() == "retired", 30, what="v1 to retire after the logout")
        assert not psutil.pid_exists(login["pid"])

        # holdover rollback: it says where it goes, and v1 runs again from its snapshot.
        r = holdover(app, "rollback")
        assert r.returncode == 0, r.stderr
        assert "rolling back: v2 -> v1" in r.stdout, r.stdout
        back, _ = call(port, "GET", "/")
        assert (back["revision"], back["version"]) == ("v1", "one")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
        assert run.wait(60) == 0, "".join(log)
        reader.join(5)
