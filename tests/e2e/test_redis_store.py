"""What only the Redis store can do wrong: its URL, a lost or restarted Redis, passwords,
TLS, unix sockets, replicas, and other data in the same Redis.

Every server here is a real redis-server started by the test on a free loopback port (or a
unix socket in the test's directory) and stopped at its end (tests/redisserver.py).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import trustme
from redisserver import RedisServer, free_port

from holdover.state import PinRecord, RedisStore, RevisionRecord, StoreError, check_store
from holdover.state.url import check_files, parse_redis_url

PASSWORD = "s3cret-Pw"


def run(coro):
    return asyncio.run(coro)


def pin(i: int) -> PinRecord:
    return PinRecord(key=f"k{i:04d}", worker="w1", incarnation="w1-a", revision="v1",
                     created_at=1.0 + i, last_seen=2.0 + i, expires_at=None)


def refused(store: RedisStore, *needles: str, within: float = 5.0) -> str:
    """The StoreError message of opening ``store``; it comes quickly and hides passwords."""
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        run(store.open())
    assert time.monotonic() - started < within
    message = str(info.value)
    assert PASSWORD not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers of this test's own; all are stopped at its end."""
    started: list[RedisServer] = []

    def start(**kw: object) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", **kw)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def cluster() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# -- the URL ---------------------------------------------------------------------------


def test_url_forms() -> None:
    u = parse_redis_url("redis://:p%40ss@10.0.0.9:6380/3?cluster=shop&timeout=500ms")
    assert (u.scheme, u.host, u.port, u.db, u.password) == ("redis", "10.0.0.9", 6380, 3,
                                                            "p@ss")
    assert (u.cluster, u.timeout, u.prefix) == ("shop", 0.5, "holdover:{shop}:")
    assert u.display == "redis://:***@10.0.0.9:6380/3"
    assert "p@ss" not in repr(u) and "p@ss" not in repr(RedisStore(u))
    d = parse_redis_url("redis://redis.internal")
    assert (d.port, d.db, d.cluster, d.timeout, d.password) == (6379, 0, "default", 2.0, None)
    s = parse_redis_url("rediss://app:pw@[::1]/0?ca_file=ca.pem&cert_file=c.pem&key_file=k.pem")
    assert (s.username, s.host, s.ca_file, s.key_file) == ("app", "::1", "ca.pem", "k.pem")
    assert s.display == "rediss://app:***@[::1]:6379/0"
    x = parse_redis_url("unix:///run/redis/redis.sock?db=2&password_file=/etc/holdover/pw")
    assert (x.socket_path, x.db, x.password_file, x.host) == ("/run/redis/redis.sock", 2,
                                                              "/etc/holdover/pw", None)
    assert x.display == "unix://:***@/run/redis/redis.sock?db=2"


@pytest.mark.parametrize(("url", "needle"), [
    ("redis://h:99999/0", "out of range"),
    ("redis://h:0/0", "out of range"),
    ("redis://h/x", "database must be a number"),
    ("redis://h/0/1", "database number"),
    ("redis:///0", "no host"),
    ("redis://h/0?ca_file=ca.pem", "unknown parameter 'ca_file'"),
    ("redis://h/0?cluster=a&cluster=b", "given twice"),
    ("redis://h/0?cluster=", "is empty"),
    ("redis://h/0?cluster=no%20spaces", "cluster must be"),
    ("redis://h/0?timeout=0", "timeout must be"),
    ("redis://h/0?timeout=forever", "timeout must be"),
    ("rediss://h/0?cert_file=c.pem", "go together"),
    ("unix://relative.sock", "three slashes"),
    ("unix:///", "absolute socket path"),
    (f"redis://:{PASSWORD}@h/0?password_file=pw", "give one of them"),
    (f"redis://:{PASSWORD}@h:port/0", "percent-encoded"),
    (f"redis://:{PASSWORD[:3]}/{PASSWORD[3:]}@h/0", "percent-encoded"),
    ("redis://h/0#frag", "fragment"),
])
def test_url_errors_say_what_is_wrong_and_never_show_a_password(url: str, needle: str) -> None:
    with pytest.raises(StoreError) as info:
        parse_redis_url(url)
    message = str(info.value)
    assert needle in message
    assert PASSWORD not in message and PASSWORD[3:] not in message
    with pytest.raises(StoreError):
        check_store(url)  # what the config check runs


