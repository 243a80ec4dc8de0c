"""`mirror run --tls-engine`: the replay engine behind the proxy, against real servers.

Explicit mode on loopback, system curl (an OpenSSL client) and Python's ssl as clients:
openssl s_server (TLS 1.3 and 1.2) and nginx (h1 and h2) are served by the replay engine, and a
server behind a recording relay receives the client's own ClientHello byte for byte (masking
only the random, the session id and the key shares' key material); a TLS 1.2 server that only
speaks CBC is served through the BoringSSL retry, remembered, and the capture says so; a server
with the wrong name or an untrusted chain is refused with a 502 and gets no application data;
``auto`` picks replay for an OpenSSL hello and BoringSSL for a curl_cffi Safari hello (a
BoringSSL-made hello the relay plan calls exact; its Chrome hellos carry GREASE ECH and padding,
which the plan's verdicts still call approximated).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from proxyrun import running_proxy
from replay_pki import Pki
from replay_servers import Recorder, nginx_server, openssl_server, python_server

from mirror.wire.tls import EXT_KEY_SHARE, read_client_hello

NAME = "localhost"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls-engine-pki")
    ca = Pki("TLS Engine Test CA")
    good = Pki.write(directory, *ca.leaf((NAME, "127.0.0.1")), "good")
    wrong = Pki.write(directory, *ca.leaf(("other.test",)), "wrong")
    untrusted = Pki.write(directory, *Pki("Unknown CA").leaf((NAME,)), "untrusted")
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return {"dir": directory, "ca": ca_file, "good": good, "wrong": wrong,
            "untrusted": untrusted}


def proxy_for(tmp_path: Path, pki, engine: str | None):
    extra = ["--upstream-ca", str(pki["ca"])]
    if engine is not None:
        extra += ["--tls-engine", engine]
    return running_proxy(tmp_path / "proxy", modes=("http",), extra=extra)


def curl(proxy, port: int, *options: str, path: str = "/") -> tuple[int, dict, str]:
    done = subprocess.run(["curl", "-sS", "-i", "-m", "20", "--proxy", proxy.url("http"),
                           "--suppress-connect-headers", "--cacert", str(proxy.ca_cert),
                           *options, f"https://{NAME}:{port}{path}"],
                          check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def records(store: Path, after: int, wanted: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if store.exists():
            with sqlite3.connect(store) as db:
                rows = db.execute("SELECT record FROM captures WHERE id > ? ORDER BY id",
                                  (after,)).fetchall()
            if len(rows) >= wanted:
                return [json.loads(raw) for (raw,) in rows]
        time.sleep(0.1)
    raise AssertionError(f"fewer than {wanted} connections were recorded")


def last_id(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0]


def tls_records(stream: bytes) -> list[tuple[int, bytes]]:
    """(content type, fragment) of each TLS record in a byte stream."""
    out, pos = [], 0
    while pos + 5 <= len(stream):
        kind, _, length = struct.unpack("!BHH", stream[pos:pos + 5])
        out.append((kind, stream[pos + 5:pos + 5 + length]))
        pos += 5 + length
    return out


def first_hello(stream: bytes):
    """The ClientHello at the start of a TLS stream (after an HTTP CONNECT head, if any)."""
    if stream.startswith(b"CONNECT "):
        stream = stream[stream.index(b"\r\n\r\n") + 4:]
    return read_client_hello(stream)


def masked(hello) -> dict:
    """Everything of a ClientHello but what the client makes fresh per connection."""
    extensions = []
    for extension in hello.extensions:
        if extension.type == EXT_KEY_SHARE:
            extensions.append((extension.type, [(entry.group, len(entry.key_exchange))
                                                for entry in extension.value]))
        else:
            extensions.append((extension.type, extension.data))
    return {"legacy_version": hello.legacy_version, "session_id": len(hello.session_id),
            "ciphers": hello.cipher_suites, "compression": hello.compression_methods,
            "extensions": extensions, "length": len(hello.raw),
            "records": hello.record_lengths, "record_version": hello.record_version}


@pytest.mark.timeout(120)
def test_replay_serves_openssl_tls13_and_tls12(tmp_path, pki):
    cert, key = pki["good"]
    with openssl_server(cert, key, "-tls1_3") as tls13, \
            openssl_server(cert, key, "-tls1_2") as tls12, \
            proxy_for(tmp_path, pki, "replay") as proxy:
        before = last_id(proxy.store)
        for port, version in ((tls13, "TLSv1.3"), (tls12, "TLSv1.2")):
            status, _, body = curl(proxy, port)
            assert status == 200, body
            assert f"Protocol  : {version}" in body, body
        found = records(proxy.store, before, 2)
    for record in found:
        assert record["error"] is None, record["error"]
        assert record["upstream"]["engine"] == "replay"
        assert record["upstream"]["engine_reason"] == "--tls-engine replay"


@pytest.mark.timeout(120)
def test_replay_serves_full_h1_and_h2_requests_from_nginx(tmp_path, pki):
    cert, key = pki["good"]
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    with nginx_server(cert, key, nginx_dir) as port, proxy_for(tmp_path, pki, "replay") as proxy:
        before = last_id(proxy.store)
        for option, protocol in (("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")):
            done = subprocess.run(
                ["curl", "-sS", "-m", "20", option, "--proxy", proxy.url("http"), "--cacert",
                 str(proxy.ca_cert), "-w", "\n%{http_version}", "-d", "x" * 50000,
                 f"https://{NAME}:{port}/engine/{protocol}"],
                check=False, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            body, _, version = done.stdout.rpartition("\n")
            assert body == f"nginx says hello to /engine/{protocol} over TLSv1.3"
            assert version == protocol.removeprefix("HTTP/")
        found = records(proxy.store, before, 2)
    assert [r["alpn"]["upstream"] for r in found] == ["http/1.1", "h2"]
    assert {r["upstream"]["engine"] for r in found} == {"replay"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pause", [0.0, 0.3])
def test_the_server_sees_the_clients_own_hello_and_record_sizes(tmp_path, pki, pause):
    """A Python ssl client (OpenSSL) through the proxy; relays on both legs keep the bytes.
    With a pause between its records each comes in its own read, and the proxy holds the
    unfinished request head back until it is whole: the records still keep their lengths."""
    cert, key = pki["good"]
    with python_server(cert, key) as port, Recorder(port) as server_leg, \
            proxy_for(tmp_path, pki, "replay") as proxy, \
            Recorder(proxy.ports["http"]) as client_leg:
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        with socket.create_connection(("127.0.0.1", client_leg.port), 10) as raw:
            raw.sendall(f"CONNECT 127.0.0.1:{server_leg.port} HTTP/1.1\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            with context.wrap_socket(raw, server_hostname=NAME) as tls:
                for part in (b"GET / HTTP/1.0\r\n", b"Host: localhost\r\n", b"\r\n"):
                    tls.sendall(part)               # three records of three sizes
                    time.sleep(pause)
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
        assert reply.endswith(b"python got 35 bytes"), reply
        time.sleep(0.3)
        client_stream, server_stream = bytes(client_leg.streams[0]), bytes(server_leg.streams[0])
    client_hello, server_hello = first_hello(client_stream), first_hello(server_stream)
    assert masked(server_hello) == masked(client_hello)
    assert server_hello.random != client_hello.random
    # one upstream record per client record, of the same (encrypted) lengths
    def app_lengths(stream):
        return [len(f) for kind, f in tls_records(stream) if kind == 23]
    client_app = app_lengths(client_stream[client_stream.index(b"\r\n\r\n") + 4:])
    server_app = app_lengths(server_stream)
    assert client_app[-3:] == server_app[-3:]
    assert len({*client_app[-3:]}) == 3


@pytest.mark.timeout(120)
def test_a_cbc_only_server_is_served_through_boringssl_and_remembered(tmp_path, pki):
    cert, key = pki["good"]
    with openssl_server(cert, key, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA") as port, \
            proxy_for(tmp_path, pki, "replay") as proxy:
        before = last_id(proxy.store)
        for _ in range(2):
            status, _, body = curl(proxy, port)
            assert status == 200, body
            assert "ECDHE-ECDSA-AES128-SHA" in body
        first, second = records(proxy.store, before, 2)
    assert first["error"] is None and second["error"] is None
    assert first["upstream"]["engine"] == second["upstream"]["engine"] == "boringssl"
    assert first["upstream"]["engine_reason"].startswith(
        "retried after the replay engine: needs-boringssl:")
    assert second["upstream"]["engine_reason"].startswith("this server needs BoringSSL: "
                                                          "needs-boringssl:")


@pytest.mark.timeout(120)
def test_strict_refuses_the_boringssl_retry_of_a_hello_it_would_change(tmp_path, pki):
    """--on-mismatch strict: curl's hello goes by replay; the CBC-only server needs BoringSSL,
    which would change that hello, so the retry is refused (a 502), and the server, now known
    to need BoringSSL, has later connections refused before any upstream."""
    cert, key = pki["good"]
    with openssl_server(cert, key, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA") as port, \
            running_proxy(tmp_path / "proxy", modes=("http",),
                          extra=["--upstream-ca", str(pki["ca"]), "--on-mismatch",
                                 "strict"]) as proxy:
        before = last_id(proxy.store)
        status, headers, body = curl(proxy, port)
        assert status == 502, body
        assert "refused (--on-mismatch strict)" in body
        refused = subprocess.run(
            ["curl", "-sS", "-m", "20", "--proxy", proxy.url("http"), "--cacert",
             str(proxy.ca_cert), f"https://{NAME}:{port}/"],
            check=False, capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0                # closed after the tunnel's 200
        first, second = records(proxy.store, before, 2)
    assert first["error"]["stage"] == "strict", first["error"]
    assert first["upstream"]["engine"] == "replay"
    assert second["error"]["stage"] == "strict", second["error"]
    assert second["error"]["message"].startswith("refused (--on-mismatch strict)")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("leaf", "words"), [
    ("wrong", "certificate: "), ("untrusted", "certificate: ")])
def test_hostile_servers_are_refused_and_get_no_application_data(tmp_path, pki, leaf, words):
    cert, key = pki[leaf]
    with python_server(cert, key) as port, Recorder(port) as seen, \
            proxy_for(tmp_path, pki, "replay") as proxy:
        before = last_id(proxy.store)
        status, headers, body = curl(proxy, seen.port)
        assert status == 502, body
        assert headers["x-mirror-error"] == "upstream-certificate"
        assert words in body, body
        good_cert, good_key = pki["good"]
        with python_server(good_cert, good_key) as good_port:
            assert curl(proxy, good_port)[0] == 200     # everyone else is served
        record = records(proxy.store, before, 1)[0]
        time.sleep(0.3)
    assert record["error"]["stage"] == "upstream-certificate"
    assert record["upstream"]["engine"] == "replay"
    kinds = [kind for kind, _ in tls_records(bytes(seen.streams[0]))]
    assert kinds[0] == 22 and 23 not in kinds, kinds     # a hello, perhaps an alert: no data


@pytest.mark.timeout(120)
def test_auto_picks_replay_for_openssl_and_boringssl_for_an_exact_plan(tmp_path, pki):
    from curl_cffi import requests as cffi

    cert, key = pki["good"]
    with openssl_server(cert, key) as port, proxy_for(tmp_path, pki, None) as proxy:
        before = last_id(proxy.store)
        assert curl(proxy, port)[0] == 200
        answer = cffi.get(f"https://{NAME}:{port}/", impersonate="safari", timeout=20,
                          proxy=proxy.url("http"), verify=str(proxy.ca_cert))
        assert answer.status_code == 200
        by_curl, by_safari = records(proxy.store, before, 2)
    assert by_curl["upstream"]["engine"] == "replay"
    assert by_curl["upstream"]["engine_reason"].startswith("BoringSSL would change ")
    assert by_safari["upstream"]["engine"] == "boringssl"
    assert by_safari["upstream"]["engine_reason"] == "BoringSSL sends this hello exactly"


def test_the_memory_of_servers_that_need_boringssl_is_per_server_and_bounded():
    from replay_servers import python_ssl_hello

    from mirror.emit.relay_plan import relay_plan
    from mirror.upstream.engine import EngineChooser

    plan = relay_plan(read_client_hello(python_ssl_hello()))   # not exact in BoringSSL
    chooser = EngineChooser("auto", size=2)
    assert chooser.choose(plan, "a.test", 443).engine == "replay"
    chooser.remember("A.test", 443, "needs-boringssl: CBC")
    assert chooser.choose(plan, "a.test", 443).engine == "boringssl"
    assert chooser.choose(plan, "a.test", 8443).engine == "replay"      # another port
    chooser.remember("b.test", 443, "x")
    chooser.remember("c.test", 443, "x")                                 # a.test forgotten
    assert [chooser.choose(plan, h, 443).engine for h in ("a.test", "b.test", "c.test")] == [
        "replay", "boringssl", "boringssl"]
    assert EngineChooser("boringssl").choose(plan, "a.test", 443).engine == "boringssl"
    with pytest.raises(ValueError, match="unknown TLS engine"):
        EngineChooser("openssl")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["http", "socks5h"])
def test_replay_goes_through_an_upstream_proxy(tmp_path, pki, scheme):
    from upstream_proxies import pproxy

    cert, key = pki["good"]
    with openssl_server(cert, key) as port, \
            pproxy(tmp_path, "http+socks5://127.0.0.1:{port}#alice:pa55") as upstream, \
            running_proxy(tmp_path / "proxy", modes=("http",), extra=[
                "--upstream-ca", str(pki["ca"]), "--tls-engine", "replay", "--upstream-proxy",
                f"{scheme}://alice:pa55@127.0.0.1:{upstream['port']}"]) as proxy:
        before = last_id(proxy.store)
        status, _, body = curl(proxy, port)
        assert status == 200, body
        record = records(proxy.store, before, 1)[0]
    assert f":{port}" in upstream["log"].read_text()        # the upstream proxy carried it
    assert record["upstream"]["route"] == f"via {scheme}://127.0.0.1:{upstream['port']}"
    assert record["upstream"]["engine"] == "replay"
