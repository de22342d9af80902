"""``holdover init``: a working, commented ``holdover.toml`` for the app in a folder.

The first ten minutes with holdover should not start with the configuration reference.
What an app needs — the command that starts one process on a given port, a path that
answers once it is ready, the cookie its sessions live under — follows from the
framework it uses, and the framework shows in the folder: ``manage.py``, an import of
Streamlit or Gradio, ``app = Flask(...)``, a ``Procfile``'s ``web:`` line, a dependency
list.  So init reads the folder (Python's ``ast``, never importing or running the app),
asks nothing when one answer stands out, asks one question when several do (or, without
a terminal, takes the best and says so), and checks what it wrote with the very loader
``holdover run`` uses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path

from .. import config
from .detect import SURE, Finding, Scan, findings

__all__ = ["Finding", "InitError", "generate", "render"]


class InitError(Exception):
    """init cannot write a configuration; the message says why and what to do."""


def python_word() -> str:
    """How the config names the Python that runs holdover: a word on PATH when it
    resolves to this very interpreter (a venv's ``python``), else its full path."""
    me = os.path.realpath(sys.executable)
    for word in ("python", "python3"):
        found = shutil.which(word)
        if not found:
            continue
        if os.path.realpath(found) == me:
            return word
        try:  # a shim (pyenv, asdf) that starts this interpreter
            out = subprocess.run([found, "-c", "import sys; print(sys.executable)"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and os.path.realpath(out.stdout.strip()) == me:
            return word
    return shlex.quote(sys.executable)


def choose(found: list[Finding], ask: Callable[[str], str] | None,
           say: Callable[[str], None]) -> Finding:
    """The finding to write: the best when it stands out, else one question."""
    if not found:
        raise InitError("cannot tell how this app starts: no Django, Flask, FastAPI, "
                        "Starlette, Streamlit, Gradio, Dash or Panel app, no Procfile and "
                        "no pyproject.toml script here; pass --command \"CMD --port {port}\"")
    best = found[0]
    rivals = [f for f in found[1:] if f.score >= best.score - 1]
    if best.score >= SURE and not rivals:
        return best
    options = [best, *rivals] if rivals else found[:6]
    if ask is None:
        say(f"holdover init: not sure which app this is; took {best.label} ({best.why}). "
            f"Others: {', '.join(f.label for f in options[1:]) or 'none'}. Run it in a "
            f"terminal to choose, or pass --framework / --command.")
        return best
    lines = [f"  {i}. {f.label}: {f.why}" for i, f in enumerate(options, 1)]
    question = "Which app should holdover run?\n" + "\n".join(lines) + "\nNumber [1]: "
    while True:
        answer = ask(question).strip()
        if not answer:
            return options[0]
        if answer.isdigit() and 1 <= int(answer) <= len(options):
            return options[int(answer) - 1]
        question = f"Please answer 1-{len(options)}: "


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 86))


def _setting(key: str, value: str, why: str = "") -> str:
    """``key = "value"  # why``, the comment above when the line would be too long."""
    code = f"{key} = {_q(value)}"
    if not why:
        return code + "\n"
    if len(code) <= 32 and len(why) <= 60:
        return f"{code:<32}  # {why}\n"
    return _comment(why) + code + "\n"


def render(f: Finding, listen: tuple[str, int], cwd: str) -> str:
    """The commented holdover.toml for a finding."""
    host, port = listen
    admin_port = port + 1 if port else 0
    head = _comment(f"holdover.toml for the {f.framework} app in {f.entry}, written by "
                    f"`holdover init` ({f.why}).")
    head += "".join(_comment(f"NOTE: {n}") for n in f.notes)
    env = ("env = { " + ", ".join(f"{k} = {_q(v)}" for k, v in f.env.items()) + " }\n"
           if f.env else "")
    cookie = (_setting("session_cookie", f.session_cookie, f"{f.cookie_why}: a response that "
                       "sets it pins the session, one that deletes it (logout) ends it")
              if f.session_cookie else _comment(
                  "No session_cookie: holdover pins each browser with its own signed cookie "
                  f"(holdover_pin){'; ' + f.cookie_why if f.cookie_why else ''}."))
    extra = "".join(_setting(k, v) for k, v in f.app.items() if k != "start_timeout")
    return (
        head + "#\n"
        "#   holdover check                            validate this file\n"
        "#   holdover run                              start the gateway and the workers\n"
        "#   holdover deploy --from DIR --revision ID  deploy a new version; live sessions "
        "stay\n"
        "# Every setting, its default and its meaning: `holdover config-reference`.\n\n"
        "[gateway]\n"
        + _setting("listen", f"{host}:{port}", "public side: browsers connect here")
        + _setting("admin_listen", f"{host}:{admin_port}", "admin page, API, /metrics")
        + _setting("state_dir", ".holdover", "state store, snapshots, secrets, logs")
        + _setting("shutdown_timeout", "30s", "on SIGTERM, requests and WebSockets finish")
        + "\n[app]\n"
        + _setting("command", f.command, f.command_why)
        + _setting("cwd", cwd, "the workers' folder, relative to this file")
        + env
        + "workers = 2                       # processes per revision; each has its own "
        "sessions\n"
        + _setting("health_path", f.health_path, f.health_why)
        + _setting("start_timeout", f.app.get("start_timeout", "60s"),
                   "for a new worker to be ready")
        + extra
        + _setting("stop_grace", "30s", "after SIGTERM, to finish its work, then SIGKILL")
        + _setting("mode", "sessions", "each session stays on its worker process")
        + cookie
        + _setting("session_idle_timeout", "30m", "open WebSockets keep sessions alive")
        + "# max_drain = \"1d\"                # how long an old revision may wait for its "
        "last session\n")


def generate(root: Path, config_path: Path, *, framework: str | None = None,
             command: str | None = None, listen: tuple[str, int] = ("127.0.0.1", 8080),
             ask: Callable[[str], str] | None = None,
             say: Callable[[str], None] = print) -> tuple[str, Finding]:
    """The configuration for the app in ``root``, validated as ``holdover check`` would."""
    scan = Scan(root, python_word(), listen)
    found = findings(scan)
    if framework:
        found = [f for f in found if f.framework.lower() == framework.lower()]
        if not found:
            raise InitError(f"no {framework} app found in {root}")
    if command:
        base = found[0] if found else Finding("app", "--command", command, SURE,
                                              "the command given on the command line")
        base.command, base.score = command, SURE + 9
        found = [base]
    chosen = choose(found, ask, say)
    if chosen.module and importlib.util.find_spec(chosen.module) is None:
        chosen.notes.append(f"{chosen.module} is not installed for this Python: "
                            f"pip install {chosen.module}")
    cwd = os.path.relpath(root, config_path.parent)
    text = render(chosen, listen, "." if cwd == "." else cwd.replace(os.sep, "/"))
    try:
        config.from_dict(tomllib.loads(text), path=config_path, text=text)
    except (config.ConfigError, tomllib.TOMLDecodeError) as exc:  # a bug in init itself
        raise InitError(f"the generated configuration does not validate: {exc}") from None
    return text, chosen
