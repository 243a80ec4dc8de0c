"""Who may use the proxy: proxy credentials (HTTP Basic, SOCKS5 username/password), client
networks, connections per client, and idle connections — each checked on the wire."""

from __future__ import annotations

import base64
import socket
import subprocess
import time

import pytest
from conftest import running_echo
from fidelity_helpers import NAME
from proxyrun import running_proxy

SECRET = "s3cret"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("access")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
                 "--proxy-auth", f"alice:{SECRET}", "--allow", "127.0.0.0/8",
                 "--max-conns-per-client", "3", "--idle-timeout", "2"]
        with running_proxy(workdir / "proxy", extra=extra) as proxy:
            yield {"proxy": proxy, "port": port, "echo_ca": echo_ca, "workdir": workdir}


def connect_head(guarded, auth: str | None) -> bytes:
    headers = f"CONNECT {NAME}:{guarded['port']} HTTP/1.1\r\nHost: x\r\n"
    if auth is not None:
        headers += f"Proxy-Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n"
    with socket.create_connection(("127.0.0.1", guarded["proxy"].ports["http"]), timeout=10) as s:
        s.sendall((headers + "\r\n").encode())
        return s.recv(4096)


@pytest.mark.parametrize("auth", [None, "alice:wrong", "mallory:s3cret", "alice:"])
def test_http_proxy_without_the_right_credentials_gets_407(guarded, auth):
    answer = connect_head(guarded, auth)
    assert answer.startswith(b"HTTP/1.1 407 ")
    assert b'Proxy-Authenticate: Basic realm="mirror"' in answer


def test_http_proxy_with_the_right_credentials_works(guarded):
    assert connect_head(guarded, f"alice:{SECRET}").startswith(b"HTTP/1.1 200 ")
    proxy = guarded["proxy"]
    result = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                             f"http://alice:{SECRET}@127.0.0.1:{proxy.ports['http']}",
                             "--cacert", str(proxy.ca_cert), f"https://{NAME}:{guarded['port']}/"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout == "200", result.stderr
    assert SECRET not in proxy.log_text()


def socks(guarded, greeting: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", guarded["proxy"].ports["socks5"]), timeout=10)
    sock.sendall(greeting)
    return sock


def test_socks5_demands_username_and_password(guarded):
    with socks(guarded, b"\x05\x01\x00") as sock:        # offers no-auth only
        assert sock.recv(2) == b"\x05\xff"
    with socks(guarded, b"\x05\x02\x00\x02") as sock:
        assert sock.recv(2) == b"\x05\x02"
        sock.sendall(b"\x01\x05alice\x05wrong")
        assert sock.recv(2) == b"\x01\x01"
        assert sock.recv(1) == b""
    with socks(guarded, b"\x05\x01\x02") as sock:
        assert sock.recv(2) == b"\x05\x02"
        sock.sendall(b"\x01\x05alice\x06" + SECRET.encode())
        assert sock.recv(2) == b"\x01\x00"


def test_connections_per_client_are_limited(guarded):
    port = guarded["proxy"].ports["http"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(1) == b""                   # closed at once
        held.pop().close()
        time.sleep(0.3)
        again = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.append(again)
        again.settimeout(0.5)
        with pytest.raises(TimeoutError):                 # this one is served (it waits for us)
            again.recv(1)
    finally:
        for sock in held:
            sock.close()
    assert "already has 3 connections (the limit)" in guarded["proxy"].log_text()


def test_an_idle_connection_is_closed(guarded):
    with socket.create_connection(("127.0.0.1", guarded["proxy"].ports["http"]), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(1) == b""
        assert 1.5 < time.monotonic() - started < 8


def test_clients_outside_the_allowed_networks_are_refused(tmp_path):
    with running_proxy(tmp_path / "proxy", modes=("http",), extra=["--allow", "198.18.0.0/15"]) \
            as proxy:
        with socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=10) as s:
            assert s.recv(100) == b""                     # closed before a byte is read
        time.sleep(0.3)
        assert "not in the allowed client networks" in proxy.log_text()
