"""TLS the proxy does not terminate: hosts matching --ignore-hosts, and hosts whose clients
refused the proxy's certificate once. Their bytes pass untouched: the server sees the client's
own ClientHello and certificate checks happen end to end."""

from __future__ import annotations

import subprocess

import pytest
from conftest import running_echo
from fidelity_helpers import last_id, newest_capture
from proxyrun import running_proxy


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("passthrough")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--ignore-hosts", r"^ignored\.test$"]
        for name in ("ignored.test", "pinned.test", "fresh.test"):
            extra += ["--resolve", f"{name}:{port}:127.0.0.1"]
        with running_proxy(workdir / "proxy", modes=("http",), extra=extra) as proxy:
            yield {"port": port, "echo_ca": echo_ca, "proxy": proxy}


def curl(bed, name: str) -> subprocess.CompletedProcess:
    """System curl through the proxy, trusting only the echo server's CA (not the proxy's)."""
    return subprocess.run(
        ["curl", "-sS", "-x", bed["proxy"].url("http"), "--cacert", str(bed["echo_ca"]),
         f"https://{name}:{bed['port']}/passthrough"],
        capture_output=True, text=True, timeout=30)


def test_ignored_hosts_are_relayed_untouched(bed):
    from curl_cffi import requests

    before = last_id(bed["proxy"].store)
    with requests.Session(impersonate="firefox", verify=str(bed["echo_ca"]), timeout=20,
                          proxy=bed["proxy"].url("http")) as session:
        report = session.get(f"https://ignored.test:{bed['port']}/passthrough").json()
    capture = newest_capture(bed["proxy"].store, before, sni="ignored.test")
    assert capture["protocol"] == "passthrough"
    assert capture["emitted"]["tls"] is None          # nothing of ours in the TLS: only TCP is mirrored
    # the server got the very hello the proxy saw: same bytes, key shares and random included
    assert report["tls"]["raw"] == capture["tls"]["raw"]


def test_a_host_whose_client_refuses_our_certificate_is_passed_through_next_time(bed):
    start = last_id(bed["proxy"].store)
    first = curl(bed, "pinned.test")
    assert first.returncode == 60, first.stderr               # curl: peer certificate refused
    refused = newest_capture(bed["proxy"].store, start, sni="pinned.test")
    assert refused["protocol"] == "tls" and refused["error"]["stage"] == "client-tls"
    before = refused["id"]
    second = curl(bed, "pinned.test")
    assert second.returncode == 0, second.stderr
    capture = newest_capture(bed["proxy"].store, before, sni="pinned.test")
    assert capture["protocol"] == "passthrough"
    assert "passing pinned.test:" in bed["proxy"].log_text()
    # a host that was never refused is still intercepted
    assert curl(bed, "fresh.test").returncode == 60
