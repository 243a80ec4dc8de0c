"""`mirror run --metrics`: Prometheus text scraped from a running proxy while real clients
go through it to a real server (`mirror echo`), with one process and with --workers 2."""

from __future__ import annotations

import re
import threading
import time

from conftest import running_echo
from fidelity_helpers import NAME
from metrics_scrape import scrape, value
from proxyrun import running_proxy


def total(samples, name: str, **labels) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, have), v in samples.items()
               if n == name and all(item in have for item in labels.items()))


def metrics_url(proxy) -> str:
    line = next(line for line in proxy.lines if line.startswith("metrics: "))
    return line.split()[1]


def get(proxy, port: int, path: str) -> int:
    from curl_cffi import requests

    with requests.Session(impersonate="firefox", verify=str(proxy.ca_cert), timeout=20,
                          proxy=proxy.url("http")) as session:
        return session.get(f"https://{NAME}:{port}{path}").status_code


def test_counters_move_while_traffic_goes_through(tmp_path):
    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
                 "--metrics", "0", "--gateway-name", "gw-metrics"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            url = metrics_url(proxy)
            assert url.startswith("http://127.0.0.1:")          # a bare port: loopback only
            rewriting = any("SYN rewriting)" in line for line in proxy.lines)
            before = scrape(url)
            assert value(before, "mirror_connections_total", mode="http", outcome="ok") == 0
            done = threading.Event()
            statuses = []

            def traffic() -> None:
                try:
                    for i in range(12):
                        statuses.append(get(proxy, port, f"/m{i}"))
                finally:
                    done.set()

            worker = threading.Thread(target=traffic)
            worker.start()
            during = []
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                during.append(value(scrape(url), "mirror_connections_total", mode="http",
                                    outcome="ok"))
                time.sleep(0.05)
            worker.join(60)
            assert statuses == [200] * 12
            # scraped while the requests were going on: the count moved, never backwards
            assert during == sorted(during) and len(set(during)) > 1, during
            # a connection to a port where nothing listens: an upstream error
            dead = _closed_port()
            from curl_cffi import requests
            with requests.Session(impersonate="firefox", verify=str(proxy.ca_cert), timeout=20,
                                  proxy=proxy.url("http")) as session:
                assert session.get(f"https://127.0.0.1:{dead}/").status_code == 502
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                after = scrape(url)
                if value(after, "mirror_store_committed_records_total") >= 13:
                    break
                time.sleep(0.2)
    assert value(after, "mirror_connections_total", mode="http", outcome="ok") == 12
    assert total(after, "mirror_upstream_errors_total") == 1
    assert total(after, "mirror_connections_total", mode="http") == 13
    # per-field fidelity: firefox's hello is planned for each of the 13 connections (the
    # failed one too), every TLS field counted per connection
    assert value(after, "mirror_field_fidelity_total", field="ciphers", status="exact") == 13
    assert value(after, "mirror_field_fidelity_total", field="tcp.ttl", status="exact") >= 12
    statuses_seen = {dict(labels)["status"] for (name, labels) in after
                     if name == "mirror_field_fidelity_total"}
    assert statuses_seen <= {"exact", "approximated", "impossible"}, statuses_seen
    assert value(after, "mirror_upstream_handshake_seconds_count", outcome="ok") == 12
    assert value(after, "mirror_upstream_handshake_seconds_count", outcome="error") == 1
    assert value(after, "mirror_time_to_first_byte_seconds_count") == 12
    assert value(after, "mirror_store_committed_records_total") == 13
    assert value(after, "mirror_store_dropped_records_total") == 0
    assert ("mirror_store_queue_depth", ()) in after
    assert value(after, "mirror_mismatching_connections_total") == 0
    if rewriting:          # root with NFQUEUE: every upstream SYN went through the rewriter
        assert value(after, "mirror_syn_rewrites_total", result="rewritten") >= 12
        assert value(after, "mirror_syn_rewrites_total", result="failed") == 0


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_are_off_by_default_and_a_bad_address_is_one_line(tmp_path):
    import subprocess
    import sys

    with running_proxy(tmp_path / "proxy", modes=("http",)) as proxy:
        assert not [line for line in proxy.lines if line.startswith("metrics")]
    bad = subprocess.run([sys.executable, "-m", "mirror", "run", "--metrics", "nowhere:port",
                          "--store", str(tmp_path / "s.sqlite3")], capture_output=True,
                         text=True, timeout=30, check=False)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert re.search(r"--metrics.*nowhere:port", bad.stderr), bad.stderr


def test_one_endpoint_sums_every_worker(tmp_path):
    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
                 "--workers", "2", "--metrics", "127.0.0.1:0"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            url = metrics_url(proxy)
            for i in range(16):
                assert get(proxy, port, f"/w{i}") == 200
            samples = scrape(url)
    # the kernel spreads connections over both workers; the endpoint counts all of them
    assert value(samples, "mirror_connections_total", mode="http", outcome="ok") == 16
    assert value(samples, "mirror_field_fidelity_total", field="ciphers", status="exact") == 16
