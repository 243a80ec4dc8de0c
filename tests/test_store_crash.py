"""What a crash of the proxy loses: `mirror run` killed with SIGKILL right after N sequential
proxied requests keeps every one of their records, in SQLite and in PostgreSQL.

Each request is a new connection through the explicit proxy to a real plain-HTTP origin; the
client reads the response, ends its side and waits for the proxy to close the connection
(the connection's end, as a client sees it). The proxy is killed the moment the last one
ends; its store process, which had each record before the client saw the close, commits them
and exits.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from origin import running_origin
from proxyrun import start_proxy


def store_children(pid: int) -> list[int]:
    """The store processes the proxy ``pid`` started (children running store_process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"store_process" in cmdline:
            found.append(int(entry.name))
    return found


def request_and_wait_for_close(proxy_port: int, origin_port: int, index: int) -> None:
    """One connection: a request, its whole response, our FIN, then the proxy's close."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(f"GET http://127.0.0.1:{origin_port}/bytes/{index % 50 + 1} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{origin_port}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):              # until the proxy closes its side
            pass


def kill_and_count(proc: subprocess.Popen, count) -> int:
    """SIGKILL the proxy at once; wait for its store process to finish; the records kept."""
    children = store_children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert children, "no store process found"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{c}").exists() for c in children), "the store process lingers"
    return count()


def sqlite_count(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM captures").fetchone()[0]


@pytest.mark.parametrize("requests", [100, 300])
def test_sigkill_after_sequential_requests_loses_no_sqlite_record(tmp_path, requests):
    store = tmp_path / "captures.sqlite3"
    with running_origin(tmp_path / "origin", plain=True) as origin:
        proc, port, _ = start_proxy(tmp_path / "proxy", str(store))
        try:
            for i in range(requests):
                request_and_wait_for_close(port, origin.plain_port, i)
            kept = kill_and_count(proc, lambda: sqlite_count(store))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert kept == requests


def test_sigkill_after_sequential_requests_loses_no_postgresql_record(tmp_path, pg):
    url = pg.new_database()
    with running_origin(tmp_path / "origin", plain=True) as origin:
        proc, port, _ = start_proxy(tmp_path / "proxy", url)
        try:
            for i in range(100):
                request_and_wait_for_close(port, origin.plain_port, i)
            kept = kill_and_count(proc, lambda: pg.sql(url, "SELECT count(*) FROM captures")[0][0])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert kept == 100
    assert os.path.exists(pg.data)