def test_files_the_url_names_must_exist_and_secrets_be_private(tmp_path: Path) -> None:
    url = parse_redis_url("redis://h/0?password_file=pw.txt")
    with pytest.raises(StoreError, match="no such file"):
        check_files(url, tmp_path)
    (tmp_path / "pw.txt").write_text(f"{PASSWORD}\n")
    os.chmod(tmp_path / "pw.txt", 0o644)
    with pytest.raises(StoreError, match=r"other users can read.*0644.*chmod 600"):
        check_files(url, tmp_path)
    os.chmod(tmp_path / "pw.txt", 0o640)  # shared with a service's group: fine
    check_files(url, tmp_path)
    with pytest.raises(StoreError, match="not a regular file"):
        check_files(parse_redis_url(f"rediss://h/0?ca_file={tmp_path}"), None)


# -- a lost Redis ----------------------------------------------------------------------


def test_no_redis_is_a_quick_store_error_naming_the_url() -> None:
    port = free_port()  # nobody listens there
    store = RedisStore(f"redis://:{PASSWORD}@127.0.0.1:{port}/0?timeout=1s")
    message = refused(store, f"127.0.0.1:{port}", "cannot reach Redis", within=3)
    assert "redis://:***@" in message
    with pytest.raises(StoreError, match="not open"):
        run(store.load_pins())


def test_a_hung_redis_fails_every_call_within_the_timeout(servers) -> None:
    server = servers()

    async def main() -> None:
        async with RedisStore(server.url(cluster(), query="timeout=500ms")) as store:
            await store.put_pins([pin(1)])
            server.pause()  # SIGSTOP: connected, but no answer ever comes
            try:
                started = time.monotonic()
                results = await asyncio.gather(
                    store.load_pins(), store.get_meta("x"), store.add_event("k", "m"),
                    store.claim_pin(pin(2)), store.live_nodes(), return_exceptions=True)
                elapsed = time.monotonic() - started
            finally:
                server.resume()
            assert all(isinstance(r, StoreError) for r in results), results
            assert "no answer within 0.5s" in str(results[0])
            # queued calls count their wait too: five calls, not five timeouts
            assert elapsed < 3, elapsed
            # Redis answers again: the store works without being reopened
            assert [p.key for p in await store.load_pins()] == ["k0001"]
    run(main())


def test_a_restarted_empty_redis_is_used_again_after_reconnecting(servers) -> None:
    server = servers()

    async def main() -> None:
        async with RedisStore(server.url(cluster(), query="timeout=1s")) as store:
            await store.put_pins([pin(i) for i in range(5)])
            old_event = await store.add_event("deploy", "v1")
            old_change = await store.publish_change("web-1", "pin", {"n": 1})
            await store.heartbeat("web-1", {}, ttl=60)

            server.stop()
            started = time.monotonic()
            with pytest.raises(StoreError, match="cannot reach Redis"):
                await store.load_pins()
            assert time.monotonic() - started < 3

            server.start()  # same port, no persistence: everything is gone
            assert await store.load_pins() == []
            assert await store.live_nodes() == []
            await store.put_pins([pin(9)])
            assert [p.key for p in await store.load_pins()] == ["k0009"]
            assert (await store.claim_pin(pin(10))) == pin(10)  # scripts are loaded again
            # ids are never reused, even by a Redis that lost them
            assert (await store.add_event("deploy", "v2")).id > old_event.id
            # a consumer from before the loss is told to reload
            batch = await store.read_changes(old_change.seq)
            assert batch.missed
            new_change = await store.publish_change("web-1", "pin", {"n": 2})
            assert new_change.seq > old_change.seq
            assert (await store.read_changes(batch.position)).changes == [new_change]
    run(main())


# -- passwords, TLS, unix sockets --------------------------------------------------------


def test_a_password_from_the_url_or_from_a_file(servers, tmp_path: Path) -> None:
    server = servers(args=("--requirepass", PASSWORD))

    async def works(url: str, base_dir: Path | None = None) -> None:
        async with RedisStore(url, base_dir=base_dir) as store:
            await store.set_meta("k", "v")
            assert await store.get_meta("k") == "v"

    run(works(server.url(cluster(), userinfo=f":{PASSWORD}")))
    run(works(server.url(cluster(), userinfo=f"default:{PASSWORD}")))  # an ACL user
    refused(RedisStore(server.url(cluster(), userinfo=":wrong-pw")), "authentication failed")
    refused(RedisStore(server.url(cluster())), "authentication failed", "requires a password")

    secret = tmp_path / "conf" / "redis.pass"
    secret.parent.mkdir()
    secret.write_text(f"{PASSWORD}\n")  # as `echo pw > file` writes it
    os.chmod(secret, 0o600)
    run(works(server.url(cluster(), query="password_file=redis.pass"), base_dir=secret.parent))
    run(works(server.url(cluster(), query=f"password_file={secret}")))
    os.chmod(secret, 0o644)
    refused(RedisStore(server.url(cluster(), query=f"password_file={secret}")),
            str(secret), "mode 0644", "chmod 600")
    secret.write_text("")
    os.chmod(secret, 0o600)
    refused(RedisStore(server.url(cluster(), query=f"password_file={secret}")), "empty")


