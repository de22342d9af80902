"""The configuration file: every setting defined once, validated at start.

Each setting is declared in ``SETTINGS`` with its section, name, parser, default and
doc, as gunicorn's ``config.py`` does; loading, error messages and the configuration
reference all come from that one table.  Errors name the file, the key, the line where
it can be found and what was expected, because an operator reads them at 3 a.m.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import socket
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.discovery import discover_setting, dns_servers_setting, hook_setting, upstreams_setting
from .core.units import parse_duration, parse_size
from .state import StoreError, check_store
from .state.names import advertise_address, node_name
from .state.url import check_files, is_redis_url, parse_redis_url

DEFAULT_CONFIG = "holdover.toml"


class ConfigError(Exception):
    """A configuration problem, with a message that says where and what."""


# -- value parsers -------------------------------------------------------------------

def parse_address(value: Any) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6); port 0 means "any free port"."""
    if not isinstance(value, str):
        raise ValueError("expected \"host:port\", e.g. \"127.0.0.1:8080\"")
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", value) or re.match(r"^([^:\[\]]+):(\d+)$", value)
    if not m:
        raise ValueError(f"expected \"host:port\", e.g. \"127.0.0.1:8080\", got {value!r}")
    port = int(m.group(2))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return m.group(1), port


def _optional_address(value: Any) -> tuple[str, int] | None:
    return None if value == "" else parse_address(value)


