"""Capture records made by a real proxy, for tests that read stored records.

``real_capture_records(workdir)`` runs `mirror echo` and `mirror run --mode http`, sends
through the proxy a Chrome-shaped HTTP/2 connection and a Firefox-shaped HTTP/1.1 one
(curl_cffi), a plain HTTP request (httpx) and a request through a CONNECT tunnel to a port where nothing listens, and
returns the four records as the store gives them back (dicts, with their ``id``), in that order.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from conftest import running_echo
from proxyrun import running_proxy

from mirror.store import CaptureStore

NAME = "echo.test"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _records_after(store: Path, after: int, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with CaptureStore(store) as opened:
            ids = [s.id for s in opened.list(limit=None, after_id=after, newest_first=False)]
            if len(ids) >= count:
                return [opened.get(i) for i in ids[:count]]
        time.sleep(0.1)
    raise AssertionError(f"the proxy stored fewer than {count} records after id {after}")


def _last_id(store: Path) -> int:
    with CaptureStore(store) as opened:
        newest = opened.list(limit=1)
    return newest[0].id if newest else 0


def real_capture_records(workdir: Path) -> list[dict]:
    import httpx
    from curl_cffi import CurlHttpVersion, requests

    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", modes=("http",), extra=extra) as proxy:
            records = []
            for family, version in (("chrome", None), ("firefox", CurlHttpVersion.V1_1)):
                before = _last_id(proxy.store)
                with requests.Session(impersonate=family, verify=str(proxy.ca_cert), timeout=20,
                                      proxy=proxy.url("http")) as session:
                    kwargs = {"http_version": version} if version else {}
                    session.get(f"https://{NAME}:{port}/record?family={family}", **kwargs)
                records += _records_after(proxy.store, before, 1)
            before = _last_id(proxy.store)
            with httpx.Client(proxy=proxy.url("http"), timeout=20) as client:
                client.get(f"http://{NAME}:{port}/plain")
            records += _records_after(proxy.store, before, 1)
            before = _last_id(proxy.store)
            with socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=20) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{_closed_port()} HTTP/1.1\r\n\r\n".encode())
                sock.recv(4096)                   # 200: the upstream is connected on first bytes
                sock.sendall(b"GET / HTTP/1.1\r\nHost: closed.test\r\n\r\n")
                sock.recv(4096)                   # 502: nothing listens there
            records += _records_after(proxy.store, before, 1)
    return records
