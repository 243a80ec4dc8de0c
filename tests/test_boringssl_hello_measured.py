"""What the BoringSSL engine actually sends, measured against what the relay plan predicts.

For every hello of the reference fingerprints, of the vector captures (``MIRROR_VECTORS`` or
``../shared/vectors``), of every curl_cffi impersonation target and of the local TLS stacks
(system curl, Python ssl, gnutls-cli, Node, Go), the relay plan is built and the upstream
connection opened with the curl engine (``MirroredHandshake``) against one bare TCP listener
on loopback, which keeps the ClientHello it receives and closes. The hello received is compared
with the client's by ``mirror.fingerprint.hello_diff`` (masking what varies per connection),
and must be the hello BoringSSL's message callback captured (``HelloCapture``).

The plan's prediction (``RelayPlan.hello_exact``) must agree with the measurement: predicted
exact, each of ``SAMPLES`` connections' hellos equals the client's; predicted not exact, one
of at most ``MAX_SAMPLES`` connections shows a difference (several, because GREASE ECH lengths
and the padding that follows them are drawn per connection).
"""

from __future__ import annotations

import functools
import json
import os
import queue
import socket
import threading
from pathlib import Path

import pytest
from conftest import capture_client_hello, renamed_hello
from replay_servers import (
    build_go,
    gnutls_cli_hello,
    go_hello,
    node_hello,
    python_ssl_hello,
    system_curl_hello,
)

from mirror.emit.relay_plan import relay_plan
from mirror.fingerprint.hello_diff import hello_differences, parse_hello_bytes
from mirror.pcapfile.analyze import analyze_capture
from mirror.upstream.connection import UpstreamError, UpstreamTarget
from mirror.upstream.curl.handshake import MirroredHandshake
from mirror.wire.errors import WireError
from mirror.wire.tls import ClientHello, read_client_hello

ROOT = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("MIRROR_VECTORS") or ROOT.parent / "shared" / "vectors")
PCAP_DIR = VECTORS / "foxio-ja4" / "pcap"
SAMPLES = 4
MAX_SAMPLES = 16


def _impersonate_targets() -> list[str]:
    from curl_cffi.requests.impersonate import BrowserType
    return sorted({b.value for b in BrowserType})


@functools.cache
def _capture_hellos(name: str) -> tuple[ClientHello, ...]:
    """Every TCP ClientHello of one vector capture, each distinct hello once."""
    seen, out = set(), []
    for connection in analyze_capture(PCAP_DIR / name).connections:
        for info in connection.tls:
            if info.transport == "t" and info.hello.raw not in seen:
                seen.add(info.hello.raw)
                out.append(info.hello)
    return tuple(out)


def _sources() -> list[str]:
    names = [f"fingerprint:{p.stem}" for p in sorted((ROOT / "fingerprints").glob("*.json"))]
    if PCAP_DIR.is_dir():
        for pcap in sorted(p.name for p in PCAP_DIR.iterdir()):
            names += [f"pcap:{pcap}:{i}" for i in range(len(_capture_hellos(pcap)))]
    names += [f"curl_cffi:{t}" for t in _impersonate_targets()]
    # an unpadded hello whose server name decides whether BoringSSL pads it
    names += ["variant:edge-unpadded-short-name", "variant:edge-unpadded-long-name"]
    names += ["stack:curl", "stack:curl-tls1.2", "stack:python", "stack:gnutls", "stack:node",
              "stack:go"]
    return names


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory):
    return build_go(tmp_path_factory.mktemp("hello-go"))


def _client_hello(source: str, go_binary_factory) -> ClientHello:
    kind, _, name = source.partition(":")
    if kind == "fingerprint":
        data = json.loads((ROOT / "fingerprints" / f"{name}.json").read_text())
        return parse_hello_bytes(bytes.fromhex(data["tls"]["raw_client_hello"]))
    if kind == "pcap":
        pcap, _, index = name.rpartition(":")
        return _capture_hellos(pcap)[int(index)]
    if kind == "variant":
        data = json.loads((ROOT / "fingerprints" / "edge.json").read_text())
        name = b"a.test" if name.endswith("short-name") else b"x" * 250 + b".test"
        return renamed_hello(bytes.fromhex(data["tls"]["raw_client_hello"]), name, drop=(21,))
    if kind == "curl_cffi":
        return parse_hello_bytes(capture_client_hello(name))
    stacks = {"curl": system_curl_hello, "curl-tls1.2": lambda: system_curl_hello("--tls-max", "1.2"),
              "python": python_ssl_hello, "gnutls": gnutls_cli_hello, "node": node_hello,
              "go": lambda: go_hello(go_binary_factory())}
    return parse_hello_bytes(stacks[name]())


class HelloListener:
    """One loopback listener: reads each connection's ClientHello, queues it, closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hellos: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                received = bytearray()
                try:
                    while (hello := read_client_hello(bytes(received))) is None:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        received += chunk
                except (OSError, WireError) as error:
                    hello = error
                self.hellos.put(hello)

    def sent_hello(self, hello: ClientHello) -> ClientHello:
        """The hello the curl engine sends upstream for a client that sent ``hello``."""
        plan = relay_plan(hello)
        target = UpstreamTarget("127.0.0.1", self.port, hello.sni or "hello.test")
        handshake = MirroredHandshake(target, plan, verify=False, timeout=5)
        with pytest.raises(UpstreamError):        # the listener closes after the hello
            handshake.perform()
        sent = self.hellos.get(timeout=5)
        assert isinstance(sent, ClientHello), sent
        # what the proxy's capture record reports comes from BoringSSL's message callback
        assert handshake.hello_capture.hello == sent.raw
        return sent


@pytest.fixture(scope="module")
def listener():
    server = HelloListener()
    yield server
    server.sock.close()


@pytest.mark.parametrize("source", _sources())
def test_plan_prediction_matches_what_boringssl_sends(source, listener, request):
    hello = _client_hello(source, lambda: request.getfixturevalue("go_binary"))
    plan = relay_plan(hello)
    if plan.hello_exact:
        measured = [hello_differences(hello, listener.sent_hello(hello)) for _ in range(SAMPLES)]
        differing = [[str(d) for d in diffs] for diffs in measured if diffs]
        assert not differing, f"predicted exact, but the hello sent differs: {differing}"
    else:
        # a GREASE ECH length drawn per connection equals the client's one time in four:
        # connections until one differs (all equal 16 times by chance: p = 4**-16)
        differs = any(hello_differences(hello, listener.sent_hello(hello))
                      for _ in range(MAX_SAMPLES))
        assert differs, ("predicted not exact, yet every hello sent equals the client's; "
                         f"plan says: {plan.plan.not_exact()}")
