import http.client
import json


def test_echo_roundtrip(gateway):
    c = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    c.request("GET", "/echo?x=1", headers={"X-Test": "yes"})
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 200
    assert body["path"] == "/echo?x=1"
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers["x-test"] == "yes"
    assert headers["x-forwarded-for"] == "127.0.0.1"