def test_a_unix_socket_url(servers, tmp_path: Path) -> None:
    server = servers(unix=True)

    async def main() -> None:
        url = f"unix://{server.socket_path}?db=1&cluster={cluster()}"
        async with RedisStore(url) as store:
            await store.put_pins([pin(1)])
            assert await store.load_pins() == [pin(1)]
        raw = redis.Redis(unix_socket_path=str(server.socket_path), db=1)
        assert raw.hlen(f"{store.prefix}pins") == 1  # db=1 was used
        raw.close()
    run(main())
    refused(RedisStore(f"unix://{tmp_path}/missing.sock"), "cannot reach Redis",
            f"{tmp_path}/missing.sock")


def tls_files(tmp_path: Path) -> tuple[trustme.CA, dict[str, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem",
             "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    return ca, files


def tls_server(servers, files: dict[str, Path], auth_clients: str) -> RedisServer:
    return servers(tls=True, args=("--tls-cert-file", str(files["cert"]), "--tls-key-file",
                                   str(files["key"]), "--tls-ca-cert-file", str(files["ca"]),
                                   "--tls-auth-clients", auth_clients))


def test_rediss_with_a_private_ca(servers, tmp_path: Path) -> None:
    _, files = tls_files(tmp_path)
    server = tls_server(servers, files, "no")

    async def main() -> None:
        url = server.url(cluster(), scheme="rediss", query="ca_file=ca.pem")
        async with RedisStore(url, base_dir=tmp_path) as store:
            await store.add_event("deploy", "over TLS")
            assert [e.message for e in await store.events()] == ["over TLS"]
    run(main())
    # the system's CAs do not trust it, and plain redis:// gets no answer it understands
    refused(RedisStore(server.url(cluster(), scheme="rediss")), "cannot reach Redis",
            "certificate verify failed")
    refused(RedisStore(server.url(cluster(), query="timeout=1s")), f":{server.port}")


def test_rediss_with_a_client_certificate(servers, tmp_path: Path) -> None:
    ca, files = tls_files(tmp_path)
    server = tls_server(servers, files, "yes")
    client = ca.issue_cert("holdover-node")
    client.cert_chain_pems[0].write_to_path(tmp_path / "client.pem")
    client.private_key_pem.write_to_path(tmp_path / "client.key")
    os.chmod(tmp_path / "client.key", 0o600)
    query = "ca_file=ca.pem&cert_file=client.pem&key_file=client.key"

    async def main() -> None:
        async with RedisStore(server.url(cluster(), scheme="rediss", query=query),
                              base_dir=tmp_path) as store:
            await store.heartbeat("web-1", {"advertise": "10.0.0.1"}, ttl=5)
            assert [n.name for n in await store.live_nodes()] == ["web-1"]
    run(main())
    refused(RedisStore(server.url(cluster(), scheme="rediss", query="ca_file=ca.pem"),
                       base_dir=tmp_path), "cannot reach Redis")
    os.chmod(tmp_path / "client.key", 0o644)  # a private key others can read is refused
    refused(RedisStore(server.url(cluster(), scheme="rediss", query=query),
                       base_dir=tmp_path), "client.key", "mode 0644")


# -- other Redis states, other data ------------------------------------------------------


def test_a_read_only_replica_is_refused_clearly(servers) -> None:
    replica = servers(args=("--replicaof", "127.0.0.1", str(free_port())))
    refused(RedisStore(replica.url(cluster())), "read-only replica", "primary")


def test_a_newer_or_foreign_layout_is_refused(redis_server: RedisServer) -> None:
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        for found, needle in (("2", "newer holdover"), ("hello", "not a holdover layout")):
            name = cluster()
            raw.set(f"holdover:{{{name}}}:layout", found)
            refused(RedisStore(redis_server.url(name)), needle)
            assert raw.get(f"holdover:{{{name}}}:layout") == found  # left as it was
    finally:
        raw.close()


def test_clusters_in_one_redis_keep_apart_under_their_prefix(redis_server: RedisServer) -> None:
    a_name, b_name = cluster(), cluster()

    async def main() -> None:
        async with RedisStore(redis_server.url(a_name)) as a, \
                RedisStore(redis_server.url(b_name)) as b:
            await a.put_pins([pin(1)])
            await a.add_event("deploy", "a")
            await a.heartbeat("web-1", {}, ttl=30)
            await a.publish_change("web-1", "pin")
            await a.put_revision(RevisionRecord(
                id="va", state="active", command="python app.py", cwd="/srv", env={},
                workers=1, created_at=1.0, release_dir=None, updated_at=1.0))
            await a.set_meta("active", "va")
            assert await b.load_pins() == [] and await b.events() == []
            assert await b.live_nodes() == [] and await b.list_revisions() == []
            assert await b.get_meta("active") is None
            assert (await b.read_changes(0)).changes == []
    run(main())
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        keys = set(raw.scan_iter(match=f"holdover:{{{a_name}}}:*"))
        assert {f"holdover:{{{a_name}}}:{k}" for k in ("pins", "ev", "nodes", "feed", "rev",
                                                        "meta", "layout")} <= keys
        assert all(k.startswith(f"holdover:{{{b_name}}}:")
                   for k in raw.scan_iter(match=f"*{b_name}*"))
    finally:
        raw.close()


ACL_RULES = ("on", "resetchannels", "-@all", "+@read", "+@write", "+@scripting",
             "+@connection", "-@dangerous", "+time")  # as docs/cluster.md advises


def test_an_acl_user_limited_to_its_prefix_can_do_everything(redis_server: RedisServer) -> None:
    """Every key the store touches is under its prefix, and no command beyond the ACL's."""
    name, user = cluster(), f"u{uuid.uuid4().hex[:8]}"
    raw = redis.Redis(port=redis_server.port)
    raw.acl_setuser(user, reset=True)
    raw.execute_command("ACL", "SETUSER", user, f">{PASSWORD}", f"~holdover:{{{name}}}:*",
                        *ACL_RULES)

    async def main() -> None:
        async with RedisStore(redis_server.url(name, userinfo=f"{user}:{PASSWORD}")) as s:
            await s.put_revision(RevisionRecord(
                id="v1", state="active", command="python app.py", cwd="/srv", env={},
                workers=1, created_at=1.0, release_dir=None, updated_at=1.0))
            await s.list_revisions()
            await s.put_pins([pin(i) for i in range(3000)])
            assert len(await s.load_pins()) == 3000
            await s.delete_pins([pin(0).key])
            await s.add_event("deploy", "v1")
            await s.events(kind="deploy")
            await s.events(after_id=1)
            await s.prune_events(0)
            await s.set_meta("active", "v1")
            await s.get_meta("active")
            await s.heartbeat("web-1", {}, ttl=5)
            await s.live_nodes()
            await s.forget_node("web-1")
            change = await s.publish_change("web-1", "pin")
            await s.read_changes(0)
            await s.read_changes(change.seq, wait=0.05)
            await s.feed_position()
            await s.claim_pin(pin(5000))
            await s.get_pin(pin(5000).key)
            await s.touch_pins([(pin(5000).key, "w1-a", 9.0, None)])
            await s.end_pins([(pin(5000).key, "w1-a")])
    try:
        run(main())
        # another cluster's keys are out of its reach
        refused(RedisStore(redis_server.url(cluster(), userinfo=f"{user}:{PASSWORD}")),
                "may not do this (ACL)")
    finally:
        raw.acl_deluser(user)
        raw.close()


def test_damaged_data_is_a_clear_store_error(redis_url: str) -> None:
    async def main() -> None:
        async with RedisStore(redis_url) as store:
            await store.put_pins([pin(1)])
            raw = redis.Redis(port=store.url.port)
            raw.hset(f"{store.prefix}pins", "k0002", "not a pin")
            raw.hset(f"{store.prefix}rev", "v1", "{\"id\": 1}")
            raw.close()
            with pytest.raises(StoreError, match="read pins: stored data is damaged"):
                await store.load_pins()
            with pytest.raises(StoreError, match="damaged"):
                await store.get_revision("v1")
            assert await store.get_pin("k0001") == pin(1)  # the rest still reads
    run(main())
