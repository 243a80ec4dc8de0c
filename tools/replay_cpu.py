"""CPU per TLS handshake and bulk throughput of the replay engine, beside curl_cffi (BoringSSL).

    python tools/replay_cpu.py                 # 200 handshakes each, interleaved in rounds of 20
    python tools/replay_cpu.py --count 50 --client firefox --bulk-count 5
    python tools/replay_cpu.py --only-adapters --adapter-count 40   # as the proxy drives them

Handshakes: starts ``openssl s_server`` on loopback (ECDSA P-256 and RSA leaves of a throwaway
CA; TLS 1.3 and TLS 1.2), takes a real ClientHello from curl_cffi's target, and measures
``time.process_time()`` around the engine's calls (construction with the hello rewrite,
``start``, ``receive``, ``close``) and around curl_cffi's ``perform`` (CONNECT_ONLY, the same
target and trust). The two alternate in rounds so both see the same machine load.

Bulk: nginx on loopback (HTTP/1.1, keep-alive) takes a ``--bulk-size`` upload (WebDAV PUT) and
serves a download of the same size on one connection; after the handshake, which is not
counted, the process time of both transfers (application data sealed and opened, the socket
calls, the little HTTP framing) gives MB/s of body per CPU second, the two engines alternating
transfer by transfer. Server time is never counted: the servers are other processes.

Adapters (``--adapter-count``): the same nginx, reached through the two engines' connection
objects as the proxy drives them: ``open_replay`` (on uvloop's loop, as the proxy's) against libcurl's
``MirroredHandshake.perform`` for the handshake (with the relay plan made from the hello), then
``send`` in the client's 16 KiB records and ``recv_into`` a 256 KiB buffer, as
``mirror.upstream.pipe`` does, for a ``--bulk-size`` upload and download: CPU per handshake and
CPU per MiB each way, per engine, alternating connection by connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import capture_client_hello, native_target
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import Store
from curl_cffi import Curl, CurlOpt
from replay_pki import Pki
from replay_servers import NAME, free_port, openssl_server, popen_server

from mirror.emit.relay_plan import relay_plan
from mirror.replay.client import (
    ApplicationData,
    HandshakeComplete,
    ReplayClient,
    ReplayConfig,
)
from mirror.upstream.connection import UpstreamTarget
from mirror.upstream.curl.handshake import MirroredHandshake
from mirror.upstream.replay.opener import ReplayOptions, open_replay
from mirror.wire.tls import read_client_hello

ROUND = 20


def replay_handshake(port: int, hello, store: Store) -> float:
    started = time.process_time()
    client = ReplayClient(ReplayConfig(client_hello=hello, trust=store))
    first = client.start()
    cpu = time.process_time() - started
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(first)
        done = False
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed during the handshake")
            started = time.process_time()
            events = client.receive(chunk)
            out = client.data_to_send()
            done = any(isinstance(event, HandshakeComplete) for event in events)
            if done:
                out += client.close()
            cpu += time.process_time() - started
            sock.sendall(out)
    return cpu


def curl_cffi_handshake(port: int, target: str, ca_file: Path) -> float:
    curl = Curl()
    try:
        curl.setopt(CurlOpt.URL, f"https://{NAME}:{port}/")
        curl.setopt(CurlOpt.RESOLVE, [f"{NAME}:{port}:127.0.0.1"])
        curl.setopt(CurlOpt.CAINFO, str(ca_file))
        curl.setopt(CurlOpt.CONNECT_ONLY, 1)
        curl.impersonate(target)
        started = time.process_time()
        curl.perform()
        return time.process_time() - started
    finally:
        curl.close()


@contextlib.contextmanager
def bulk_server(cert: Path, key: Path, directory: Path, size: int):
    """nginx, HTTP/1.1 only: PUT /up/<name> stores a body, GET /big serves ``size`` bytes."""
    port = free_port()
    os.chmod(directory, 0o755)  # nginx's workers may run as another user (the keys are elsewhere)
    for sub in ("logs", "tmp", "up", "www"):
        (directory / sub).mkdir(exist_ok=True)
        os.chmod(directory / sub, 0o777)
    (directory / "www" / "big").write_bytes(os.urandom(size))
    os.chmod(directory / "www" / "big", 0o644)
    (directory / "nginx.conf").write_text(f"""
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/tmp;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        client_max_body_size {2 * size};
        location /up/ {{ root {directory}; dav_methods PUT; }}
        location = /big {{ root {directory}/www; }}
    }}
}}
""")
    with popen_server(["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"),
                       "-g", "daemon off;"], port):
        yield port


class _Response:
    """An HTTP/1.1 response as it arrives: the head kept, the body (Content-Length) counted."""

    def __init__(self) -> None:
        self.head = b""
        self.body = -1  # body bytes seen, -1 until the head is complete
        self.length = 0

    def feed(self, data: bytes) -> None:
        if self.body >= 0:
            self.body += len(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end >= 0:
            for line in self.head[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.length = int(value)
            self.body = len(self.head) - end - 4

    @property
    def done(self) -> bool:
        return self.body >= self.length


def replay_bulk(port: int, hello, store: Store, body: bytes) -> tuple[float, str]:
    """CPU seconds of one upload and one download of ``len(body)`` bytes (handshake excluded)."""
    client = ReplayClient(ReplayConfig(client_hello=hello, trust=store))
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(client.start())
        complete = None
        while complete is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed during the handshake")
            events = client.receive(chunk)
            sock.sendall(client.data_to_send())
            complete = next((e for e in events if isinstance(e, HandshakeComplete)), None)
        started = time.process_time()
        for request in ((b"PUT /up/replay HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                         % (NAME.encode(), len(body)), body),
                        (b"GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % NAME.encode(),)):
            for part in request:  # the head, then the body as the caller has it
                sock.sendall(client.send(part))
            response = _Response()
            while not response.done:
                chunk = sock.recv(262144)
                if not chunk:
                    raise SystemExit("the server closed during a transfer")
                for event in client.receive(chunk):
                    if isinstance(event, ApplicationData):
                        response.feed(event.data)
                out = client.data_to_send()
                if out:
                    sock.sendall(out)
            if not response.head.startswith(b"HTTP/1.1 20"):
                raise SystemExit(f"nginx answered {response.head[:40]!r}")
        cpu = time.process_time() - started
        sock.sendall(client.close())
    return cpu, f"TLS 1.{complete.version - 0x0301} {complete.cipher_name}"


class _Sink:
    """Where curl_cffi writes a response body: counted, not kept."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def curl_cffi_bulk(port: int, target: str, ca_file: Path, body: bytes) -> float:
    """CPU seconds of curl_cffi's upload and download on one connection (handshake excluded)."""
    received = _Sink()
    curl = Curl()
    try:
        curl.setopt(CurlOpt.RESOLVE, [f"{NAME}:{port}:127.0.0.1"])
        curl.setopt(CurlOpt.CAINFO, str(ca_file))
        curl.impersonate(target)
        curl.setopt(CurlOpt.URL, f"https://{NAME}:{port}/big")
        curl.setopt(CurlOpt.NOBODY, 1)  # the handshake, on a HEAD
        curl.perform(clear_headers=False, clear_resolve=False)  # the lists stay set
        curl.setopt(CurlOpt.NOBODY, 0)
        curl.setopt(CurlOpt.URL, f"https://{NAME}:{port}/up/curl")
        curl.setopt(CurlOpt.CUSTOMREQUEST, "PUT")
        curl.setopt(CurlOpt.POSTFIELDSIZE_LARGE, len(body))
        curl.setopt(CurlOpt.COPYPOSTFIELDS, body)  # libcurl keeps no pointer into Python
        curl.setopt(CurlOpt.HTTPHEADER, [b"Expect:"])
        curl.setopt(CurlOpt.WRITEDATA, received)  # perform() forgets it: set before each
        started = time.process_time()
        curl.perform(clear_headers=False, clear_resolve=False)
        cpu = time.process_time() - started
        curl.setopt(CurlOpt.CUSTOMREQUEST, "GET")
        curl.setopt(CurlOpt.HTTPGET, 1)
        curl.setopt(CurlOpt.URL, f"https://{NAME}:{port}/big")
        curl.setopt(CurlOpt.WRITEDATA, received)
        received.size = 0
        started = time.process_time()
        curl.perform(clear_headers=False, clear_resolve=False)
        cpu += time.process_time() - started
        if received.size != len(body):
            raise SystemExit(f"curl_cffi received {received.size} bytes of {len(body)}")
        return cpu
    finally:
        curl.close()


