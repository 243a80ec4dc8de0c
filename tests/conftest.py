"""Shared fixtures: where the reference vectors are, and real ClientHellos from real clients."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Addresses and option layouts of the crafted SYNs (bytes only, never sent anywhere).
SRC4, DST4 = "198.18.0.1", "198.18.0.2"
SRC6, DST6 = "2001:db8::1", "2001:db8:0:1::2"

LINUX_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (2886759, 0)), ("NOP", None),
              ("WScale", 7)]
WINDOWS_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None),
                ("SAckOK", b"")]
MACOS_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 6), ("NOP", None), ("NOP", None),
              ("Timestamp", (1234567890, 0)), ("SAckOK", b""), ("EOL", None)]


def vectors_dir() -> Path:
    """The FoxIO vectors: $MIRROR_VECTORS, else ../shared/vectors beside the repository."""
    override = os.environ.get("MIRROR_VECTORS")
    return Path(override) if override else REPO.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def foxio_dir() -> Path:
    path = vectors_dir() / "foxio-ja4"
    if not (path / "pcap").is_dir():
        pytest.fail(f"reference vectors not found at {path} (set MIRROR_VECTORS)")
    return path


def native_target(family: str) -> str:
    """curl_cffi's newest native target of a family ("chrome" -> "chrome152")."""
    from curl_cffi.requests import impersonate

    return getattr(impersonate, f"DEFAULT_{family.upper()}", family)


def first_flight(client) -> bytes:
    """What ``client(port)`` sends first to a bare TCP listener on loopback ``port``.

    The listener never answers, so the client's handshake fails (``client`` must expect that)
    after we have read its complete first flight (the hello, however many records it spans).
    """
    from mirror.wire.tls import read_client_hello

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        with conn:
            while read_client_hello(bytes(received)) is None:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client(listener.getsockname()[1])
    finally:
        thread.join(5)
        listener.close()
    return bytes(received)


def capture_client_hello(impersonate: str, server_name: str = "example.test",
                         alpn: bool = True) -> bytes:
    """The raw bytes a real curl_cffi client sends first (see ``first_flight``)."""
    from curl_cffi import Curl, CurlOpt

    def client(port: int) -> None:
        curl = Curl()
        try:
            curl.setopt(CurlOpt.URL, f"https://{server_name}:{port}/")
            curl.setopt(CurlOpt.RESOLVE, [f"{server_name}:{port}:127.0.0.1"])
            curl.setopt(CurlOpt.TIMEOUT_MS, 3000)
            if curl.impersonate(native_target(impersonate)) != 0:
                raise RuntimeError(f"curl_cffi cannot impersonate {impersonate!r}")
            curl.perform()
        except Exception as error:  # the listener closes without a handshake: expected
            if "impersonate" in str(error):
                raise
        finally:
            curl.close()

    return first_flight(client)


@pytest.fixture(scope="session")
def real_hellos() -> dict[str, bytes]:
    """First flights of several real TLS stacks (BoringSSL and NSS personalities of curl_cffi)."""
    return {name: capture_client_hello(name) for name in ("chrome", "firefox", "safari", "tor")}


def make_hello(ciphers=(0x1301, 0x1302), extensions=(), *, legacy_version=0x0303,
               session_id=b"") -> bytes:
    """A ClientHello handshake message built field by field (for edge cases real clients lack)."""
    import struct

    body = struct.pack("!H", legacy_version) + bytes(32)
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", 2 * len(ciphers)) + b"".join(struct.pack("!H", c) for c in ciphers)
    body += b"\x01\x00"
    if extensions:
        exts = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def renamed_hello(raw: bytes, name: bytes, drop: tuple[int, ...] = ()):
    """A real ClientHello (handshake message) with another server name and without the
    extensions in ``drop``, parsed: everything else as the client sent it."""
    import struct

    from mirror.wire.tls import parse_client_hello

    hello = parse_client_hello(raw)
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    sni = struct.pack("!H", len(entry)) + entry
    return parse_client_hello(make_hello(
        hello.cipher_suites, [(e.type, sni if e.type == 0 else e.data)
                              for e in hello.extensions if e.type not in drop],
        legacy_version=hello.legacy_version, session_id=hello.session_id))


def alpn_ext(*protocols: bytes) -> tuple[int, bytes]:
    import struct

    names = b"".join(bytes([len(p)]) + p for p in protocols)
    return 16, struct.pack("!H", len(names)) + names


@contextlib.contextmanager
def running_echo(ca_dir: Path):
    """A real `mirror echo` process on a free loopback port; yields (port, CA certificate path).

    Stopped with SIGTERM at the end, which it must survive with exit status 0.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", "echo", "--listen", "127.0.0.1:0", "--ca-dir", str(ca_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r":(\d+)/", line)
        if not match:
            proc.kill()
            raise AssertionError(f"mirror echo did not start: {line!r} {proc.stderr.read()!r}")
        yield int(match.group(1)), ca_dir / "ca.pem"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``root`` skip, with the reason, when not run as root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, iptables, raw capture): "
                            "run the suite as root to include it")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """With MIRROR_FIDELITY_TABLE=PATH, write the fidelity comparisons made in this run there."""
    path = os.environ.get("MIRROR_FIDELITY_TABLE")
    module = sys.modules.get("fidelity_helpers")
    if path and module is not None and module.RESULTS:
        Path(path).write_text(module.fidelity_table())


def pcap_hellos(path: Path) -> list[tuple[str, bytes]]:
    """The client first flights of every TCP connection in a capture that open with a hello."""
    import dpkt

    from mirror.wire.errors import WireError
    from mirror.wire.tls import read_client_hello

    flows: dict[tuple, dict[int, bytes]] = {}
    with path.open("rb") as handle:
        for _, frame in dpkt.pcapng.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            tcp = getattr(ip, "data", None)
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.data:
                key = (ip.src, tcp.sport, ip.dst, tcp.dport)
                flows.setdefault(key, {}).setdefault(tcp.seq, bytes(tcp.data))
    out = []
    for (_, sport, _, _), segments in flows.items():
        first = min(segments)  # no sequence wrap-around in a short handshake capture
        stream = b"".join(segments[seq] for seq in sorted(segments, key=lambda s: s - first))
        try:
            hello = read_client_hello(stream)
        except WireError:
            continue  # server side, or not TLS
        if hello is not None:
            out.append((f"{path.name}:{sport}", stream[: hello.consumed]))
    return out


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server (tests/pgserver.py) for one test module, removed after it."""
    from pgserver import PgServer

    server = PgServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pki():
    """A throwaway CA for the replay engine's tests (``replay_pki.Pki``), one per module."""
    from replay_pki import Pki

    return Pki()


@pytest.fixture(scope="module")
def leaf(pki):
    """A P-256 leaf certificate of ``pki`` for the test servers' name."""
    return pki.leaf(kind="p256")
