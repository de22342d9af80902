"""Config files, good and bad, shared by the loader's unit tests and the CLI's e2e tests.

Each bad case names the fragments its error message must contain and the line it must
point at, so ``holdover.config.load`` and ``holdover check`` are held to one list.
"""

from __future__ import annotations

from pathlib import Path

MINIMAL = '[app]\ncommand = "python app.py --port {port}"\n'


def write(tmp_path: Path, text: str, name: str = "holdover.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def names_file(message: str, path: Path) -> bool:
    return str(path) in message or str(path.resolve()) in message


# (name, file text, fragments the message must contain, line the message must name or None)
BAD = [
    ("unknown key",
     '[gateway]\nlisten = "127.0.0.1:9000"\n\n[app]\ncommand = "x"\nwrokers = 2\n',
     ["[app] wrokers", "unknown key", "workers"], 6),
    ("unknown section",
     '[app]\ncommand = "x"\n\n# comment\n[bogus]\na = 1\n',
     ["[bogus]", "unknown section", "[gateway]", "[app]"], 5),
    ("wrong type",
     '[app]\ncommand = "x"\n# workers = 3\nworkers = "two"\n',
     ["[app] workers", "integer", "'two'"], 4),
    ("bad duration",
     '[app]\ncommand = "x"\n\n[gateway]\nheader_timeout = "5 minutes"\n',
     ["[gateway] header_timeout", "duration", "'5 minutes'"], 5),
    ("bad size",
     '[gateway]\nlisten = "127.0.0.1:9000"\nmax_body_size = "10 parsecs"\n[app]\ncommand = "x"\n',
     ["[gateway] max_body_size", "size", "'10 parsecs'"], 3),
    ("bad address",
     '[gateway]\nlisten = "localhost"\n\n[app]\ncommand = "x"\n',
     ["[gateway] listen", "host:port", "'localhost'"], 2),
    ("port out of range",
     '[gateway]\nadmin_listen = "127.0.0.1:70000"\n[app]\ncommand = "x"\n',
     ["[gateway] admin_listen", "70000"], 2),
    ("missing command",
     '[gateway]\nlisten = "127.0.0.1:9000"\n\n[app]\nworkers = 2\n',
     ["[app]", "missing required key", "command"], 4),
    ("missing app section",
     '[gateway]\nlisten = "127.0.0.1:9000"\n',
     ["[app]", "missing required key", "command"], None),
    ("invalid TOML",
     '[app]\ncommand = "x"\nworkers = \n',
     ["not valid TOML"], 3),
    ("bad choice",
     '[app]\ncommand = "x"\nmode = "stateful"\n',
     ["[app] mode", "'sessions'", "'stateless'", "'stateful'"], 3),
    ("zero workers",
     '[app]\ncommand = "x"\nworkers = 0\n',
     ["[app] workers", ">= 1"], 3),
    ("unsplittable command",
     '[app]\ncommand = "python \'app.py"\n',
     ["[app] command", "closing quotation"], 2),
    ("health path without slash",
     '[app]\ncommand = "x"\nhealth_path = "healthz"\n',
     ["[app] health_path", "'healthz'"], 3),
    ("bad cookie name",
     '[app]\ncommand = "x"\nsession_cookie = "a b"\n',
     ["[app] session_cookie", "'a b'"], 3),
    ("section is not a table",
     'gateway = 5\n[app]\ncommand = "x"\n',
     ["gateway", "expected a table"], None),
    ("bad store URL",
     '[app]\ncommand = "x"\n[gateway]\n\nstore = "redis://10.0.0.9:6379/zero"\n',
     ["[gateway] store", "database must be a number", "'zero'"], 5),
    ("unknown store scheme",
     '[gateway]\nstore = "postgres://db/holdover"\n[app]\ncommand = "x"\n',
     ["[gateway] store", "'postgres://db/holdover'", "redis://"], 2),
    ("store password not shown",
     '[gateway]\nstore = "redis://:hunter2@h:port/0"\n[app]\ncommand = "x"\n',
     ["[gateway] store", "redis://:***@h:port/0"], 2),
    ("bad node name",
     '[gateway]\nnode = "web 1"\n[app]\ncommand = "x"\n',
     ["[gateway] node", "'web 1'"], 2),
    ("wildcard advertise",
     '[gateway]\nadvertise = "0.0.0.0"\n[app]\ncommand = "x"\n',
     ["[gateway] advertise", "wildcard"], 2),
]