def _int_at_least(low: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer >= {low}, got {value!r}")
        if value < low:
            raise ValueError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return parse


def _command(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected the command that starts one worker, e.g. "
                         "\"python app.py --port {port}\"")
    try:
        shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split the command into words: {exc}") from None
    return value


def _optional_command(value: Any) -> str:
    return "" if value == "" else _command(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration > 0, got {value!r}")
    return seconds


def _health_path(value: Any) -> str:
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ValueError(f"expected a path starting with \"/\" (or \"\" for a TCP check), "
                         f"got {value!r}")
    if any(c in value for c in "\r\n \t"):
        raise ValueError("the path must not contain whitespace")
    return value


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of NAME = \"value\"")
    out = {}
    for k, v in value.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ValueError(f"expected a string value for {k!r}, got {v!r}")
        out[str(k)] = str(v)
    return out


def _cookie_name(value: Any) -> str:
    if not isinstance(value, str) or (value and not re.match(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$",
                                                              value)):
        raise ValueError(f"expected a cookie name (letters, digits, -_.), got {value!r}")
    if value == "holdover_pin":  # the gateway's own, which it never lets an app set
        raise ValueError("holdover_pin is holdover's own cookie; name the app's cookie")
    return value


def _store(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected \"\" (SQLite in state_dir), a file path, or a redis://, "
                         "rediss:// or unix:// URL")
    try:
        check_store(value)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    return value


def _processes(value: Any) -> int:
    if value == "auto":  # one per usable core, counted when the file is read
        return len(os.sched_getaffinity(0))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ValueError(f"expected a number of processes from 1 to 256, or \"auto\" (one "
                         f"per usable core), got {value!r}")
    return value


def _networks(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of addresses or networks, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected an address or network (a string), got {item!r}")
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. "
                             f"\"10.0.0.0/8\")") from None
        out.append(item.strip())
    return out


def _access_log(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a file path, \"-\" for standard output or \"off\"")
    return value


# -- the settings table -------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it lives, how it is read, and what it is for."""

    section: str
    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    required: bool = False


SETTINGS: tuple[Setting, ...] = (
    # [gateway]
    Setting("gateway", "listen", parse_address, "127.0.0.1:8080",
            "Public address (host:port) the proxy listens on."),
    Setting("gateway", "processes", _processes, 1,
            "Proxy processes accepting on listen: 1 = the whole gateway in one process; N > 1 "
            "= N data-plane processes beside one control process (supervisor, store, admin "
            "side); \"auto\" = one per usable core. Sessions stay pinned across all of "
            "them; queue_size and queue_timeout then apply to each process on its own "
            "(docs/design.md, \"Several processes\")."),
    Setting("gateway", "tls_cert", _string, "",
            "PEM certificate (chain) for TLS on the public side; \"\" = plain HTTP."),
    Setting("gateway", "tls_key", _string, "",
            "PEM private key for tls_cert."),
    Setting("gateway", "redirect_listen", _optional_address, "",
            "With TLS: a plain-HTTP address whose requests are redirected (308) to HTTPS; "
            "\"\" = none."),
    Setting("gateway", "admin_listen", parse_address, "127.0.0.1:8081",
            "Address of the admin page, JSON API and metrics; keep it on loopback."),
    Setting("gateway", "state_dir", _string, ".holdover",
            "Folder for the state store, release snapshots, secrets and logs "
            "(relative to the config file)."),
    Setting("gateway", "store", _store, "",
            "Where revisions, pins and events are kept: \"\" = an SQLite file in state_dir; "
            "a file path (relative to the config file); or the Redis a cluster of nodes "
            "shares: redis://[:password@]host[:port]/db, rediss:// (TLS) or "
            "unix:///path/redis.sock, with ?password_file=, cluster=, timeout= "
            "(docs/cluster.md)."),
    Setting("gateway", "node", node_name, "",
            "This node's name in a cluster; \"\" = the host name."),
    Setting("gateway", "advertise", advertise_address, "",
            "The address other nodes of a cluster use to reach this node (IP or host name, "
            "optionally :port); \"\" = the host of listen."),
    Setting("gateway", "store_outage_grace", parse_duration, "30s",
            "With a shared store: how long the node stays ready (GET /readyz) while the store "
            "does not answer; it serves what it knows meanwhile and refuses deploys."),
    Setting("gateway", "cluster_secret", _string, "",
            "With a shared store: the file of keys every node of the cluster must share "
            "(sessions, cookies, node-to-node tokens), relative to the config file; \"\" = "
            "state_dir/cluster.secret, created 0600 if missing (copy it to every node)."),
    Setting("gateway", "peer_listen", _optional_address, "",
            "With a shared store: where other nodes pass requests for this node's sessions "
            "(authenticated, not encrypted); \"\" = the advertise address, any free port."),
    Setting("gateway", "access_log", _access_log, "access.log",
            "Access log: a file (relative to state_dir), \"-\" for standard output, "
            "or \"off\"."),
    Setting("gateway", "access_log_format", _choice("json", "combined"), "json",
            "One JSON object per request, or the combined log format."),
    Setting("gateway", "log_format", _choice("plain", "json"), "plain",
            "The gateway's own log lines on standard error: \"plain\" text, or \"json\" "
            "(one object a line: time, level, logger, message, and fields such as revision, "
            "worker, count). The access log keeps its own format."),
    Setting("gateway", "max_request_line", parse_size, "8KiB",
            "Longest request line accepted; longer gets 414."),
    Setting("gateway", "max_header_size", parse_size, "64KiB",
            "Largest request head (all header lines) accepted; larger gets 431."),
    Setting("gateway", "max_headers", _int_at_least(1), 100,
            "Most request header lines accepted; more gets 431."),
    Setting("gateway", "max_body_size", parse_size, "0",
            "Largest request body accepted (0 = no limit; bodies are streamed, never "
            "buffered); larger gets 413."),
    Setting("gateway", "header_timeout", parse_duration, "10s",
            "Time a client has to send a whole request head; then 408."),
    Setting("gateway", "keepalive_timeout", parse_duration, "75s",
            "How long an idle client keep-alive connection is kept open."),
    Setting("gateway", "body_timeout", parse_duration, "60s",
            "Longest pause allowed while a client sends a request body."),
    Setting("gateway", "connect_timeout", parse_duration, "5s",
            "Time allowed to open a connection to a worker."),
    Setting("gateway", "response_timeout", parse_duration, "60s",
            "Time a worker has to start answering once it has the whole request (or while "
            "it does not read the request body); then 504."),
    Setting("gateway", "send_timeout", parse_duration, "60s",
            "Longest a write to a client may make no progress (a client that stopped "
            "reading); then the connection is cut."),
    Setting("gateway", "min_body_rate", parse_size, 0,
            "The slowest average a request body may arrive at (bytes a second, e.g. "
            "\"1KiB\") once it has taken 10 s: a slower upload gets 408. 0: no minimum "
            "(body_timeout still cuts a body that makes no progress at all)."),
    Setting("gateway", "upstream_idle_timeout", parse_duration, "4s",
            "How long an idle pooled connection to a worker is kept (below the app's "
            "own keep-alive timeout, so the gateway closes first)."),
    Setting("gateway", "upstream_keepalive", _int_at_least(0), 64,
            "Idle connections kept per worker for reuse."),
    Setting("gateway", "queue_size", _int_at_least(0), 1024,
            "Requests that may wait for a worker when none is ready; more get 503 (with "
            "processes > 1: in each process)."),
    Setting("gateway", "queue_timeout", parse_duration, "15s",
            "How long a request waits for a ready worker before it gets 503."),
    Setting("gateway", "shutdown_timeout", parse_duration, "30s",
            "On SIGTERM, how long in-flight requests and open WebSockets may finish."),
    Setting("gateway", "shutdown_delay", parse_duration, "0s",
            "On SIGTERM, keep serving this long first while the admin side's unauthenticated "
            "GET /readyz answers 503, so that a load balancer takes the node out before it "
            "stops accepting (e.g. \"5s\" behind a balancer that probes every 2 s)."),
    Setting("gateway", "forwarded_headers", _choice("replace", "append"), "replace",
            "\"append\" keeps every client's X-Forwarded-For/Forwarded; \"replace\" drops "
            "them (except from trusted_proxies)."),
    Setting("gateway", "trusted_proxies", _networks, [],
            "Addresses or networks (e.g. [\"127.0.0.1\", \"10.0.0.0/8\"]) of the proxies or load "
            "balancers in front (nginx, Caddy, a cloud balancer that terminates TLS). From "
            "them X-Forwarded-For/Forwarded are kept and extended, X-Forwarded-Proto and "
            "X-Forwarded-Host are kept, the client address is the last one they name, and "
            "the pin cookie is Secure when the original scheme was https."),
    # [app]
    Setting("app", "command", _optional_command, "",
            "Command that starts one worker; {port} and $PORT name its port. Required "
            "unless upstreams or discover name workers another engine runs."),
    Setting("app", "upstreams", upstreams_setting, [],
            "The first revision's workers when another engine runs them, as "
            "http://HOST:PORT URLs, instead of command (docs/orchestrators.md)."),
    Setting("app", "discover", discover_setting, "",
            "How `deploy --revision ID` finds ID's workers in DNS: \"dns+srv:NAME\" (SRV "
            "records) or \"dns:NAME:PORT\" (A/AAAA), NAME containing {revision}. \"\" = none."),
    Setting("app", "dns_servers", dns_servers_setting, [],
            "DNS servers (IP or IP:PORT) discover asks; [] = the system resolver."),
    Setting("app", "discover_interval", _positive_duration, "5s",
            "How often discovered revisions are looked up again: new addresses join, "
            "vanished ones take no new session (their pinned sessions are still served)."),
    Setting("app", "on_drain", hook_setting, "",
            "Command run when a revision starts draining ({revision} and "
            "$HOLDOVER_REVISION name it); its output goes to the event log. \"\" = none."),
    Setting("app", "on_retire", hook_setting, "",
            "Command run when a revision retires, e.g. \"kubectl scale deployment/app-"
            "{revision} --replicas=0\"; the retirement does not wait for it. \"\" = none."),
    Setting("app", "hook_timeout", _positive_duration, "60s",
            "Longest on_drain or on_retire may run; then it is killed and counted as failed."),
    Setting("app", "cwd", _string, ".",
            "Working directory of the workers (relative to the config file)."),
    Setting("app", "env", _env, {}, "Extra environment variables for the workers."),
    Setting("app", "workers", _int_at_least(1), 2, "Worker processes per revision."),
    Setting("app", "standby", _int_at_least(0), 0,
            "Hot-standby workers per active revision: they get traffic only when no "
            "ordinary worker of the revision is ready."),
    Setting("app", "health_path", _health_path, "",
            "Path that answers 2xx when a worker is ready; \"\" = ready when its port "
            "accepts connections."),
    Setting("app", "health_interval", parse_duration, "5s",
            "How often ready workers are health-checked."),
    Setting("app", "health_timeout", parse_duration, "3s", "Time allowed for one health check."),
    Setting("app", "health_failures", _int_at_least(1), 3,
            "Failed checks in a row that take a worker out of rotation and restart it."),
    Setting("app", "start_timeout", parse_duration, "60s",
            "Time a new worker has to become ready before it counts as failed."),
    Setting("app", "stop_grace", parse_duration, "30s",
            "After SIGTERM, how long a worker may finish its work before SIGKILL."),
    Setting("app", "restart_backoff_max", parse_duration, "30s",
            "Longest wait between restarts of a crashing worker (back-off doubles from 0.5s)."),
    Setting("app", "crash_loop_restarts", _int_at_least(1), 5,
            "Restarts within crash_loop_window that mark a worker as crash-looping."),
    Setting("app", "crash_loop_window", parse_duration, "60s",
            "Window in which restarts are counted for crash-loop detection."),
    Setting("app", "log_max_bytes", parse_size, "10MiB",
            "Size at which a worker's log file is rotated."),
    Setting("app", "log_backups", _int_at_least(0), 3, "Rotated worker log files kept."),
    Setting("app", "mode", _choice("sessions", "stateless"), "sessions",
            "\"sessions\": pin each session to its worker; \"stateless\": balance freely."),
    Setting("app", "session_cookie", _cookie_name, "",
            "The app's own session cookie; \"\" = holdover pins clients with its own cookie."),
    Setting("app", "pin_clients", _bool, True,
            "Without session_cookie: pin every client with holdover's own cookie. Turn off "
            "when the app uses the explicit session protocol (it also stops by itself once "
            "the app sends X-Holdover-Session)."),
    Setting("app", "session_idle_timeout", parse_duration, "30m",
            "A session with no request for this long has ended."),
    Setting("app", "max_sessions", _int_at_least(1), 1_000_000,
            "At most this many live sessions are pinned; past it new sessions are served "
            "unpinned (counted in holdover_sessions_refused_total) and no live session is "
            "ever pushed out. Holdover's own pin cookie counts as a session only once the "
            "client comes back with it; at most as many offered ones are kept, the oldest "
            "dropped first."),
    Setting("app", "strategy", _choice("replace", "rolling"), "replace",
            "Stateless deploys: \"replace\" starts all new workers, then drains the old; "
            "\"rolling\" replaces one worker at a time, each old one draining (its requests "
            "and WebSockets finish, bounded by max_drain) before the next is replaced."),
    Setting("app", "canary_max_error_ratio", _ratio, 0.0,
            "Abort a canary automatically when this share of its responses in "
            "canary_window are 5xx (0 = never)."),
    Setting("app", "canary_window", parse_duration, "60s",
            "Window over which the canary's error ratio is measured."),
    Setting("app", "canary_min_requests", _int_at_least(1), 20,
            "Requests the canary must have answered in the window before it can be judged."),
    Setting("app", "max_drain", parse_duration, "0",
            "Longest a draining revision may keep running (0 = until its last session ends); "
            "then its remaining sessions are ended and counted as lost."),
    Setting("app", "keep_retired", _int_at_least(1), 5,
            "Finished (retired or failed) revisions kept in status, metrics and on disk "
            "(release snapshot, logs); older ones remain only as events."),
)

SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS))


