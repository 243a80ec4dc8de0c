"""Upstream handshakes are driven by the event loop: any number can be in flight, and a
hundred stalled ones do not hold up a connection to a server that answers."""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import running_echo
from fidelity_helpers import NAME
from proxyrun import running_proxy

STALLED = 120          # more than any thread pool the proxy ever had (64)


def connect_through(proxy_port: int, host: str, port: int, cafile: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=30)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=cafile)
    return context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)


def test_stalled_handshakes_do_not_hold_up_others(tmp_path):
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(STALLED * 2)               # completes TCP handshakes, never speaks TLS
    stalled_port = stalled.getsockname()[1]
    waiting, accepted = [], []
    try:
        with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
            extra = ["--upstream-ca", str(echo_ca), "--connect-timeout", "20",
                     "--resolve", f"{NAME}:{port}:127.0.0.1",
                     "--resolve", f"stalled.test:{stalled_port}:127.0.0.1"]
            with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
                cafile = str(proxy.ca_cert)

                def start_stalled(_):
                    sock = connect_through(proxy.ports["http"], "stalled.test", stalled_port,
                                           cafile)
                    sock.setblocking(False)
                    try:
                        sock.do_handshake()   # sends the ClientHello; no answer will come
                    except ssl.SSLWantReadError:
                        pass
                    return sock

                with ThreadPoolExecutor(16) as pool:
                    waiting = list(pool.map(start_stalled, range(STALLED)))
                deadline = time.monotonic() + 10       # all upstream handshakes under way
                while len(accept_pending(stalled, accepted)) < STALLED:
                    assert time.monotonic() < deadline, f"{len(accepted)} upstream connections"
                    time.sleep(0.1)
                started = time.monotonic()
                fast = connect_through(proxy.ports["http"], NAME, port, cafile)
                fast.settimeout(10)
                fast.do_handshake()
                fast.sendall(f"GET /ok HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n"
                             .encode())
                assert fast.recv(4096).startswith(b"HTTP/1.1 200")
                fast.close()
                assert time.monotonic() - started < 3
    finally:
        for sock in waiting + accepted:
            sock.close()
        stalled.close()


def accept_pending(listener: socket.socket, accepted: list) -> list:
    """Accept what is pending (non-blocking) into ``accepted``; returns it."""
    listener.setblocking(False)
    while True:
        try:
            accepted.append(listener.accept()[0])
        except BlockingIOError:
            return accepted
