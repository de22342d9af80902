"""TLS termination on the public side, with a throwaway CA (trustme)."""

from __future__ import annotations

import http.client
import json
import re
import ssl

import pytest
import trustme
from conftest import GatewayProcess, free_port, wait_for


@pytest.fixture(params=[1, 2], ids=["1-process", "2-processes"])
def tls_gateway(tmp_path, request):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    redirect_port = free_port()
    gw = GatewayProcess(tmp_path, workers=1, mode="sessions", extra_gateway=f"""
        tls_cert = "server.pem"
        tls_key = "server.pem"
        redirect_listen = "127.0.0.1:{redirect_port}"
        processes = {request.param}
        """)
    m = wait_for(lambda: re.search(r"serving https://127\.0\.0\.1:(\d+)/", gw.log)
                 or gw.proc.poll() is not None, what="TLS gateway")
    assert gw.proc.poll() is None, gw.log
    gw.port = int(m.group(1))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    yield gw, ctx, redirect_port
    gw.stop()


def test_https_is_terminated_and_forwarded_as_https(tls_gateway):
    gw, ctx, _ = tls_gateway
    c = http.client.HTTPSConnection("localhost", gw.port, context=ctx, timeout=10)
    c.request("GET", "/echo")
    r = c.getresponse()
    body = json.loads(r.read())
    headers = {k.lower(): v for k, v in body["headers"]}
    assert r.status == 200
    assert headers["x-forwarded-proto"] == "https"
    assert "proto=https" in headers["forwarded"]
    # holdover's own affinity cookie is marked Secure over TLS.
    cookie = r.getheader("Set-Cookie")
    assert cookie and cookie.startswith("holdover_pin=") and "Secure" in cookie


def test_untrusted_client_fails_handshake(tls_gateway):
    gw, _, _ = tls_gateway
    c = http.client.HTTPSConnection("localhost", gw.port, context=ssl.create_default_context(),
                                    timeout=10)
    with pytest.raises(ssl.SSLError):
        c.request("GET", "/echo")


def test_plain_http_is_redirected_to_https(tls_gateway):
    gw, _, redirect_port = tls_gateway
    c = http.client.HTTPConnection("127.0.0.1", redirect_port, timeout=10)
    c.request("POST", "/echo?a=1", body=b"x", headers={"Host": "shop.example:80"})
    r = c.getresponse()
    assert r.status == 308
    assert r.getheader("Location") == f"https://shop.example:{gw.port}/echo?a=1"


def test_tls_settings_are_validated(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "holdover.toml"
    cfg.write_text('[gateway]\ntls_cert = "missing.pem"\ntls_key = "missing.pem"\n'
                   '[app]\ncommand = "x {port}"\n')
    out = subprocess.run([sys.executable, "-m", "holdover", "check", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "tls_cert" in out.stderr and "no such file" in out.stderr and "line 2" in out.stderr