def bulk(args, pki: Pki, store: Store, hello, target: str, directory: Path,
         ca_file: Path) -> None:
    body = os.urandom(args.bulk_size)
    cert, key = Pki.write(directory, *pki.leaf(kind="p256"), stem="bulk")
    totals = {"replay": 0.0, "curl_cffi": 0.0}
    with tempfile.TemporaryDirectory() as served, \
            bulk_server(cert, key, Path(served), args.bulk_size) as port:
        for _ in range(args.bulk_count):
            cpu, protocol = replay_bulk(port, hello, store, body)
            totals["replay"] += cpu
            totals["curl_cffi"] += curl_cffi_bulk(port, target, ca_file, body)
    megabytes = 2 * args.bulk_size * args.bulk_count / 1e6
    print(f"{args.client} bulk {args.bulk_size >> 10} KiB up+down {protocol}: replay "
          f"{megabytes / totals['replay']:.0f} MB/s, curl_cffi "
          f"{megabytes / totals['curl_cffi']:.0f} MB/s per CPU second ({args.bulk_count} each)",
          flush=True)


def _wait(fd: int, write: bool = False) -> None:
    if not select.select([] if write else [fd], [fd] if write else [], [], 10)[0 if not write
                                                                             else 1]:
        raise SystemExit("the server stalled")