@dataclass
class Config:
    """The validated configuration; attribute names are ``section_name``."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, item: str) -> Any:
        try:
            return self.__dict__["values"][item]
        except KeyError:
            raise AttributeError(item) from None

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return (self.base_dir / self.gateway_state_dir).resolve()

    @property
    def app_dir(self) -> Path:
        return (self.base_dir / self.app_cwd).resolve()

    def where(self, section: str, key: str) -> str:
        """``[section] key in FILE, line N`` (or "default") for messages about a setting."""
        try:
            line = _line_of(self.path.read_text(encoding="utf-8"), section, key)
        except OSError:
            line = None
        return f"[{section}] {key} in {self.path}" + (f", line {line}" if line else
                                                       " (its default)")

    @property
    def node_name(self) -> str:
        """This node's name: ``node``, or the host name when it is not set."""
        return self.gateway_node or socket.gethostname()

    @property
    def cluster_secret_path(self) -> Path:
        """Where a cluster node reads its cluster secret (``cluster_secret``)."""
        if self.gateway_cluster_secret:
            return self.base_dir / self.gateway_cluster_secret
        return self.state_dir / "cluster.secret"


def _line_of(text: str, section: str, key: str | None) -> int | None:
    """Best-effort line number of ``key`` in ``[section]`` (tomllib gives none)."""
    current = None
    in_string: str | None = None  # inside a multi-line string: no keys there
    for lineno, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        stripped = line.strip()
        for quote in ('"""', "'''"):
            if stripped.count(quote) % 2:
                in_string = quote
                break
        m = re.match(r"^\[\s*([A-Za-z0-9_.\-]+)\s*\]", stripped)
        if m:
            current = m.group(1)
            if key is None and current == section:
                return lineno
            continue
        if key is not None and current == section and re.match(
            rf"^\"?{re.escape(key)}\"?\s*=", stripped
        ):
            return lineno
    return None


