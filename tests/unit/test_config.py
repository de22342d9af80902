"""Configuration loading and validation: ``holdover.config``.

Every bad file must be refused with a message that names the file, the key and (where
the loader can find it) the line.  The same cases (tests/configcases.py) go through the
``holdover check`` CLI in tests/e2e/test_config_cli.py.
"""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path

import pytest
from configcases import BAD, MINIMAL, names_file, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdover import config
from holdover.config import ConfigError, load, parse_address, parse_duration, parse_size

# -- valid files ---------------------------------------------------------------------


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL))
    assert cfg.app_command == "python app.py --port {port}"
    assert cfg.app_workers == 2
    assert cfg.app_mode == "sessions"
    assert cfg.gateway_listen == ("127.0.0.1", 8080)
    assert cfg.gateway_admin_listen == ("127.0.0.1", 8081)
    assert cfg.gateway_max_request_line == 8 * 1024
    assert cfg.gateway_max_header_size == 64 * 1024
    assert cfg.gateway_max_body_size == 0
    assert cfg.gateway_header_timeout == 10.0
    assert cfg.app_session_idle_timeout == 30 * 60.0
    assert cfg.app_log_max_bytes == 10 * 1024 * 1024
    assert cfg.app_env == {}
    # relative folders are relative to the config file, not to the current directory
    assert cfg.state_dir == (tmp_path / ".holdover").resolve()
    assert cfg.app_dir == tmp_path.resolve()


def test_every_setting_has_a_valid_default() -> None:
    for s in config.SETTINGS:
        if not s.required:
            s.parse(s.default)  # raises if a default does not pass its own parser


def test_spec_example_config_loads(tmp_path: Path) -> None:
    text = """\
[gateway]
listen = "127.0.0.1:8080"        # public side
admin_listen = "127.0.0.1:8081"  # admin page, API, metrics
state_dir = ".holdover"          # embedded state store, release snapshots, logs

[app]
command = "python app.py --port {port}"   # {port} and $PORT name the worker's port
cwd = "."
workers = 2
health_path = "/healthz"          # ready when this answers 2xx
mode = "sessions"                 # or "stateless"
session_cookie = "session"        # the app's own session cookie, if it has one
session_idle_timeout = "30m"
"""
    cfg = load(write(tmp_path, text))
    assert cfg.app_health_path == "/healthz"
    assert cfg.app_session_cookie == "session"
    assert cfg.app_session_idle_timeout == 1800.0


def test_all_value_kinds_parse(tmp_path: Path) -> None:
    text = """\
[gateway]
listen = "[::1]:0"
max_body_size = "10MiB"
header_timeout = "250ms"
keepalive_timeout = 5
forwarded_headers = "append"

[app]
command = "run"
workers = 3
mode = "stateless"
env = { A = "1", B = 2 }
stop_grace = 1.5
"""
    cfg = load(write(tmp_path, text))
    assert cfg.gateway_listen == ("::1", 0)
    assert cfg.gateway_max_body_size == 10 * 1024 * 1024
    assert cfg.gateway_header_timeout == pytest.approx(0.25)
    assert cfg.gateway_keepalive_timeout == 5.0
    assert cfg.gateway_forwarded_headers == "append"
    assert cfg.app_workers == 3
    assert cfg.app_mode == "stateless"
    assert cfg.app_env == {"A": "1", "B": "2"}
    assert cfg.app_stop_grace == 1.5


# -- bad files -----------------------------------------------------------------------



