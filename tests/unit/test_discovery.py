"""Workers another engine runs, without a socket: parsing, the discovery plan, the life
of an external worker with a scripted health check, and the settings' errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdover import config
from holdover.core.discovery import (
    Discover,
    Target,
    parse_discover,
    parse_dns_server,
    parse_upstream,
    plan_discovery,
)
from holdover.core.errors import Refused
from holdover.core.lifecycle import PROCESS_GONE, WorkerState
from holdover.supervisor.external import ExternalWorker
from holdover.supervisor.worker import WorkerSpec

# -- addresses and names --------------------------------------------------------------


@pytest.mark.parametrize(("url", "target"), [
    ("http://10.1.0.5:8000", Target("10.1.0.5", 8000)),
    ("http://10.1.0.5", Target("10.1.0.5", 80)),
    ("http://10.1.0.5:8000/", Target("10.1.0.5", 8000)),
    ("http://[fd00::6]:8000", Target("fd00::6", 8000)),
    ("http://App-1.Internal:9000", Target("app-1.internal", 9000)),
])
def test_upstream_urls(url: str, target: Target) -> None:
    assert parse_upstream(url) == target


@pytest.mark.parametrize(("url", "why"), [
    ("https://10.1.0.5:8000", "plain HTTP"),
    ("10.1.0.5:8000", "expected a worker URL"),
    ("http://10.1.0.5:8000/app", "only a host and a port"),
    ("http://u:p@10.1.0.5:8000", "only a host and a port"),
    ("http://10.1.0.5:99999", "1 to 65535"),
    ("http://10.1.0.5:0", "1 to 65535"),
    ("http://bad_host:80", "neither an IP address nor a host name"),
    ("", "expected a worker URL"),
])
def test_bad_upstream_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_upstream(url)


def test_target_urls_bracket_ipv6() -> None:
    assert Target("fd00::6", 80).url == "http://[fd00::6]:80"
    assert Target("10.0.0.1", 81).url == "http://10.0.0.1:81"


def test_dns_servers() -> None:
    assert parse_dns_server("10.96.0.10") == ("10.96.0.10", 53)
    assert parse_dns_server("10.96.0.10:5353") == ("10.96.0.10", 5353)
    assert parse_dns_server("[fd00::a]:53") == ("fd00::a", 53)
    assert parse_dns_server("fd00::a") == ("fd00::a", 53)
    for bad in ("kube-dns", "10.0.0.1:0", "10.0.0.1:70000", 53):
        with pytest.raises(ValueError):
            parse_dns_server(bad)


def test_discover_templates() -> None:
    d = parse_discover("dns+srv:_http._tcp.app-{revision}.default.svc.cluster.local")
    assert d.srv and d.name("v2") == "_http._tcp.app-v2.default.svc.cluster.local"
    assert str(d.of("v2")) == "dns+srv:_http._tcp.app-v2.default.svc.cluster.local"
    a = parse_discover("dns:app-{revision}.example:8000")
    assert a == Discover(False, "app-{revision}.example", 8000)
    assert parse_discover(str(a.of("v3")), template=False) == a.of("v3")
    with pytest.raises(ValueError, match="not a DNS name"):
        a.name("v1 2")
    with pytest.raises(ValueError, match="not a DNS name"):
        a.name("v1..2")


@pytest.mark.parametrize(("value", "why"), [
    ("dns+srv:_http._tcp.app.example", "must contain {revision}"),
    ("dns:app-{revision}.example", "dns:NAME:PORT"),
    ("dns:app-{revision}.example:0", "port from 1 to 65535"),
    ("srv:app-{revision}", "expected"),
    ("dns:app-{revision}-{worker}.example:80", "only placeholder"),
    ("dns:app {revision}.example:80", "not a DNS name"),
])
def test_bad_discover_values_say_why(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_discover(value)


# -- what a DNS answer changes ----------------------------------------------------------

T = [Target(f"10.0.0.{i}", 8000) for i in range(1, 6)]


def test_plan_adds_leaves_and_rejoins() -> None:
    known = [("v1-1", T[0], True), ("v1-2", T[1], True), ("v1-3", T[2], False)]
    plan = plan_discovery(known, {T[1], T[2], T[3]})
    assert plan.add == (T[3],) and plan.leave == ("v1-1",) and plan.rejoin == ("v1-3",)
    assert not plan_discovery(known[:2], {T[0], T[1]})


def test_an_empty_answer_never_empties_a_revision() -> None:
    plan = plan_discovery([("v1-1", T[0], True)], set())
    assert not plan and plan.leave == ()


@given(st.lists(st.tuples(st.sampled_from(T), st.booleans()), unique_by=lambda x: x[0]),
       st.sets(st.sampled_from(T)))
def test_plan_properties(known_spec: list[tuple[Target, bool]], found: set[Target]) -> None:
    known = [(f"w{i}", t, listed) for i, (t, listed) in enumerate(known_spec)]
    plan = plan_discovery(known, found)
    if not found:
        assert not plan
        return
    by_id = {wid: (t, listed) for wid, t, listed in known}
    # after the plan, exactly the found addresses are listed, each by one worker
    listed = {t for wid, (t, ok) in by_id.items()
              if (ok and wid not in plan.leave) or wid in plan.rejoin} | set(plan.add)
    assert listed == found
    assert not set(plan.add) & {t for t, _ in by_id.values()}
    assert all(not by_id[w][1] for w in plan.rejoin) and all(by_id[w][1] for w in plan.leave)


# -- an external worker's life, its health checks scripted --------------------------------


def spec(tmp: Path) -> WorkerSpec:
    return WorkerSpec(revision="v1", command="", cwd=tmp, env={}, health_path="/healthz",
                      health_interval=0.01, health_timeout=0.5, health_failures=2,
                      start_timeout=0.3, stop_grace=1, backoff_max=1,
                      crash_loop_restarts=5, crash_loop_window=60, log_dir=tmp / "logs",
                      log_max_bytes=1 << 20, log_backups=1, host="10.0.0.1")


class Scripted(ExternalWorker):
    """An external worker whose health checks answer from a script, not a socket."""

    answers: Iterator[str | None]

    async def probe(self) -> str | None:
        await asyncio.sleep(0)
        return next(self.answers, None)


def scripted(tmp: Path, answers: list[str | None]) -> tuple[Scripted, list[WorkerState]]:
    seen: list[WorkerState] = []
    w = Scripted(id="v1-1", spec=spec(tmp), target=Target("10.0.0.1", 8000),
                 on_state=lambda w: seen.append(w.state))
    w.answers = iter(answers)
    return w, seen


def test_external_worker_ready_unhealthy_and_back_with_a_new_incarnation(tmp_path: Path
                                                                          ) -> None:
    async def main() -> tuple[Scripted, list[WorkerState], list[str]]:
        # answers at once, then fails twice (unhealthy), then answers again
        w, seen = scripted(tmp_path, [None, "refused", "refused", "refused", None])
        incarnations: list[str] = []
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(w.run(ready))
        assert await ready is True
        incarnations.append(w.incarnation)
        while not (w.state is WorkerState.READY and w.incarnation != incarnations[0]):
            await asyncio.sleep(0.005)
        incarnations.append(w.incarnation)
        await w.stop()
        await task
        return w, seen, incarnations

    w, seen, incarnations = asyncio.run(main())
    assert WorkerState.UNHEALTHY in seen and WorkerState.UNHEALTHY in PROCESS_GONE
    gone = seen.index(WorkerState.UNHEALTHY)
    assert seen[gone + 1:gone + 3] == [WorkerState.STARTING, WorkerState.READY]
    assert incarnations[0] != incarnations[1]  # nothing pinned before can name it
    assert seen[-2:] == [WorkerState.STOPPING, WorkerState.STOPPED]
    assert w.state is WorkerState.STOPPED
    log = w.log_path.read_text()
    assert "health check failed (2/2): refused" in log and "ready in" in log


def test_external_worker_that_never_answers_fails_its_start(tmp_path: Path) -> None:
    async def main() -> tuple[bool, Scripted]:
        w, _ = scripted(tmp_path, ["cannot connect: refused"] * 10_000)
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(w.run(ready))
        ok = await ready
        await task
        return ok, w

    ok, w = asyncio.run(main())
    assert ok is False and w.state is WorkerState.FAILED
    assert "did not answer its health check within 0.3s: cannot connect" in w.log_tail()


def test_external_worker_cannot_be_restarted_and_leaves_when_unlisted(tmp_path: Path
                                                                      ) -> None:
    w, _ = scripted(tmp_path, [])
    assert w.external and not w.leaving and w.port == 8000 and w.url == "http://10.0.0.1:8000"
    with pytest.raises(Refused, match="another engine"):
        w.restart()
    w.listed = False
    assert w.leaving
    asyncio.run(w.stop())  # never ran: stopped at once
    assert w.state is WorkerState.STOPPED


# -- the settings ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fragments", "line"), [
    ('[app]\nupstreams = ["http://10.0.0.1:80", "ftp://x"]\n',
     ["[app] upstreams", "item 2", "ftp://x"], 2),
    ('[app]\nupstreams = "http://10.0.0.1:80"\n', ["[app] upstreams", "expected a list"], 2),
    ('[app]\ndiscover = "dns+srv:_http._tcp.app.example"\n',
     ["[app] discover", "{revision}"], 2),
    ('[app]\ndiscover = "dns:app-{revision}.x:80"\ndns_servers = ["kube-dns"]\n',
     ["[app] dns_servers", "item 1", "IP address"], 3),
    ('[app]\nupstreams = ["http://10.0.0.1:80"]\ndiscover_interval = "0s"\n',
     ["[app] discover_interval", "> 0"], 3),
    ('[app]\nupstreams = ["http://10.0.0.1:80"]\non_retire = "kubectl \'scale"\n',
     ["[app] on_retire", "cannot split"], 3),
    ('[app]\nworkers = 2\non_retire = "x"\n', ["[app]", "missing required key 'command'",
                                                "upstreams or discover"], 1),
])
def test_settings_errors_name_key_and_line(tmp_path: Path, text: str, fragments: list[str],
                                           line: int) -> None:
    p = tmp_path / "holdover.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(p)
    message = str(info.value)
    for f in fragments:
        assert f in message, message
    assert f"(line {line})" in message, message


def test_command_is_optional_with_upstreams_or_discover(tmp_path: Path) -> None:
    p = tmp_path / "holdover.toml"
    p.write_text('[app]\nupstreams = ["http://10.1.0.5:8000"]\n')
    cfg = config.load(p)
    assert cfg.app_command == "" and cfg.app_upstreams == ["http://10.1.0.5:8000"]
    assert cfg.app_dns_servers == [] and cfg.app_discover_interval == 5.0
    assert cfg.app_hook_timeout == 60.0 and cfg.app_on_retire == ""
    p.write_text('[app]\ndiscover = "dns+srv:_http._tcp.app-{revision}.svc"\n'
                 'dns_servers = ["10.96.0.10:53"]\n')
    cfg = config.load(p)
    assert cfg.app_dns_servers == [("10.96.0.10", 53)]