def _did_you_mean(word: str, choices: Iterable[str], shape: str = "{}") -> str:
    """`` (did you mean X?)`` for a near miss among ``choices`` (a typo), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {shape.format(close[0])}?)" if close else ""


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError saying what is wrong and where."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file (use -c FILE, or create "
                          f"{DEFAULT_CONFIG}; see `holdover check --help`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, path=path.resolve(), text=text, overrides=overrides)


def from_dict(data: dict[str, Any], path: Path, text: str = "",
              overrides: dict[str, Any] | None = None) -> Config:
    """Validate parsed TOML data; ``text`` (the file's source) is used to find line numbers."""
    def where(section: str, key: str | None = None) -> str:
        line = _line_of(text, section, key) if text else None
        name = f"[{section}]" + (f" {key}" if key else "")
        return f"{path}: {name}" + (f" (line {line})" if line else "")

    known = {(s.section, s.name): s for s in SETTINGS}
    for section, table in data.items():
        if not isinstance(table, dict) and section not in SECTIONS:
            raise ConfigError(f"{path}: top-level key {section!r} must be inside a section "
                              f"({', '.join(f'[{s}]' for s in SECTIONS)})")
        if section not in SECTIONS:
            raise ConfigError(f"{where(section)}: unknown section"
                              f"{_did_you_mean(section, SECTIONS, '[{}]')}; expected one of "
                              f"{', '.join(f'[{s}]' for s in SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: expected a table [{section}]")
        for key in table:
            if (section, key) not in known:
                names = sorted(n for (sec, n) in known if sec == section)
                elsewhere = [sec for (sec, n) in known if n == key]
                hint = (f" (it is a [{elsewhere[0]}] key)" if elsewhere
                        else _did_you_mean(key, names))
                raise ConfigError(f"{where(section, key)}: unknown key{hint}; expected one "
                                  f"of {', '.join(names)}")
    values: dict[str, Any] = {}
    overrides = overrides or {}
    for s in SETTINGS:
        attr = f"{s.section}_{s.name}"
        table = data.get(s.section, {})
        if attr in overrides:
            raw, origin = overrides[attr], f"{path}: [{s.section}] {s.name} (override)"
        elif s.name in table:
            raw, origin = table[s.name], where(s.section, s.name)
        elif s.required:
            raise ConfigError(f"{where(s.section)}: missing required key {s.name!r}: {s.doc}")
        else:
            raw, origin = s.default, f"default of [{s.section}] {s.name}"
        try:
            values[attr] = s.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    cfg = Config(path=path, values=values)
    if bool(values["gateway_tls_cert"]) != bool(values["gateway_tls_key"]):
        raise ConfigError(f"{where('gateway', 'tls_cert')}: tls_cert and tls_key go together: "
                          f"set both or neither")
    for key in ("tls_cert", "tls_key"):
        name = values[f"gateway_{key}"]
        if name and not (cfg.base_dir / name).is_file():
            raise ConfigError(f"{where('gateway', key)}: no such file {name!r}")
    store = values["gateway_store"]
    if is_redis_url(store):
        try:
            check_files(parse_redis_url(store), cfg.base_dir)
        except StoreError as exc:
            raise ConfigError(f"{where('gateway', 'store')}: {exc}") from None
        listen_host = values["gateway_listen"][0]
        if not values["gateway_advertise"] and listen_host in ("0.0.0.0", "::", ""):
            raise ConfigError(f"{where('gateway', 'advertise')}: with a shared store, other "
                              f"nodes must reach this one, and listen is on every address "
                              f"({listen_host!r}): set advertise to this node's own address")
        if values["gateway_processes"] > 1:
            raise ConfigError(f"{where('gateway', 'processes')}: a node of a cluster (a "
                              f"shared store) runs one process for now: set processes = 1")
    if not (values["app_command"] or values["app_upstreams"] or values["app_discover"]):
        raise ConfigError(f"{where('app', 'command' if 'command' in data.get('app', {}) else None)}"
                          f": missing required key 'command': the command that starts one "
                          f"worker, e.g. \"python app.py --port {{port}}\" (or upstreams or "
                          f"discover, for workers another engine runs)")
    if values["gateway_redirect_listen"] is not None and not values["gateway_tls_cert"]:
        raise ConfigError(f"{where('gateway', 'redirect_listen')}: redirecting to HTTPS needs "
                          f"tls_cert and tls_key")
    return cfg


def reference_markdown() -> str:
    """The configuration reference, generated from SETTINGS."""
    out = ["# Configuration reference", "",
           "Generated from `holdover/config.py`; every key is optional unless marked.", ""]
    for section in SECTIONS:
        out += [f"## [{section}]", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for s in SETTINGS:
            if s.section == section:
                default = "**required**" if s.required else f"`{s.default!r}`"
                out.append(f"| `{s.name}` | {default} | {s.doc} |")
        out.append("")
    return "\n".join(out)
