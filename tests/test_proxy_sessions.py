"""mirror gives clients no TLS session to resume: a resuming client would offer a
pre_shared_key that no upstream hello can carry, so each of its hellos is a full handshake's,
and the server sees that hello whole."""

from __future__ import annotations

import socket
import ssl

from conftest import running_echo
from fidelity_helpers import NAME, last_id
from proxyrun import running_proxy

from mirror.store import CaptureStore


def through(proxy_port: int, port: int, context: ssl.SSLContext, session=None):
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    raw.sendall(f"CONNECT {NAME}:{port} HTTP/1.1\r\nHost: {NAME}:{port}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    tls = context.wrap_socket(raw, server_hostname=NAME, session=session)
    tls.sendall(f"GET /s HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
    body = b""
    while chunk := tls.recv(65536):
        body += chunk
    assert body.startswith(b"HTTP/1.1 200")
    return tls


def test_a_client_cannot_resume_a_session_with_mirror(tmp_path):
    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        extra = ["--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            context = ssl.create_default_context(cafile=str(proxy.ca_cert))
            before = last_id(proxy.store)
            first = through(proxy.ports["http"], port, context)
            assert first.version() == "TLSv1.3"
            second = through(proxy.ports["http"], port, context, session=first.session)
            assert not second.session_reused
            first.close()
            second.close()
    with CaptureStore(proxy.store) as store:
        records = [store.get(s.id) for s in store.list(limit=None, after_id=before)]
    assert len(records) == 2
    for record in records:
        assert 41 not in record["tls"]["extension_types"]      # no pre_shared_key offered
        assert record["emitted"]["fidelity"]["psk"]["status"] == "exact"
