"""Functional tests of `mirror run` against a real origin (tests/origin.py), all on loopback.

One origin (TLS h2 + http/1.1, and plain HTTP), one HTTP/1.1-only origin, one proxy started
with ``--upstream-ca`` and ``--resolve origin.test:PORT:127.0.0.1`` for every port used. Real
clients (curl_cffi impersonating Chrome, httpx, system curl, raw sockets with the ssl module)
go through the proxy's explicit HTTP and SOCKS5 listeners; bodies must arrive byte-exact,
errors must be clean and quick, and the proxy must keep serving afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import socket
import sqlite3
import ssl
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from origin import NAME, RunningOrigin, pattern_bytes, running_origin, websocket_accept
from proxyrun import RunningProxy, running_proxy

MIB = 1 << 20


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Bed:
    origin: RunningOrigin
    h1only: RunningOrigin
    proxy: RunningProxy
    closed_port: int
    workdir: Path

    def url(self, path: str, port: int | None = None) -> str:
        return f"https://{NAME}:{port or self.origin.port}{path}"


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("functional")
    closed_port = free_port()
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(running_origin(workdir / "origin", plain=True))
        h1only = stack.enter_context(running_origin(workdir / "origin-h1", http1_only=True,
                                                    ca_dir=workdir / "origin" / "ca"))
        extra = ["--upstream-ca", str(origin.ca_cert)]
        for port in (origin.port, origin.plain_port, h1only.port, closed_port):
            extra += ["--resolve", f"{NAME}:{port}:127.0.0.1"]
        proxy = stack.enter_context(running_proxy(workdir / "proxy", extra=extra))
        yield Bed(origin, h1only, proxy, closed_port, workdir)


# ------------------------------------------------------------------ the capture store
def store_rows(proxy: RunningProxy, where: str = "1", args=(), columns: str = "*") -> list[dict]:
    if not proxy.store.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{proxy.store}?mode=ro", uri=True,
                                            timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(f"SELECT {columns} FROM captures WHERE {where}",
                                                args)]


def last_store_id(proxy: RunningProxy) -> int:
    rows = store_rows(proxy, columns="max(id) AS top")
    return (rows[0]["top"] or 0) if rows else 0


def wait_rows(proxy: RunningProxy, where: str, args=(), count: int = 1, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    rows = store_rows(proxy, where, args)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = store_rows(proxy, where, args)
    return rows


# ------------------------------------------------------------------ raw clients
class Raw:
    """A blocking socket with a read buffer: enough HTTP/1.1 to check bytes exactly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def fill(self) -> bool:
        data = self.sock.recv(262144)
        self.buffer += data
        return bool(data)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self.fill():
                raise ConnectionError(f"closed before {marker!r}; got {bytes(self.buffer[:200])!r}")
        end = self.buffer.index(marker) + len(marker)
        out = bytes(self.buffer[:end])
        del self.buffer[:end]
        return out

    def read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self.fill():
                raise ConnectionError(f"closed after {len(self.buffer)} of {count} bytes")
        out = bytes(self.buffer[:count])
        del self.buffer[:count]
        return out

    def read_head(self) -> tuple[int, dict[str, str]]:
        lines = self.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def read_response(self, allow_1xx: bool = True) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.read_head()
        while allow_1xx and 100 <= status < 200:
            status, headers = self.read_head()
        return status, headers, self.read_exact(int(headers.get("content-length", "0")))


