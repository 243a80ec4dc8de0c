"""`mirror run --workers 2`: two processes on the same port (SO_REUSEPORT), one capture store,
a clean stop, and connections evened out between the two whatever the kernel's spread."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import time
from collections import Counter

from conftest import running_echo
from fidelity_helpers import NAME, last_id
from proxyrun import running_proxy


def listening_pids(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return set(re.findall(r"pid=(\d+)", out))


def test_two_workers_share_the_port_and_the_store(tmp_path):
    from curl_cffi import requests

    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
                 "--workers", "2"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            assert any("workers: 2 processes" in line for line in proxy.lines)
            assert len(listening_pids(proxy.ports["http"])) == 2
            before = last_id(proxy.store)
            for i in range(20):                      # a new connection each time
                with requests.Session(impersonate="firefox", verify=str(proxy.ca_cert),
                                      timeout=20, proxy=proxy.url("http")) as session:
                    assert session.get(f"https://{NAME}:{port}/w{i}").status_code == 200
            deadline = time.monotonic() + 10
            while last_id(proxy.store) - before < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert last_id(proxy.store) - before == 20
        # running_proxy checked the SIGTERM exit status; no worker is left listening
        assert not listening_pids(proxy.ports["http"])


def serving_pids(port: int) -> list[set[str]] | None:
    """For each established connection to ``port``, the pids holding its socket (None while
    one is held by no process: on its way from one worker to the other)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    owners = [set(re.findall(r"pid=(\d+)", line)) for line in out.splitlines() if line.strip()]
    return None if any(not pids for pids in owners) else owners


def settled_split(port: int, expected: int) -> Counter:
    """Connections per worker pid once each of ``expected`` connections has one holder."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        owners = serving_pids(port)
        if owners is not None and len(owners) == expected and all(len(p) == 1 for p in owners):
            return Counter(pid for pids in owners for pid in pids)
        time.sleep(0.01)
    raise AssertionError(f"connections to {port} did not settle: {serving_pids(port)}")


def test_connections_from_many_clients_are_evened_out_between_workers(tmp_path):
    """20 clients, one after the other: the kernel's SO_REUSEPORT hash alone splits them
    10/10 only one time in six; the workers pass connections on until each serves 10, and a
    connection passed on is served by its own listener's mode (a CONNECT answered on the
    HTTP port, a SOCKS5 greeting on the SOCKS port). Three rounds."""
    with (running_echo(tmp_path / "echo-ca") as (port, _),
          running_proxy(tmp_path / "proxy", modes=("http", "socks5"),
                        extra=["--workers", "2"]) as proxy):
        workers = listening_pids(proxy.ports["http"])
        assert len(workers) == 2
        connect = (f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                   .encode())
        rounds = [("http", connect, b"HTTP/1.1 200"), ("socks5", b"\x05\x01\x00", b"\x05\x00"),
                  ("http", connect, b"HTTP/1.1 200")]
        client_ports = set()
        for mode, greeting, answer in rounds:
            proxy_port = proxy.ports[mode]
            clients = []
            try:
                for count in range(1, 21):
                    clients.append(socket.create_connection(("127.0.0.1", proxy_port), 10))
                    client_ports.add(clients[-1].getsockname()[1])
                    split = settled_split(proxy_port, count)
                assert set(split) == workers and sorted(split.values()) == [10, 10], split
                for client in clients:
                    client.sendall(greeting)
                for client in clients:
                    assert client.recv(100).startswith(answer), (mode, split)
            finally:
                for client in clients:
                    client.close()
            settled_split(proxy_port, 0)         # every count back to 0 before the next
        # one record per client, each with the client's own SYN (read by whichever worker
        # served it: a connection passed on keeps its saved SYN)
        records = stored_records(proxy.store, 60)
        assert {r["client"]["port"] for r in records} == client_ports
        assert all(r["tcp"].get("raw") and r["tcp"].get("ja4t") for r in records), records[0]["tcp"]


def stored_records(store, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    rows = []
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                rows = db.execute("SELECT record FROM captures").fetchall()
            if len(rows) >= count:
                break
        time.sleep(0.1)
    assert len(rows) == count, f"{len(rows)} records in {store}, {count} expected"
    return [json.loads(row[0]) for row in rows]
