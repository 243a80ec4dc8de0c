"""The replay engine behind the proxy against the other server stacks, through both fronts.

`mirror run --tls-engine auto` (the default) with system curl as the client: curl's OpenSSL
hello is one BoringSSL cannot send byte for byte, so auto sends it by replay. Full requests go
through the HTTP (CONNECT) front and the SOCKS5 front to gnutls-serv (GnuTLS), a Go crypto/tls
server and Python's ssl, each over TLS 1.3 and TLS 1.2, and come back whole. openssl s_server
and nginx (h1 and h2) are in test_tls_engine.py; transparent mode through the gateway is in
test_proxy_transparent.py and the other stacks' fidelity tests.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from fidelity_helpers import last_id, newest_capture
from proxyrun import running_proxy
from replay_pki import Pki
from replay_servers import build_go, gnutls_server, go_server, python_server

NAME = "localhost"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("engine-servers-pki")
    ca = Pki("Engine Servers Test CA")
    cert, key = Pki.write(directory, *ca.leaf((NAME, "127.0.0.1")), "good")
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return {"ca": ca_file, "cert": cert, "key": key}


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory):
    return build_go(tmp_path_factory.mktemp("engine-servers-go"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("engine-servers-proxy")
    with running_proxy(workdir, modes=("http", "socks5"),
                       extra=["--upstream-ca", str(pki["ca"])]) as running:
        yield running


@contextlib.contextmanager
def server(kind: str, version: str, pki, go_binary):
    """(port, the text the server's answer must contain)."""
    cert, key = pki["cert"], pki["key"]
    if kind == "gnutls":
        priority = "NORMAL" if version == "1.3" else "NORMAL:-VERS-TLS1.3"
        with gnutls_server(cert, key, "--priority", priority) as port:
            yield port, f"TLS1.{version[-1]}"
    elif kind == "go":
        # the Go server speaks both versions; 1.2 is the client's choice (curl --tls-max)
        with go_server(go_binary, cert, key) as port:
            yield port, "go says hello to /engine"
    else:
        top = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
        with python_server(cert, key, max_version=top) as port:
            yield port, "python got"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["http", "socks5"])
@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("kind", ["gnutls", "go", "python"])
def test_full_requests_reach_every_server_stack_by_replay(kind, version, mode, proxy, pki,
                                                          go_binary):
    tls_max = ["--tls-max", "1.2"] if kind == "go" and version == "1.2" else []
    with server(kind, version, pki, go_binary) as (port, expected):
        before = last_id(proxy.store)
        done = subprocess.run(
            ["curl", "-sS", "-m", "20", "--http1.1", *tls_max, "--proxy", proxy.url(mode),
             "--cacert", str(proxy.ca_cert), "-w", "\n%{http_code}",
             f"https://{NAME}:{port}/engine/{kind}"],
            check=False, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr + proxy.log_text()[-2000:]
        body, _, status = done.stdout.rpartition("\n")
        assert status == "200", body
        assert expected in body, body
        record = newest_capture(proxy.store, before, sni=NAME)
    assert record["error"] is None, record["error"]
    assert record["upstream"]["engine"] == "replay", record["upstream"]
    assert record["upstream"]["engine_reason"].startswith("BoringSSL would change"), record["upstream"]