def tunnel(bed: Bed, port: int, alpn=("http/1.1",), host: str = NAME,
           rcvbuf: int | None = None) -> Raw:
    """CONNECT through the explicit proxy, then TLS trusting the proxy's CA."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", bed.proxy.ports["http"]))
    raw = Raw(sock)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    status, _ = raw.read_head()
    assert status == 200
    assert not raw.buffer
    context = ssl.create_default_context(cafile=str(bed.proxy.ca_cert))
    context.set_alpn_protocols(list(alpn))
    raw.sock = context.wrap_socket(sock, server_hostname=host)
    return raw


def cffi_session(bed: Bed, *, h1: bool = False, via: str = "http", asynchronous: bool = False,
                 **kwargs):
    from curl_cffi import CurlHttpVersion, requests

    if h1:
        kwargs["http_version"] = CurlHttpVersion.V1_1
    factory = requests.AsyncSession if asynchronous else requests.Session
    return factory(impersonate="chrome", proxy=bed.proxy.url(via), verify=str(bed.proxy.ca_cert),
                   timeout=30, trust_env=False, **kwargs)


def httpx_client(bed: Bed, *, h2: bool, asynchronous: bool = False, **kwargs):
    import httpx

    context = ssl.create_default_context(cafile=str(bed.proxy.ca_cert))
    factory = httpx.AsyncClient if asynchronous else httpx.Client
    return factory(proxy=bed.proxy.url("http"), verify=context, http2=h2, http1=True,
                   timeout=30, trust_env=False, **kwargs)


def echo_problem(label: str, body: bytes, status: int, headers, content: bytes) -> str | None:
    digest = hashlib.sha256(body).hexdigest()
    if status != 200:
        return f"{label}: status {status}: {content[:200]!r}"
    if content != body:
        return f"{label}: body differs ({len(content)} bytes back of {len(body)})"
    if headers.get("x-body-sha256") != digest:
        return f"{label}: origin saw sha256 {headers.get('x-body-sha256')}, sent {digest}"
    return None


def random_bodies(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, 1000, 16383, 16384, 16385, 65535, 65536, 65537, 150000]
    return [rng.randbytes(rng.choice(sizes) if rng.random() < 0.5 else rng.randrange(300000))
            for _ in range(count)]


# ------------------------------------------------------------------ 1. many concurrent clients
async def cffi_echo_client(bed: Bed, index: int, h1: bool, via: str = "http") -> list[str]:
    from curl_cffi import CurlHttpVersion

    problems = []
    want = CurlHttpVersion.V1_1 if h1 else CurlHttpVersion.V2_0
    label = f"client {index} curl_cffi {'h1' if h1 else 'h2'} via {via}"
    try:
        async with cffi_session(bed, h1=h1, via=via, asynchronous=True) as session:
            for body in random_bodies(index, 2):
                response = await session.post(bed.url("/echo"), data=body)
                problem = echo_problem(label, body, response.status_code, response.headers,
                                       response.content)
                if problem is None and response.http_version != want:
                    problem = f"{label}: spoke {response.http_version!r}, expected {want!r}"
                if problem:
                    problems.append(problem)
    except Exception as error:   # noqa: BLE001 - every failure is reported, none raised alone
        problems.append(f"{label}: {type(error).__name__}: {error}")
    return problems


async def httpx_echo_client(bed: Bed, index: int, h2: bool) -> list[str]:
    problems = []
    want = "HTTP/2" if h2 else "HTTP/1.1"
    label = f"client {index} httpx {want}"
    try:
        async with httpx_client(bed, h2=h2, asynchronous=True) as client:
            for body in random_bodies(index, 2):
                response = await client.post(bed.url("/echo"), content=body)
                problem = echo_problem(label, body, response.status_code, response.headers,
                                       response.content)
                if problem is None and response.http_version != want:
                    problem = f"{label}: spoke {response.http_version}, expected {want}"
                if problem:
                    problems.append(problem)
    except Exception as error:   # noqa: BLE001
        problems.append(f"{label}: {type(error).__name__}: {error}")
    return problems


def test_100_concurrent_mixed_h1_h2_clients(bed):
    before = last_store_id(bed.proxy)

    async def main():
        clients = []
        for index in range(100):
            kind = index % 4
            if kind == 0:
                clients.append(cffi_echo_client(bed, index, h1=False))
            elif kind == 1:
                clients.append(cffi_echo_client(bed, index, h1=True))
            elif kind == 2:
                clients.append(httpx_echo_client(bed, index, h2=True))
            else:
                clients.append(httpx_echo_client(bed, index, h2=False))
        return await asyncio.wait_for(asyncio.gather(*clients), 45)

    started = time.monotonic()
    problems = [p for client in asyncio.run(main()) for p in client]
    elapsed = time.monotonic() - started
    assert not problems, f"{len(problems)} failures in {elapsed:.1f}s:\n" + "\n".join(problems[:20])
    # every client was its own connection; the proxy recorded them with the version spoken
    rows = wait_rows(bed.proxy, "id > ? AND dst_port = ?", (before, bed.origin.port), count=100)
    versions = [row["http_version"] for row in rows]
    assert versions.count("HTTP/2") >= 50 and versions.count("HTTP/1.1") >= 50, versions
    assert not [row for row in rows if row["error"]], [row["error"] for row in rows if row["error"]]


def test_50_concurrent_streams_on_one_h2_connection(bed):
    """Multiplexing and flow control through the relay: one connection, 50 uploads at once."""
    from curl_cffi import CurlHttpVersion

    before = last_store_id(bed.proxy)

    async def main():
        async with cffi_session(bed, asynchronous=True, max_clients=50) as session:
            async def one(index):
                body = random.Random(2000 + index).randbytes(150_000 + index * 1000)
                response = await session.post(bed.url("/echo"), data=body)
                assert response.http_version == CurlHttpVersion.V2_0
                return echo_problem(f"stream {index}", body, response.status_code,
                                    response.headers, response.content)
            # one request first so that the others find the connection and multiplex on it
            assert await one(-1) is None
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 30)

    problems = [p for p in asyncio.run(main()) if p]
    assert not problems, "\n".join(problems[:10])
    wait_rows(bed.proxy, "id > ? AND dst_port = ?", (before, bed.origin.port))
    time.sleep(0.3)                   # a second connection would be recorded by now
    rows = store_rows(bed.proxy, "id > ? AND dst_port = ?", (before, bed.origin.port))
    assert len(rows) == 1, "the 51 requests did not share one connection"
    assert json.loads(rows[0]["record"])["http"]["count"] == 51


def test_socks5_clients(bed):
    async def main():
        clients = [cffi_echo_client(bed, 1000 + i, h1=bool(i % 2), via="socks5") for i in range(6)]
        return await asyncio.wait_for(asyncio.gather(*clients), 30)

    problems = [p for client in asyncio.run(main()) for p in client]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ 2. 1 MiB both ways
@pytest.mark.parametrize("client", ["curl_cffi-h2", "curl_cffi-h1", "httpx-h2", "httpx-h1"])
def test_one_mib_bodies_both_ways(bed, client):
    upload = random.Random(client).randbytes(MIB)
    if client.startswith("curl_cffi"):
        session = cffi_session(bed, h1=client.endswith("h1"))
        post = functools.partial(session.post, bed.url("/echo"), data=upload)
    else:
        session = httpx_client(bed, h2=client.endswith("h2"))
        post = functools.partial(session.post, bed.url("/echo"), content=upload)
    with session:
        response = post()
        assert echo_problem(client, upload, response.status_code, response.headers,
                            response.content) is None
        download = session.get(bed.url(f"/bytes/{MIB}"))
        assert download.status_code == 200
        assert len(download.content) == MIB
        assert download.content == pattern_bytes(MIB)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_large_download_is_paced_not_buffered(bed):
    """A client that does not read: the proxy must stop reading the server, not buffer it all."""
    size = 48 * MIB
    expected = pattern_bytes(size)
    raw = tunnel(bed, bed.origin.port, rcvbuf=65536)
    try:
        raw.sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: origin.test\r\n\r\n" % size)
        before = rss_kib(bed.proxy.process.pid)
        time.sleep(1.5)                        # the origin sends as fast as it is let
        grown = rss_kib(bed.proxy.process.pid) - before
        status, headers = raw.read_head()
        assert status == 200 and int(headers["content-length"]) == size
        assert raw.read_exact(size) == expected
    finally:
        raw.close()
    assert grown < 16 * 1024, f"the proxy grew by {grown} KiB while the client was not reading"


def test_h2_request_headers_arrive_as_the_client_sent_them(bed):
    from curl_cffi import CurlOpt, requests

    url = bed.url("/headers")
    with cffi_session(bed) as session:
        proxied = session.get(url).json()
    direct_options = {CurlOpt.RESOLVE: [f"{NAME}:{bed.origin.port}:127.0.0.1"]}
    with requests.Session(impersonate="chrome", verify=str(bed.origin.ca_cert), timeout=30,
                          trust_env=False, curl_options=direct_options) as session:
        direct = session.get(url).json()
    assert proxied["version"] == direct["version"] == "HTTP/2"
    assert proxied["headers"] == direct["headers"]       # pseudo-headers too, in order
    assert [name for name, _ in proxied["headers"]][:4] == [":method", ":authority", ":scheme",
                                                            ":path"]


# ------------------------------------------------------------------ 3. chunked uploads
def test_chunked_upload_httpx_generator(bed):
    pieces = [random.Random(i).randbytes(size) for i, size in
              enumerate([1, 4095, 65536, 100000, 7, 300001])]

    def generate():
        yield from pieces

    with httpx_client(bed, h2=False) as client:
        response = client.post(bed.url("/echo"), content=generate())
    body = b"".join(pieces)
    assert echo_problem("httpx chunked", body, response.status_code, response.headers,
                        response.content) is None
    assert response.headers["x-request-framing"] == "chunked"


def test_chunked_upload_raw_with_extensions_trailers_and_pipelining(bed):
    """Odd chunk sizes, a chunk extension, a trailer, and a request pipelined right behind."""
    pieces = [random.Random(50 + i).randbytes(size) for i, size in enumerate([1, 17, 70000, 3])]
    wire = b""
    for i, piece in enumerate(pieces):
        extension = b";name=value" if i == 1 else b""
        wire += f"{len(piece):x}".encode() + extension + b"\r\n" + piece + b"\r\n"
    wire += b"0\r\nX-Trailer: done\r\n\r\n"
    raw = tunnel(bed, bed.origin.port)
    try:
        raw.sock.sendall(b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n" + wire + b"GET /bytes/333 HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        status, headers, content = raw.read_response()
        body = b"".join(pieces)
        assert echo_problem("raw chunked", body, status, headers, content) is None
        assert headers["x-request-framing"] == "chunked"
        status, _, content = raw.read_response()
        assert status == 200 and content == pattern_bytes(333)
    finally:
        raw.close()


# ------------------------------------------------------------------ 4. Expect: 100-continue
def test_expect_100_continue_with_curl(bed, tmp_path):
    upload = tmp_path / "upload.bin"
    upload.write_bytes(random.Random(4).randbytes(300_000))
    out = tmp_path / "out.bin"
    started = time.monotonic()
    result = subprocess.run(
        ["curl", "-sS", "-v", "--http1.1", "--max-time", "20", "--expect100-timeout", "10",
         "-x", bed.proxy.url("http"), "--cacert", str(bed.proxy.ca_cert),
         "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", "-o", str(out),
         "-w", "%{http_code}", bed.url("/echo")],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "NO_PROXY": ""})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "200"
    assert "< HTTP/1.1 100" in result.stderr, result.stderr[-2000:]
    assert elapsed < 5, "curl waited for its expect timeout: the 100 did not come through"
    assert out.read_bytes() == upload.read_bytes()


# ------------------------------------------------------------------ 5. WebSocket echo
WS_MASKS = random.Random(5)


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = WS_MASKS.randbytes(4)
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def ws_read(raw: Raw) -> tuple[int, bool, bytes]:
    first, second = raw.read_exact(2)
    assert not second & 0x80, "server frames must not be masked"
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", raw.read_exact(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", raw.read_exact(8))[0]
    return first & 0x0F, bool(first & 0x80), raw.read_exact(size)


def test_websocket_echo(bed):
    raw = tunnel(bed, bed.origin.port)
    try:
        assert raw.sock.selected_alpn_protocol() == "http/1.1"
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        raw.sock.sendall(b"GET /ws HTTP/1.1\r\nHost: origin.test\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                         b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        status, headers = raw.read_head()
        assert status == 101
        assert headers["sec-websocket-accept"].encode() == websocket_accept(key)
        assert headers["upgrade"].lower() == "websocket"
        messages = [(0x1, "héllo wörld".encode()), (0x2, bytes(range(256))),
                    (0x2, random.Random(6).randbytes(70000)), (0x1, b"")]
        raw.sock.sendall(b"".join(ws_frame(op, data) for op, data in messages))
        for opcode, data in messages:
            assert ws_read(raw) == (opcode, True, data)
        raw.sock.sendall(ws_frame(0x9, b"ping!"))
        assert ws_read(raw) == (0xA, True, b"ping!")
        # a fragmented message comes back fragmented
        raw.sock.sendall(ws_frame(0x1, b"part one, ", fin=False) + ws_frame(0x0, b"part two"))
        assert ws_read(raw) == (0x1, False, b"part one, ")
        assert ws_read(raw) == (0x0, True, b"part two")
        raw.sock.sendall(ws_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        assert ws_read(raw) == (0x8, True, struct.pack("!H", 1000) + b"bye")
        raw.sock.settimeout(5)
        while raw.fill():     # the origin closes, the proxy passes the end on
            pass
    finally:
        raw.close()


# ------------------------------------------------------------------ 6. upstream reset mid-body
@pytest.mark.parametrize("client", ["curl_cffi-h1", "curl_cffi-h2", "httpx-h1", "httpx-h2"])
def test_upstream_reset_mid_body_is_a_clean_quick_error(bed, client):
    size = 2 * MIB
    if client.startswith("curl_cffi"):
        from curl_cffi.requests.exceptions import RequestException as ClientError
        session = cffi_session(bed, h1=client.endswith("h1"))
    else:
        import httpx
        ClientError = httpx.HTTPError
        session = httpx_client(bed, h2=client.endswith("h2"))
    before = last_store_id(bed.proxy)
    with session, pytest.raises(ClientError) as caught:
        response = session.get(bed.url(f"/reset/{size}"))
        pytest.fail(f"a truncated body was accepted: {response.status_code} "
                    f"{len(response.content)} bytes")
    # quick: the reset itself ended it, not the client's 30 s timeout (a proxy that held the
    # connection open would end in that timeout's error)
    assert "timed out" not in str(caught.value).lower() and "timeout" not in type(caught.value).__name__.lower()
    # the proxy keeps serving
    with cffi_session(bed) as again:
        assert again.get(bed.url("/bytes/1000")).content == pattern_bytes(1000)
    # and its capture of the reset connection says what happened
    rows = wait_rows(bed.proxy, "id > ? AND dst_port = ? AND error IS NOT NULL",
                     (before, bed.origin.port))
    assert len(rows) == 1, [row["error"] for row in rows]
    assert json.loads(rows[0]["record"])["error"]["stage"] == "relay"


def test_upstream_reset_raw_h1_partial_body_then_end_and_capture_error(bed):
    size = 400_000
    raw = tunnel(bed, bed.origin.port)
    client_port = raw.sock.getsockname()[1]
    raw.sock.settimeout(5)     # a proxy that held the connection open fails a read here
    try:
        raw.sock.sendall(b"GET /reset/%d HTTP/1.1\r\nHost: origin.test\r\n\r\n" % size)
        status, headers = raw.read_head()
        assert status == 200 and int(headers["content-length"]) == size
        got = bytes(raw.buffer)
        raw.buffer.clear()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := raw.sock.recv(262144):
                got += data
    finally:
        raw.close()
    assert 0 < len(got) <= size // 2
    assert got == pattern_bytes(size)[: len(got)]
    rows = wait_rows(bed.proxy, "client_port = ? AND dst_port = ?", (client_port, bed.origin.port))
    assert len(rows) == 1
    record = json.loads(rows[0]["record"])
    assert rows[0]["error"], f"no error recorded for an upstream reset: {record.get('error')!r}"
    assert record["error"]["stage"] == "relay", record["error"]






@pytest.mark.parametrize("route", ["https-via-http", "http-via-http", "http-via-socks5"])
def test_upstream_reset_of_close_delimited_body_reaches_the_client_as_an_error(bed, route):
    """Without Content-Length only the RST says the body is incomplete: curl direct exits 56."""
    scheme, via = route.split("-via-")
    port = bed.origin.port if scheme == "https" else bed.origin.plain_port
    url = f"{scheme}://{NAME}:{port}/reset/200000?framing=close"
    proxy = bed.proxy.url(via)
    result = subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", "10", "-x", proxy, "--cacert",
         str(bed.proxy.ca_cert), "-o", os.devnull, "-w", "%{http_code} %{size_download}", url],
        capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode != 0, (
        f"curl accepted a truncated body as complete: {result.stdout} (sent 100000 of a body the "
        f"origin aborted with an RST)")


def test_upstream_rst_stream_on_h2_keeps_the_connection(bed):
    from curl_cffi.requests.exceptions import RequestException

    with cffi_session(bed) as session:
        first = session.get(bed.url("/bytes/10"))
        assert first.status_code == 200
        started = time.monotonic()
        with pytest.raises(RequestException):
            session.get(bed.url(f"/reset/{MIB}?how=stream"))
        assert time.monotonic() - started < 5
        after = session.get(bed.url("/bytes/5000"))
        assert after.content == pattern_bytes(5000)


# ------------------------------------------------------------------ 7. upstream failures
def check_error_response(response, status: int, stage: str, mention: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.headers["x-mirror-error"] == stage
    text = response.content.decode("utf-8", "replace")
    assert text.startswith("mirror:"), text
    assert mention in text.lower(), text


@pytest.mark.parametrize("h1", [True, False], ids=["h1", "h2"])
def test_upstream_certificate_failure_and_handshake_timeout(bed, h1):
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(16)               # completes TCP handshakes, never speaks TLS
    stalled_port = stalled.getsockname()[1]
    extra = ["--connect-timeout", "1.5"]
    for port in (bed.origin.port, stalled_port):
        extra += ["--resolve", f"{NAME}:{port}:127.0.0.1"]
    workdir = bed.workdir / f"proxy-no-upstream-ca-{'h1' if h1 else 'h2'}"
    try:
        with running_proxy(workdir, modes=("http",), extra=extra) as other:
            session_bed = Bed(bed.origin, bed.h1only, other, bed.closed_port, bed.workdir)
            with cffi_session(session_bed, h1=h1) as session:
                response = session.get(bed.url("/bytes/10"))
                check_error_response(response, 502, "upstream-certificate", "certificate")
                started = time.monotonic()
                response = session.get(bed.url("/bytes/10", port=stalled_port))
                check_error_response(response, 504, "upstream-timeout", "")
                assert time.monotonic() - started < 5
            log = other.log_text()
            assert "upstream-certificate" in log and "upstream-timeout" in log, log[-3000:]
    finally:
        stalled.close()


@pytest.mark.parametrize("h1", [True, False], ids=["h1", "h2"])
def test_upstream_connection_refused(bed, h1):
    with cffi_session(bed, h1=h1) as session:
        response = session.get(bed.url("/bytes/10", port=bed.closed_port))
    check_error_response(response, 502, "upstream-connect", "")


def test_upstream_connection_refused_plain_http(bed):
    with cffi_session(bed) as session:
        response = session.get(f"http://{NAME}:{bed.closed_port}/bytes/10")
    check_error_response(response, 502, "upstream-connect", "")


# ------------------------------------------------------------------ 8. ALPN follow-through
def test_alpn_follow_through_h2_client_to_http1_only_server(bed):
    from curl_cffi import CurlHttpVersion, CurlOpt, requests

    before = last_store_id(bed.proxy)
    url = bed.url("/headers", port=bed.h1only.port)
    with cffi_session(bed) as session:
        proxied = session.get(url)
    direct_options = {CurlOpt.RESOLVE: [f"{NAME}:{bed.h1only.port}:127.0.0.1"]}
    with requests.Session(impersonate="chrome", verify=str(bed.origin.ca_cert), timeout=30,
                          trust_env=False, curl_options=direct_options) as session:
        direct = session.get(url)
    assert direct.http_version == CurlHttpVersion.V1_1
    assert proxied.status_code == 200
    assert proxied.http_version == CurlHttpVersion.V1_1
    seen, reference = proxied.json(), direct.json()
    assert seen["version"] == "HTTP/1.1"
    assert seen["headers"] == reference["headers"]     # names, case, order and values
    names = [name for name, _ in seen["headers"]]
    assert "Host" in names and not any(name.startswith(":") for name in names)
    rows = wait_rows(bed.proxy, "id > ? AND dst_port = ?", (before, bed.h1only.port))
    alpn = json.loads(rows[0]["record"])["alpn"]
    assert "h2" in alpn["offered"]
    assert alpn["upstream"] == "http/1.1" and alpn["client"] == "http/1.1"


# ------------------------------------------------------------------ 9. plain http:// (absolute-form)
def test_plain_http_absolute_form_keeps_order_and_drops_proxy_headers(bed):
    port = bed.origin.plain_port
    sock = socket.create_connection(("127.0.0.1", bed.proxy.ports["http"]), timeout=10)
    raw = Raw(sock)
    try:
        sock.sendall(f"GET http://{NAME}:{port}/headers?x=1 HTTP/1.1\r\nHost: {NAME}:{port}\r\n"
                     "User-Agent: raw-test/1.0\r\nProxy-Connection: keep-alive\r\n"
                     "accept: */*\r\nX-Mixed-CASE: One\r\nx-dup: 1\r\nx-dup: 2\r\n\r\n".encode())
        status, _, content = raw.read_response()
        assert status == 200
        seen = json.loads(content)
        assert seen["target"] == "/headers?x=1"
        assert seen["headers"] == [["Host", f"{NAME}:{port}"], ["User-Agent", "raw-test/1.0"],
                                   ["accept", "*/*"], ["X-Mixed-CASE", "One"], ["x-dup", "1"],
                                   ["x-dup", "2"]]
        # keep-alive: a second request on the same client connection
        sock.sendall(f"GET http://{NAME}:{port}/bytes/1000 HTTP/1.1\r\nHost: {NAME}:{port}\r\n"
                     "Proxy-Connection: keep-alive\r\n\r\n".encode())
        status, _, content = raw.read_response()
        assert status == 200 and content == pattern_bytes(1000)
    finally:
        raw.close()


def test_plain_http_with_curl_and_curl_cffi(bed, tmp_path):
    port = bed.origin.plain_port
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", bed.proxy.url("http"),
         "-H", "X-Order: last", f"http://{NAME}:{port}/headers"],
        capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    names = [name for name, _ in json.loads(result.stdout)["headers"]]
    assert names == ["Host", "User-Agent", "Accept", "X-Order"]      # curl's own order, no Proxy-*
    # HTTP/1.1 only: with HTTP/2 enabled curl sends "Upgrade: h2c" on http:// (see the
    # declined-upgrade test below)
    with cffi_session(bed, h1=True) as session:
        response = session.get(f"http://{NAME}:{port}/bytes/1000")
        assert response.content == pattern_bytes(1000)
        upload = random.Random(9).randbytes(200_000)
        response = session.post(f"http://{NAME}:{port}/echo", data=upload)
        assert echo_problem("plain", upload, response.status_code, response.headers,
                            response.content) is None




def socks5_connect(bed: Bed, host: str, port: int) -> Raw:
    sock = socket.create_connection(("127.0.0.1", bed.proxy.ports["socks5"]), timeout=10)
    raw = Raw(sock)
    sock.sendall(b"\x05\x01\x00")
    assert raw.read_exact(2) == b"\x05\x00"
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
    reply = raw.read_exact(4)
    assert reply[:2] == b"\x05\x00", reply
    raw.read_exact({1: 4 + 2, 4: 16 + 2}[reply[3]] if reply[3] != 3 else raw.read_exact(1)[0] + 2)
    return raw


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_finished_plain_connection_is_closed_and_recorded_promptly(bed, via):
    """The client closes (FIN), the origin closes in turn: the proxy must let go of both."""
    port = bed.origin.plain_port
    if via == "http":
        sock = socket.create_connection(("127.0.0.1", bed.proxy.ports["http"]), timeout=10)
        raw = Raw(sock)
        target = f"http://{NAME}:{port}/bytes/1000"
    else:
        raw = socks5_connect(bed, NAME, port)
        target = "/bytes/1000"
    client_port = raw.sock.getsockname()[1]
    try:
        raw.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {NAME}:{port}\r\n\r\n".encode())
        status, _, content = raw.read_response()
        assert status == 200 and content == pattern_bytes(1000)
    finally:
        raw.close()
    rows = wait_rows(bed.proxy, "client_port = ? AND dst_port = ?", (client_port, port), timeout=3)
    assert rows, "no capture 3 s after both ends closed: the proxy still holds the connection"


# ------------------------------------------------------------------ declined upgrades
SMUGGLE = (b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def test_ambiguous_framing_in_a_tunnel_is_refused(bed):
    raw = tunnel(bed, bed.origin.port)
    try:
        raw.sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        assert raw.read_response()[2] == pattern_bytes(10)
        raw.sock.sendall(SMUGGLE)
        status, headers, content = raw.read_response()
        assert status == 400 and headers.get("x-mirror-error") == "parse", content
    finally:
        raw.close()


def test_ambiguous_framing_after_a_declined_upgrade_is_refused(bed):
    raw = tunnel(bed, bed.origin.port)
    try:
        raw.sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n")
        status, _, content = raw.read_response()
        assert status == 200 and content == pattern_bytes(10)      # declined: still HTTP/1.1
        raw.sock.sendall(SMUGGLE)
        status, headers, content = raw.read_response()
        assert status == 400 and headers.get("x-mirror-error") == "parse", (status, content)
    finally:
        raw.close()


def test_absolute_form_after_a_declined_h2c_upgrade_is_still_rewritten(bed):
    """What curl (and curl_cffi impersonating Chrome) does on http://: Upgrade: h2c first."""
    port = bed.origin.plain_port
    sock = socket.create_connection(("127.0.0.1", bed.proxy.ports["http"]), timeout=10)
    raw = Raw(sock)
    try:
        sock.sendall(f"GET http://{NAME}:{port}/bytes/10 HTTP/1.1\r\nHost: {NAME}:{port}\r\n"
                     "Proxy-Connection: Keep-Alive\r\nUpgrade: h2c\r\n"
                     "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                     "Connection: Upgrade, HTTP2-Settings\r\n\r\n".encode())
        status, _, content = raw.read_response()
        assert status == 200 and content == pattern_bytes(10)      # declined: still HTTP/1.1
        sock.sendall(f"GET http://{NAME}:{port}/headers HTTP/1.1\r\nHost: {NAME}:{port}\r\n"
                     "Proxy-Connection: Keep-Alive\r\n\r\n".encode())
        status, _, content = raw.read_response()
        assert status == 200, content        # the origin got "GET http://origin.test:P/headers"
        seen = json.loads(content)
        assert seen["target"] == "/headers"
        assert seen["headers"] == [["Host", f"{NAME}:{port}"]]
    finally:
        raw.close()
