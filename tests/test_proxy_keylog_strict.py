"""--keylog writes both legs' TLS secrets so that tshark decrypts a real connection on both
sides of the proxy; --on-mismatch decides what happens to a ClientHello the emitter cannot
send exactly (system curl's OpenSSL hello has ciphers and groups BoringSSL lacks)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
from conftest import running_echo
from fidelity_helpers import NAME, last_id, newest_capture
from proxyrun import running_proxy

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("keylog")
    with running_echo(workdir / "echo-ca") as (port, echo_ca):
        yield {"port": port, "echo_ca": echo_ca, "workdir": workdir,
               "extra": ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]}


def test_the_key_log_decrypts_both_legs(echo):
    if not shutil.which("tshark"):
        pytest.fail("tshark is not installed; .ci/run installs it")
    from curl_cffi import requests

    keylog = echo["workdir"] / "keys.log"
    pcap = echo["workdir"] / "both-legs.pcap"
    with running_proxy(echo["workdir"] / "proxy", modes=("http",),
                       extra=[*echo["extra"], "--keylog", str(keylog)]) as proxy:
        ports = (proxy.ports["http"], echo["port"])
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(pcap),
                                 f"tcp port {ports[0]} or tcp port {ports[1]}"],
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)
            with requests.Session(impersonate="chrome", verify=str(proxy.ca_cert), timeout=20,
                                  proxy=proxy.url("http")) as session:
                assert session.get(f"https://{NAME}:{echo['port']}/keylog-marker").status_code == 200
            time.sleep(1)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
    assert oct(keylog.stat().st_mode & 0o777) == "0o600"
    lines = keylog.read_text().splitlines()
    assert sum(line.startswith("CLIENT_TRAFFIC_SECRET_0 ") for line in lines) >= 2   # two legs
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}", "-Y",
         'http2.header.value contains "keylog-marker"', "-T", "fields", "-e", "tcp.dstport"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split()
    # the request decrypted on the client's leg (to the proxy) and on the server's (to the echo)
    assert {int(p) for p in out} >= set(ports), out


def curl(proxy, ca) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-x", proxy.url("http"), "--cacert", str(ca),
                           f"https://{NAME}:{proxy.echo_port}/strict"],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("policy", ["strict", "passthrough", "warn"])
def test_on_mismatch_leaves_a_hello_sent_by_replay_alone(echo, policy):
    """--on-mismatch judges what BoringSSL would send; under the default engine curl's hello
    goes upstream by replay, as curl's own, so it is intercepted and mirrored whatever the
    policy."""
    with running_proxy(echo["workdir"] / f"proxy-replay-{policy}", modes=("http",),
                       extra=[*echo["extra"], "--on-mismatch", policy]) as proxy:
        proxy.echo_port = echo["port"]
        before = last_id(proxy.store)
        result = curl(proxy, proxy.ca_cert)                   # the proxy's certificate
        assert result.returncode == 0, result.stderr
        capture = newest_capture(proxy.store, before)
        assert capture["protocol"] == "tls" and capture["error"] is None
        assert capture["upstream"]["engine"] == "replay"
        assert "mirrored with differences" not in proxy.log_text()


@pytest.mark.parametrize("policy", ["strict", "passthrough", "warn"])
def test_on_mismatch(echo, policy):
    """With the BoringSSL engine, a hello it cannot send exactly (curl's ciphers) is refused,
    passed through untouched, or mirrored with a warning."""
    with running_proxy(echo["workdir"] / f"proxy-{policy}", modes=("http",),
                       extra=[*echo["extra"], "--on-mismatch", policy,
                              "--tls-engine", "boringssl"]) as proxy:
        proxy.echo_port = echo["port"]
        before = last_id(proxy.store)
        if policy == "strict":
            result = curl(proxy, proxy.ca_cert)
            assert result.returncode != 0                     # refused: the connection closes
            capture = newest_capture(proxy.store, before)
            assert capture["error"]["stage"] == "strict"
            assert "ciphers" in capture["error"]["message"]
            assert "refused (--on-mismatch strict)" in proxy.log_text()
        elif policy == "passthrough":
            result = curl(proxy, echo["echo_ca"])             # the server's own certificate
            assert result.returncode == 0, result.stderr
            assert newest_capture(proxy.store, before)["protocol"] == "passthrough"
        else:
            result = curl(proxy, proxy.ca_cert)
            assert result.returncode == 0, result.stderr
            capture = newest_capture(proxy.store, before)
            assert capture["protocol"] == "tls"
            # BoringSSL could not send curl's ciphers: the warning, and the measured record
            assert capture["upstream"]["engine"] == "boringssl"
            assert capture["emitted"]["fidelity"]["ciphers"]["status"] == "impossible"
            assert "measured: cipher_suites" in capture["emitted"]["fidelity"]["ciphers"]["detail"]
            assert "mirrored with differences" in proxy.log_text()
        # a hello that can be mirrored exactly is intercepted whatever the policy
        from curl_cffi import requests

        with requests.Session(impersonate="firefox", verify=str(proxy.ca_cert), timeout=20,
                              proxy=proxy.url("http")) as session:
            assert session.get(f"https://{NAME}:{echo['port']}/exact").status_code == 200
