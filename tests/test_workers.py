"""`mirror run --workers 2`: two processes on the same port (SO_REUSEPORT), one capture store,
a clean stop."""

from __future__ import annotations

import re
import subprocess
import time

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
