"""Reverse mode: in front of one origin, clients speak TLS to mirror as if it were the origin,
and the origin still sees the client's fingerprints."""

from __future__ import annotations

import socket

import pytest
from conftest import running_echo
from fidelity_helpers import NAME, compare, last_id, newest_capture
from proxyrun import running_proxy


@pytest.fixture(scope="module")
def reverse(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reverse")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        modes = (f"reverse:https://{NAME}:{port}",)
        with running_proxy(workdir / "proxy", modes=modes, extra=extra) as proxy:
            yield {"port": port, "echo_ca": echo_ca, "proxy": proxy,
                   "listen": proxy.ports["reverse"]}


def get(reverse, family: str, direct: bool) -> dict:
    from curl_cffi import CurlOpt, requests

    port = reverse["port"] if direct else reverse["listen"]
    ca = reverse["echo_ca"] if direct else reverse["proxy"].ca_cert
    with requests.Session(impersonate=family, verify=str(ca), timeout=20, curl_options={
            CurlOpt.RESOLVE: [f"{NAME}:{port}:127.0.0.1"]}) as session:
        # the same authority both ways, so the h2 header lists compare
        session.headers["Host"] = f"{NAME}:{reverse['port']}"
        return session.get(f"https://{NAME}:{port}/reverse").json()


@pytest.mark.parametrize("family", ["chrome", "firefox", "safari"])
def test_the_origin_sees_the_client_through_reverse_mode(reverse, family):
    direct = get(reverse, family, True)
    before = last_id(reverse["proxy"].store)
    proxied = get(reverse, family, False)
    capture = newest_capture(reverse["proxy"].store, before)
    assert capture["mode"] == "reverse"
    assert capture["destination"]["source"] == "reverse"
    direct["http2"]["request"]["headers"] = [h for h in direct["http2"]["request"]["headers"]
                                             if h[0] != ":authority"]
    proxied["http2"]["request"]["headers"] = [h for h in proxied["http2"]["request"]["headers"]
                                              if h[0] != ":authority"]
    compare(f"curl_cffi {family}", "reverse", direct, proxied, capture)


def test_plain_http_to_a_tls_reverse_listener_gets_a_clear_400(reverse):
    with socket.create_connection(("127.0.0.1", reverse["listen"]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 ") and b"must speak TLS" in response