@pytest.mark.parametrize(("text", "fragments", "line"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_load_refuses_bad_file(tmp_path: Path, text: str, fragments: list[str],
                               line: int | None) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(p)
    msg = str(info.value)
    assert names_file(msg, p), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    lines = [int(n) for n in re.findall(r"\bline (\d+)", msg)]
    if line is None:
        assert not lines, msg
    else:
        assert lines == [line], msg


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "holdover.toml"
    p.write_bytes(b'[app]\ncommand = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read") as info:
        load(p)
    assert names_file(str(info.value), p)


def test_line_found_with_indentation_trailing_comments_and_crlf(tmp_path: Path) -> None:
    text = ('[gateway]\r\n  listen = "127.0.0.1:1"\r\n\r\n[ app ]  # the app\r\n'
            '  command = "x"\r\n  workers = "two"   # oops\r\n')
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert "[app] workers (line 6)" in str(info.value)


def test_same_key_name_in_other_section_does_not_confuse_line(tmp_path: Path) -> None:
    # `listen` is a [gateway] key; under [app] it is unknown, and the line must be the
    # [app] one, not the valid [gateway] line with the same name.
    text = ('[gateway]\nlisten = "127.0.0.1:1"\n[app]\ncommand = "x"\nlisten = "x"\n')
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert "[app] listen (line 5)" in str(info.value)


def test_line_not_taken_from_inside_multiline_string(tmp_path: Path) -> None:
    text = ('[app]\ncommand = """python app.py\nworkers = 3\n"""\nworkers = "two"\n')
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert "[app] workers (line 5)" in str(info.value)


def test_nan_duration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[gateway\] header_timeout"):
        load(write(tmp_path, MINIMAL + "[gateway]\nheader_timeout = nan\n"))


# Line numbers: wherever the bad key sits among blank lines, comments (that mention keys)
# and other settings, the message names its line.

GOOD_LINES = {
    "gateway": ['listen = "127.0.0.1:9000"', 'max_headers = 50', 'queue_timeout = "3s"',
                'max_body_size = "1MiB"', 'forwarded_headers = "append"'],
    "app": ['command = "python app.py {port}"', 'workers = 4', 'health_path = "/h"',
            'stop_grace = "2s"', 'mode = "stateless"'],
}
BAD_LINES = {
    "gateway": [("listen", 'listen = "nowhere"'), ("max_headers", 'max_headers = "many"'),
                ("queue_timeout", 'queue_timeout = "soon"'),
                ("max_body_size", 'max_body_size = "huge"')],
    "app": [("workers", 'workers = "two"'), ("stop_grace", 'stop_grace = "-1s"'),
            ("mode", 'mode = "both"'), ("health_path", 'health_path = "h"')],
}
FILLER = st.sampled_from(["", "# a comment", "# workers = 9", "   ", "# [app]",
                          "#listen = \"x\""])


@st.composite
def config_with_one_bad_key(draw: st.DrawFn) -> tuple[str, str, str, int]:
    bad_section = draw(st.sampled_from(["gateway", "app"]))
    bad_key, bad_line = draw(st.sampled_from(BAD_LINES[bad_section]))
    order = draw(st.sampled_from([("gateway", "app"), ("app", "gateway")]))
    lines: list[str] = [draw(FILLER) for _ in range(draw(st.integers(0, 3)))]
    where = 0
    for section in order:
        lines.append(f"[{section}]")
        body = [ln for ln in GOOD_LINES[section]
                if ln.split(" ")[0] != bad_key and draw(st.booleans())]
        if section == "app" and not any(ln.startswith("command") for ln in body):
            body.insert(0, GOOD_LINES["app"][0])
        body += [draw(FILLER) for _ in range(draw(st.integers(0, 3)))]
        if section == bad_section:
            at = draw(st.integers(0, len(body)))
            body.insert(at, bad_line)
            where = len(lines) + at + 1
        lines += body
    return "\n".join(lines) + "\n", bad_section, bad_key, where


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=config_with_one_bad_key())
def test_error_names_the_right_line(tmp_path: Path, case: tuple[str, str, str, int]) -> None:
    text, section, key, line = case
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(p)
    msg = str(info.value)
    assert f"[{section}] {key} (line {line})" in msg, (text, msg)


# -- value parsers -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0),
    ("1.5s", 1.5), ("0", 0.0), ("12", 12.0), (" 7s ", 7.0), (45, 45.0), (0.5, 0.5),
    ("0ms", 0.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "1h30m", "s", "", "ten", "5sec", True,
                                  -3, "1e3s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("64KiB", 64 * 1024), ("10MiB", 10 * 1024**2), ("1GiB", 1024**3), ("500kb", 500_000),
    ("500KB", 500_000), ("2mb", 2_000_000), ("3gb", 3 * 10**9), ("1k", 1024), ("1m", 1024**2),
    ("1g", 1024**3), ("17b", 17), ("17", 17), (4096, 4096), ("1.5KiB", 1536), ("64 kib", 65536),
    ("0", 0),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10 parsecs", "-1", "KiB", "1e3", "", "1 TiB", False, -5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(n=st.integers(0, 10**6), unit=st.sampled_from(["ms", "s", "m", "h", "d", ""]))
def test_duration_roundtrip(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}[unit]
    assert math.isclose(parse_duration(f"{n}{unit}"), n * factor, rel_tol=1e-12)


@given(n=st.integers(0, 10**6), unit=st.sampled_from(["", "b", "kib", "KiB", "MiB", "kb", "MB"]))
def test_size_roundtrip(n: int, unit: str) -> None:
    factor = {"": 1, "b": 1, "kib": 1024, "KiB": 1024, "MiB": 1024**2, "kb": 1000,
              "MB": 1000**2}[unit]
    assert parse_size(f"{n}{unit}") == n * factor


@pytest.mark.parametrize(("text", "addr"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("localhost:0", ("localhost", 0)),
    ("[::1]:65535", ("::1", 65535)), ("0.0.0.0:80", ("0.0.0.0", 80)),
])
def test_addresses(text: str, addr: tuple[str, int]) -> None:
    assert parse_address(text) == addr


@pytest.mark.parametrize("text", ["localhost", ":8080", "::1:8080", "host:65536", "host:-1",
                                  "host:port", "[::1]", 8080, "a:b:1"])
def test_bad_addresses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# -- the reference ----------------------------------------------------------------------


def test_reference_lists_every_setting() -> None:
    ref = config.reference_markdown()
    sections = re.split(r"^## ", ref, flags=re.M)
    by_section = {}
    for chunk in sections[1:]:
        header, _, body = chunk.partition("\n")
        by_section[header.strip()] = body
    assert set(by_section) == {f"[{s}]" for s in config.SECTIONS}
    for s in config.SETTINGS:
        body = by_section[f"[{s.section}]"]
        row = next((ln for ln in body.splitlines() if ln.startswith(f"| `{s.name}` |")), None)
        assert row is not None, f"[{s.section}] {s.name} missing from the reference"
        assert s.doc in row
        if s.required:
            assert "**required**" in row
        else:
            assert repr(s.default) in row
    rows = [ln for ln in ref.splitlines() if ln.startswith("| `")]
    assert len(rows) == len(config.SETTINGS)




def test_cluster_settings(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL))
    assert (cfg.gateway_store, cfg.gateway_node, cfg.gateway_advertise) == ("", "", "")
    assert cfg.node_name == socket.gethostname()
    text = MINIMAL + ('[gateway]\nstore = "rediss://10.0.0.9:6380/1?cluster=shop"\n'
                      'node = "web-1"\nadvertise = "[fd00::1]:8080"\n')
    cfg = load(write(tmp_path, text))
    assert cfg.gateway_store == "rediss://10.0.0.9:6380/1?cluster=shop"
    assert (cfg.node_name, cfg.gateway_advertise) == ("web-1", "[fd00::1]:8080")
    with pytest.raises(ConfigError) as info:  # a bad URL's message hides its password
        load(write(tmp_path, MINIMAL + '[gateway]\nstore = "redis://:hunter2@h:port/0"\n'))
    assert "hunter2" not in str(info.value) and ":***@" in str(info.value)
    for store in ("state/other.db", "sqlite:///x.db", "memory:", "unix:///run/redis.sock"):
        assert load(write(tmp_path, MINIMAL + f'[gateway]\nstore = "{store}"\n')).gateway_store \
            == store


def test_a_cluster_node_names_its_secret_and_peer_listener_and_runs_one_process(
        tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL))
    assert (cfg.gateway_cluster_secret, cfg.gateway_peer_listen) == ("", None)
    node = MINIMAL + '[gateway]\nstore = "redis://10.0.0.9/0"\nnode = "web-1"\n'
    cfg = load(write(tmp_path, node + 'cluster_secret = "keys/cluster.secret"\n'
                                      'peer_listen = "10.0.0.1:7070"\n'))
    assert (cfg.gateway_cluster_secret, cfg.gateway_peer_listen) == (
        "keys/cluster.secret", ("10.0.0.1", 7070))
    with pytest.raises(ConfigError, match=r"\[gateway\] peer_listen \(line 6\)"):
        load(write(tmp_path, node + 'peer_listen = "10.0.0.1"\n'))
    with pytest.raises(ConfigError, match=r"\[gateway\] processes \(line 6\).*processes = 1"):
        load(write(tmp_path, node + "processes = 2\n"))
    assert load(write(tmp_path, MINIMAL + "[gateway]\nprocesses = 2\n")).gateway_processes == 2


def test_store_files_are_checked_relative_to_the_config_file(tmp_path: Path) -> None:
    text = MINIMAL + '[gateway]\n# shared\nstore = "redis://h/0?password_file=redis.pass"\n'
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(p)
    msg = str(info.value)
    assert "[gateway] store (line 5)" in msg and "no such file" in msg
    assert str(tmp_path / "redis.pass") in msg
    (tmp_path / "redis.pass").write_text("pw\n")
    (tmp_path / "redis.pass").chmod(0o604)
    with pytest.raises(ConfigError, match=r"line 5.*other users can read.*0604"):
        load(p)
    (tmp_path / "redis.pass").chmod(0o600)
    assert load(p).gateway_store.endswith("password_file=redis.pass")


def test_a_cluster_node_on_every_address_must_say_how_to_reach_it(tmp_path: Path) -> None:
    text = MINIMAL + '[gateway]\nlisten = "0.0.0.0:8080"\nstore = "redis://10.0.0.9/0"\n'
    with pytest.raises(ConfigError, match=r"\[gateway\] advertise.*set advertise"):
        load(write(tmp_path, text))
    assert load(write(tmp_path, text + 'advertise = "10.0.0.1"\n')).gateway_advertise \
        == "10.0.0.1"
    load(write(tmp_path, MINIMAL + '[gateway]\nlisten = "0.0.0.0:8080"\n'))  # one node: fine


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("4", 4), ('"auto"', None)])
def test_processes(tmp_path: Path, raw: str, expected: int | None,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    cfg = load(write(tmp_path, f"[gateway]\nprocesses = {raw}\n" + MINIMAL))
    assert cfg.gateway_processes == (expected if expected is not None else 3)


@pytest.mark.parametrize("raw", ["0", "-1", "257", '"many"', "true", "1.5"])
def test_bad_processes(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=r"\[gateway\] processes.*\"auto\""):
        load(write(tmp_path, f"[gateway]\nprocesses = {raw}\n" + MINIMAL))