def _send_all(conn, data: bytes, record: int = 16384) -> None:
    """What the relay does with what the client sent: ``send`` with the client's record sizes
    (64 KiB at a time, as read from the client leg), then ``flush``."""
    with memoryview(data) as view:
        pos = 0
        while pos < len(data):
            chunk = view[pos:pos + 65536]
            sizes: list[int] | None = [record] * -(-len(chunk) // record)
            while chunk:
                sent = conn.send(chunk, sizes)
                while conn.holds_output and not conn.flush():
                    _wait(conn.fd, write=True)
                chunk, sizes = chunk[sent:], None
                if chunk:
                    _wait(conn.fd, write=True)
            pos += 65536


def _read_response(conn, buffer: memoryview) -> _Response:
    """``recv_into`` a 256 KiB buffer until a whole response is in, as the relay's pipe reads."""
    response = _Response()
    while not response.done:
        filled = 0
        while filled < len(buffer):
            count = conn.recv_into(buffer[filled:])
            if count is None:
                break
            if count == 0:
                raise SystemExit("the server closed during a transfer")
            filled += count
        if filled:
            response.feed(bytes(buffer[:filled]) if response.body < 0 else buffer[:filled])
        else:
            _wait(conn.fd)
        if conn.holds_output:
            conn.flush()
    if not response.head.startswith(b"HTTP/1.1 20"):
        raise SystemExit(f"nginx answered {response.head[:40]!r}")
    return response


def new_loop() -> asyncio.AbstractEventLoop:
    """The proxy's kind of event loop: uvloop's where it is installed (``mirror run`` uses it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def adapter_run(engine: str, port: int, hello, ca_file: Path, body: bytes,
                loop: asyncio.AbstractEventLoop) -> tuple[float, float, float]:
    """CPU seconds of one handshake, one upload and one download through ``engine``."""
    target = UpstreamTarget("127.0.0.1", port, NAME)
    started = time.process_time()
    if engine == "replay":
        conn = loop.run_until_complete(open_replay(
            loop, target, hello, ReplayOptions(ca_file=str(ca_file))))
    else:
        conn = MirroredHandshake(target, relay_plan(hello), ca_file=str(ca_file)).perform()
    handshake = time.process_time() - started
    buffer = memoryview(bytearray(262144))
    try:
        started = time.process_time()
        _send_all(conn, b"PUT /up/%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                  % (engine.encode(), NAME.encode(), len(body)))
        _send_all(conn, body)
        _read_response(conn, buffer)
        upload = time.process_time() - started
        started = time.process_time()
        _send_all(conn, b"GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % NAME.encode())
        response = _read_response(conn, buffer)
        download = time.process_time() - started
        if response.body != len(body):
            raise SystemExit(f"{engine}: {response.body} bytes of {len(body)}")
    finally:
        conn.close()
    return handshake, upload, download


def adapters(args, pki: Pki, hello, directory: Path, ca_file: Path) -> None:
    body = os.urandom(args.bulk_size)
    cert, key = Pki.write(directory, *pki.leaf(kind="p256"), stem="adapters")
    engines = ("replay", "boringssl")
    totals = {engine: [0.0, 0.0, 0.0] for engine in engines}
    loop = new_loop()
    try:
        with tempfile.TemporaryDirectory() as served, \
                bulk_server(cert, key, Path(served), args.bulk_size) as port:
            for engine in engines:              # warm-up: code loaded, caches filled
                adapter_run(engine, port, hello, ca_file, body, loop)
            for _ in range(args.adapter_count):
                for engine in engines:
                    for index, cpu in enumerate(adapter_run(engine, port, hello, ca_file, body,
                                                            loop)):
                        totals[engine][index] += cpu
    finally:
        loop.close()
    mib = args.bulk_size / (1 << 20) * args.adapter_count
    rows = {engine: (totals[engine][0] / args.adapter_count * 1000, totals[engine][1] / mib
                     * 1000, totals[engine][2] / mib * 1000) for engine in engines}
    print(f"{args.client} through the proxy's connection objects ({args.adapter_count} each, "
          f"{args.bulk_size >> 10} KiB each way, CPU ms):", flush=True)
    for label, index in (("handshake", 0), ("upload per MiB", 1), ("download per MiB", 2)):
        replay, boringssl = rows["replay"][index], rows["boringssl"][index]
        print(f"  {label:17} replay {replay:6.2f}  boringssl {boringssl:6.2f}  "
              f"replay/boringssl {replay / boringssl:.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="handshakes per engine and server")
    parser.add_argument("--client", default="chrome", help="curl_cffi target family")
    parser.add_argument("--bulk-count", type=int, default=10,
                        help="bulk transfers (upload and download) per engine; 0: none")
    parser.add_argument("--bulk-size", type=int, default=1 << 20, help="bytes each way")
    parser.add_argument("--adapter-count", type=int, default=20,
                        help="connections per engine through the proxy's connection objects "
                             "(handshake, upload, download); 0: none")
    parser.add_argument("--only-adapters", action="store_true",
                        help="skip the engine-level handshake and bulk measurements")
    args = parser.parse_args()
    pki = Pki()
    store = Store([pki.cert])
    target = native_target(args.client)
    hello = read_client_hello(capture_client_hello(args.client, NAME))
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(pki.cert.public_bytes(serialization.Encoding.PEM))
        for kind, options in () if args.only_adapters else (
                ("p256", []), ("rsa", []), ("p256", ["-tls1_2"])):
            cert, key = Pki.write(directory, *pki.leaf(kind=kind), stem=kind)
            with openssl_server(cert, key, *options) as port:
                totals = {"replay": 0.0, "curl_cffi": 0.0}
                done = 0
                while done < args.count:
                    batch = min(ROUND, args.count - done)
                    for _ in range(batch):
                        totals["replay"] += replay_handshake(port, hello, store)
                    for _ in range(batch):
                        totals["curl_cffi"] += curl_cffi_handshake(port, target, ca_file)
                    done += batch
                version = "TLS 1.2" if "-tls1_2" in options else "TLS 1.3"
                print(f"{args.client} {kind:4} {version}: replay "
                      f"{totals['replay'] / done * 1000:.2f} ms, curl_cffi "
                      f"{totals['curl_cffi'] / done * 1000:.2f} ms CPU per handshake "
                      f"({done} each)", flush=True)
        if args.bulk_count and not args.only_adapters:
            bulk(args, pki, store, hello, target, directory, ca_file)
        if args.adapter_count:
            adapters(args, pki, hello, directory, ca_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
