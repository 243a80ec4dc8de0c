"""--upstream-response-timeout: a server that accepts a request and never answers it.

The rule itself (mirror.proxy.response_timeout) is tested with a clock passed in, without
sleeping. End to end, one `mirror run --upstream-response-timeout 2` faces scripted loopback
servers (plain TCP or TLS with a leaf of the origin's CA; HTTP/1.1 or HTTP/2 with the h2
library) that never answer ``/hang``, answer ``/slow`` with a head and then a body trickled
past the timeout (a long-poll), and answer anything else at once; a real origin
(tests/origin.py) carries the good traffic meanwhile. Clients are raw sockets (HTTP/1.1 by
hand, HTTP/2 with the h2 library) through the proxy's HTTP listener, plain or CONNECT.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from origin import NAME, RunningOrigin, pattern_bytes, running_origin
from proxyrun import RunningProxy, running_proxy

from mirror.proxy.response_timeout import ResponseDeadlines, StreamWaits
from mirror.wire.http2 import Data, Headers, RstStream

TIMEOUT = 2.0
SLOW_PARTS = 5          # /slow: one body byte every SLOW_STEP s after the head
SLOW_STEP = 0.8         # 4 s in all: twice the timeout
PASSTHROUGH = "passthrough.test"


# ------------------------------------------------------------------ the rule, with a fake clock
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadlines_time_each_wait_from_its_start():
    clock = Clock()
    waits = ResponseDeadlines(2.0, clock)
    assert waits.next_deadline() is None and waits.overdue() == []
    waits.waiting("a")
    clock.now = 101.0
    waits.waiting("b")
    waits.waiting("a")                     # already waiting: keeps its start
    assert waits.next_deadline() == 102.0
    clock.now = 101.99
    assert waits.overdue() == []
    clock.now = 102.0
    assert waits.overdue() == ["a"]        # "a" is given up once, "b" still waits
    assert not waits.is_waiting("a") and waits.is_waiting("b")
    assert waits.next_deadline() == 103.0
    waits.answered("b")                    # its response started
    clock.now = 500.0
    assert waits.overdue() == [] and waits.next_deadline() is None


def test_deadlines_zero_is_none():
    clock = Clock()
    waits = ResponseDeadlines(0, clock)
    waits.waiting("a")
    clock.now = 1e9
    assert waits.overdue() == [] and waits.next_deadline() is None


def test_h2_streams_wait_from_the_request_end_to_the_response_headers():
    clock = Clock()
    waits = ResponseDeadlines(1.0, clock)
    streams = StreamWaits(waits)
    request = [(":method", "POST"), (":path", "/x")]
    streams.client_event(Headers(1, request, False, None))      # body to come: not waiting yet
    streams.client_event(Headers(3, request, True, None))       # whole request: waits
    streams.client_event(Headers(5, request, False, None))
    assert not waits.is_waiting(1) and waits.is_waiting(3)
    clock.now += 0.5
    streams.client_event(Data(1, 10, True, b""))                # body ended: waits from now
    streams.server_event(Headers(5, [(":status", "200")], False, None))   # answered early
    streams.client_event(Headers(5, [("x-trailer", "1")], True, None))    # then ends: not timed
    assert waits.is_waiting(1) and not waits.is_waiting(5)
    clock.now += 0.5
    assert waits.overdue() == [3]
    streams.server_event(Headers(1, [(":status", "200")], False, None))   # head came: a long-poll
    clock.now += 100
    assert waits.overdue() == []
    streams.client_event(Headers(7, request, True, None))
    streams.client_event(RstStream(7, 8))                       # the client gave up itself
    streams.client_event(Headers(9, request, True, None))
    streams.server_event(RstStream(9, 7))                       # the server refused it
    clock.now += 100
    assert waits.overdue() == []
    # overdue streams are owed a 504 until the proxy can put a frame in; one the server
    # answers (or either side resets) meanwhile is no longer owed
    streams.owe([11, 13, 15])
    streams.server_event(Headers(11, [(":status", "200")], False, None))
    streams.client_event(RstStream(15, 8))
    assert streams.take_owed() == [13] and streams.take_owed() == []


def test_timer_fires_once_per_overdue_key_on_a_real_loop():
    """ResponseTimer on an asyncio loop: one timer, armed for the earliest wait, re-armed for
    the next; an answered key never fires; a wait started after firing is timed again."""
    import asyncio

    from mirror.proxy.response_timeout import ResponseTimer

    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        fired: list = []
        waits = ResponseDeadlines(0.1, loop.time)
        timer = ResponseTimer(loop, waits, lambda keys: fired.append((keys, loop.time())))
        started = loop.time()
        waits.waiting("a")
        waits.waiting("b")
        timer.update()
        waits.answered("b")
        await asyncio.sleep(0.05)
        waits.waiting("c")
        timer.update()
        await asyncio.sleep(0.3)
        waits.waiting("d")
        timer.update()
        timer.cancel()                       # the connection ended: "d" never fires
        await asyncio.sleep(0.2)
        return [(keys, at - started) for keys, at in fired]

    (first, first_at), (second, second_at) = asyncio.run(scenario())
    assert first == ["a"] and 0.1 <= first_at < 0.15 + 0.1
    assert second == ["c"] and 0.15 <= second_at < 0.35 + 0.1


def test_reader_without_data_events_returns_stream_ends_and_its_frame_boundary():
    """What the timeout needs from the relay's frame reader: DATA frames that end a stream
    (their payload skipped), and whether a frame of the proxy's own may go in now."""
    import hpack
    from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

    from mirror.wire.http2 import PREFACE, H2ClientReader

    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "https"),
                                    (":authority", "a.test"), (":path", "/")])
    headers = HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
    body = DataFrame(1, b"x" * 100, flags=["END_STREAM"]).serialize()
    reader = H2ClientReader(data_events=False)
    assert not reader.at_frame_boundary                      # not even the preface yet
    reader.feed(PREFACE + SettingsFrame(0).serialize())
    assert reader.at_frame_boundary and reader.frames_read == 1
    reader.feed(headers[:5])
    assert not reader.at_frame_boundary
    reader.feed(headers[5:])
    assert reader.at_frame_boundary
    assert reader.feed(body[:40]) == []                      # its payload is still coming
    assert not reader.at_frame_boundary
    assert reader.feed(body[40:60]) == []
    assert reader.feed(body[60:]) == [Data(1, 100, True, b"")]   # the request is whole now
    assert reader.at_frame_boundary
    assert reader.feed(body) == [Data(1, 100, True, b"")]        # in one piece
    assert reader.feed(DataFrame(1, b"y").serialize()) == []      # not the end: no event


def test_h2_error_headers_leave_the_hpack_table_alone():
    """The 504 the proxy adds to a relayed HTTP/2 connection decodes with any decoder state
    and adds nothing to the dynamic table the server's encoder shares with the client."""
    import hpack

    from mirror.proxy.error_reply import h2_error_headers, rst_stream

    frame = h2_error_headers(0x7FFFFFF1, 504, "upstream-response-timeout", "x" * 300)
    assert frame[3:5] == b"\x01\x05" and frame[5:9] == (0x7FFFFFF1).to_bytes(4, "big")
    assert int.from_bytes(frame[:3], "big") == len(frame) - 9
    decoder = hpack.Decoder()
    decoder.decode(hpack.Encoder().encode([("x-before", "1")]))   # a table in use
    fields = decoder.decode(frame[9:])
    assert fields[:3] == [(":status", "504"), ("content-length", "0"),
                          ("x-mirror-error", "upstream-response-timeout")]
    assert fields[3][0] == "x-mirror-reason" and fields[3][1].endswith("x" * 300)
    assert len(decoder.header_table.dynamic_entries) == 1       # only the server's own entry
    assert rst_stream(3) == bytes.fromhex("000004030000000003") + (8).to_bytes(4, "big")


# ------------------------------------------------------------------ scripted servers
class Scripted:
    """A loopback server on a thread: plain or TLS (``alpn``), HTTP/1.1 or HTTP/2, or
    ``silent`` (accepts, reads, never writes a byte: not even a SETTINGS frame)."""

    def __init__(self, context: ssl.SSLContext | None, *, h2: bool = False,
                 silent: bool = False) -> None:
        self.context, self.h2, self.silent = context, h2, silent
        self.listener = socket.socket()
        # a small receive buffer: /upload's slow reading holds the sender back (no autotuning)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.resets: list[int] = []            # RST_STREAM stream ids received (h2)
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            sock.settimeout(30)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_side=True)
                self.socks.append(sock)
            if self.silent:
                while sock.recv(65536):
                    pass
            elif self.h2:
                self._serve_h2(sock)
            else:
                self._serve_h1(sock)
        with contextlib.suppress(OSError):
            sock.close()                     # the client went: so does this connection

    def _serve_h1(self, sock: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            path = head.split(b" ")[1]
            if path == b"/hang":
                while sock.recv(65536):
                    pass
                return
            if path == b"/upload":          # reads its body at about 270 KiB/s
                left = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                left -= len(buffer)
                buffer = b""
                while left > 0:
                    time.sleep(0.06)
                    left -= len(sock.recv(min(left, 16384)))
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nuploaded")
            elif path == b"/slow":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SLOW_PARTS)
                for part in pattern_bytes(SLOW_PARTS):
                    time.sleep(SLOW_STEP)
                    sock.sendall(bytes([part]))
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def _serve_h2(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        lock = threading.Lock()
        sock.sendall(conn.data_to_send())

        def slow(stream: int) -> None:
            with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
                for i, part in enumerate(pattern_bytes(SLOW_PARTS)):
                    time.sleep(SLOW_STEP)
                    with lock:
                        conn.send_data(stream, bytes([part]), end_stream=i == SLOW_PARTS - 1)
                        sock.sendall(conn.data_to_send())

        while data := sock.recv(65536):
            with lock:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.StreamReset):
                        self.resets.append(event.stream_id)
                    if not isinstance(event, h2.events.RequestReceived):
                        continue
                    path = dict(event.headers)[":path"]
                    if path == "/hang":
                        continue
                    if path == "/slow":
                        conn.send_headers(event.stream_id, [(":status", "200")])
                        threading.Thread(target=slow, args=(event.stream_id,), daemon=True).start()
                    else:
                        conn.send_headers(event.stream_id, [(":status", "200")])
                        conn.send_data(event.stream_id, b"ok", end_stream=True)
                sock.sendall(conn.data_to_send())


# ------------------------------------------------------------------ the bed
@dataclass
class Bed:
    origin: RunningOrigin
    proxy: RunningProxy
    plain_h1: Scripted
    plain_silent: Scripted
    tls_h1_silent: Scripted
    tls_h2_silent: Scripted
    tls_h2: Scripted
    workdir: Path


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    from mirror.ca import CertificateAuthority, LeafCache

    workdir = tmp_path_factory.mktemp("response-timeout")
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(running_origin(workdir / "origin", plain=True))
        leaves = stack.enter_context(LeafCache(CertificateAuthority.init(origin.ca_cert.parent)))
        servers = [Scripted(None), Scripted(None, silent=True),
                   Scripted(leaves.ssl_context(NAME, alpn=["http/1.1"]), silent=True),
                   Scripted(leaves.ssl_context(NAME, alpn=["h2"]), silent=True),
                   Scripted(leaves.ssl_context(NAME, alpn=["h2"]), h2=True)]
        for server in servers:
            stack.callback(server.close)
        extra = ["--upstream-ca", str(origin.ca_cert), "--upstream-response-timeout", str(TIMEOUT),
                 "--ignore-hosts", f"^{PASSTHROUGH}$",
                 "--resolve", f"{PASSTHROUGH}:{servers[1].port}:127.0.0.1"]
        for port in (origin.port, origin.plain_port, *(s.port for s in servers)):
            extra += ["--resolve", f"{NAME}:{port}:127.0.0.1"]
        proxy = stack.enter_context(running_proxy(workdir / "proxy", modes=("http",), extra=extra))
        yield Bed(origin, proxy, *servers, workdir)


# ------------------------------------------------------------------ clients
def via_proxy(proxy: RunningProxy, connect: tuple[str, int] | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=15)
    if connect is not None:
        sock.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                     % (connect[0].encode(), connect[1], connect[0].encode(), connect[1]))
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(1)
        assert reply.startswith(b"HTTP/1.1 200"), reply
    return sock


def tls_via_proxy(proxy: RunningProxy, port: int, alpn: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.set_alpn_protocols([alpn])
    tls = context.wrap_socket(via_proxy(proxy, (NAME, port)), server_hostname=NAME)
    assert tls.selected_alpn_protocol() == alpn
    return tls


def read_to_close(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def h1_get(sock: socket.socket, path: str, host: str = NAME, absolute: str = "") -> None:
    sock.sendall(f"GET {absolute}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())


def good_traffic(bed: Bed) -> None:
    """Plain and TLS requests to the real origin, each answered quickly and whole."""
    for tls in (False, True):
        started = time.monotonic()
        if tls:
            sock = tls_via_proxy(bed.proxy, bed.origin.port, "http/1.1")
            h1_get(sock, "/bytes/1000")
        else:
            sock = via_proxy(bed.proxy)
            h1_get(sock, "/bytes/1000", absolute=f"http://{NAME}:{bed.origin.plain_port}")
        with sock:
            sock.settimeout(10)
            data = b""
            while not data.endswith(pattern_bytes(1000)):
                chunk = sock.recv(65536)
                assert chunk, data[:300]
                data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
        assert time.monotonic() - started < TIMEOUT - 0.5


def assert_504(data: bytes, elapsed: float) -> None:
    assert data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), data[:300]
    assert b"X-Mirror-Error: upstream-response-timeout\r\n" in data, data
    assert b"mirror: Gateway Timeout (upstream-response-timeout): the server sent no response " \
           b"head within %gs" % TIMEOUT in data, data
    assert TIMEOUT - 0.1 <= elapsed < TIMEOUT + 2.5, elapsed


def store_record(proxy: RunningProxy, port: int, stage: str = "upstream-response-timeout",
                 protocol: str | None = None, timeout: float = 10.0) -> dict:
    """The newest capture record of a connection to ``port`` with that error stage (and
    protocol)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.store.exists():
            with contextlib.closing(sqlite3.connect(f"file:{proxy.store}?mode=ro", uri=True,
                                                    timeout=10)) as db:
                rows = [json.loads(text) for (text,) in db.execute(
                    "SELECT record FROM captures WHERE dst_port = ? ORDER BY id DESC", (port,))]
            rows = [r for r in rows if (r["error"] or {}).get("stage") == stage
                    and protocol in (None, r["protocol"])]
            if rows:
                return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no capture record for port {port} with error {stage} ({protocol})")


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("how", ["absolute-form", "connect"])
def test_plain_http_to_a_silent_server_gets_a_504_while_good_traffic_flows(bed, how):
    sock = via_proxy(bed.proxy, (NAME, bed.plain_silent.port) if how == "connect" else None)
    with sock:
        started = time.monotonic()
        absolute = f"http://{NAME}:{bed.plain_silent.port}" if how == "absolute-form" else ""
        h1_get(sock, "/anything", absolute=absolute)
        good_traffic(bed)                   # while that request waits, others go through
        data = read_to_close(sock)
        assert_504(data, time.monotonic() - started)
    record = store_record(bed.proxy, bed.plain_silent.port, protocol="http")
    assert record["http"]["requests"][0]["response"]["status"] == 504
    assert record["http"]["requests"][0]["response"]["made_by"] == "mirror"
    assert f"{TIMEOUT:g}s" in record["error"]["message"]


def test_a_second_request_waits_from_the_end_of_the_first_response(bed):
    """Keep-alive: the first answer comes, the second is never answered: 504 for it only."""
    sock = via_proxy(bed.proxy)
    with sock:
        absolute = f"http://{NAME}:{bed.plain_h1.port}"
        h1_get(sock, "/fast", absolute=absolute)
        data = b""
        while not data.endswith(b"ok"):
            data += sock.recv(65536)
        started = time.monotonic()
        h1_get(sock, "/hang", absolute=absolute)
        assert_504(read_to_close(sock), time.monotonic() - started)


def test_plain_http_long_poll_is_not_cut(bed):
    sock = via_proxy(bed.proxy)
    with sock:
        started = time.monotonic()
        h1_get(sock, "/slow", absolute=f"http://{NAME}:{bed.plain_h1.port}")
        data = b""
        while not data.endswith(pattern_bytes(SLOW_PARTS)):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert elapsed > 2 * TIMEOUT - 0.3, elapsed      # the body took longer than the timeout


def test_a_pipelined_request_behind_a_long_poll_is_not_timed_out(bed):
    """HTTP/1 answers in order: the second request waits on the first response's body, not
    on the server, so it is timed only once that response has ended (then answered at once)."""
    sock = via_proxy(bed.proxy)
    with sock:
        absolute = f"http://{NAME}:{bed.plain_h1.port}"
        sock.sendall(f"GET {absolute}/slow HTTP/1.1\r\nHost: {NAME}\r\n\r\n"
                     f"GET {absolute}/fast HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        data = b""
        while not data.endswith(b"ok"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SLOW_PARTS + pattern_bytes(SLOW_PARTS)
    assert data == slow + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", data


def test_a_large_body_read_slowly_by_the_server_is_not_timed_out(bed):
    """The request is sent whole only once the server has taken its last byte: a 1 MiB body
    read at ~270 KiB/s (well past the timeout) is answered, not cut."""
    body = pattern_bytes(1 << 20)
    sock = via_proxy(bed.proxy)
    with sock:
        started = time.monotonic()
        sock.sendall(b"POST http://%s:%d/upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                     % (NAME.encode(), bed.plain_h1.port, NAME.encode(), len(body)) + body)
        data = b""
        while not data.endswith(b"uploaded"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert time.monotonic() - started > TIMEOUT + 0.5


def test_tls_http1_to_a_silent_server_gets_a_504(bed):
    sock = tls_via_proxy(bed.proxy, bed.tls_h1_silent.port, "http/1.1")
    with sock:
        started = time.monotonic()
        h1_get(sock, "/anything")
        good_traffic(bed)
        assert_504(read_to_close(sock), time.monotonic() - started)
    store_record(bed.proxy, bed.tls_h1_silent.port)


class H2Client:
    """HTTP/2 over a TLS socket with the h2 library: requests by path, events per stream."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.heads: dict[int, tuple[float, dict]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: dict[int, float] = {}
        self.terminated = False

    def get(self, path: str) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "GET"), (":scheme", "https"),
                                        (":authority", NAME), (":path", path)], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return stream

    def until(self, done, timeout: float = 10.0) -> None:
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, (self.heads, self.ended)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            if not data:
                self.terminated = True
                return
            for event in self.conn.receive_data(data):
                now = time.monotonic()
                if isinstance(event, h2.events.ResponseReceived):
                    self.heads[event.stream_id] = (now, dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended[event.stream_id] = now
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = True
            self.sock.sendall(self.conn.data_to_send())


def test_h2_stream_without_response_headers_gets_a_504_other_streams_flow(bed):
    sock = tls_via_proxy(bed.proxy, bed.tls_h2.port, "h2")
    with sock:
        client = H2Client(sock)
        started = time.monotonic()
        hang, slow, fast = client.get("/hang"), client.get("/slow"), client.get("/fast")
        client.until(lambda: fast in client.ended)
        assert client.heads[fast][1][":status"] == "200" and client.bodies[fast] == b"ok"
        assert client.heads[fast][0] - started < TIMEOUT - 0.5
        client.until(lambda: hang in client.ended)
        at, headers = client.heads[hang]
        assert headers[":status"] == "504", headers
        assert headers["x-mirror-error"] == "upstream-response-timeout"
        assert f"no response head within {TIMEOUT:g}s" in headers["x-mirror-reason"]
        assert TIMEOUT - 0.1 <= at - started < TIMEOUT + 2.5
        client.until(lambda: slow in client.ended)        # the long-poll stream is not cut
        assert client.heads[slow][1][":status"] == "200"
        assert client.bodies[slow] == pattern_bytes(SLOW_PARTS)
        assert client.ended[slow] - started > 2 * TIMEOUT - 0.3
        again = client.get("/fast")                          # the connection is still good
        client.until(lambda: again in client.ended)
        assert client.bodies[again] == b"ok" and not client.terminated
        assert hang in bed.tls_h2.resets                     # the server was told to stop
    record = store_record(bed.proxy, bed.tls_h2.port)
    responses = [r.get("response", {}).get("status") for r in record["http"]["requests"]]
    assert sorted(responses) == [200, 200, 200, 504], responses


def test_curl_over_h2_reads_the_504_and_goes_on_on_the_same_connection(bed, tmp_path):
    """nghttp2 (curl) accepts the added HEADERS frame: the 504 first, then a request on the
    same connection is answered."""
    base = f"https://{NAME}:{bed.tls_h2.port}"
    result = subprocess.run(
        ["curl", "-sS", "--http2", "--max-time", "15", "-x", bed.proxy.url("http"), "--cacert",
         str(bed.proxy.ca_cert), "-D", "-", "-w", "%{http_code} %{num_connects}\\n",
         f"{base}/hang", "-o", str(tmp_path / "hang"), f"{base}/fast", "-o", str(tmp_path / "fast")],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.lower()
    assert "x-mirror-error: upstream-response-timeout" in lines, result.stdout
    assert "504 1\n" in lines and "200 0\n" in lines, result.stdout   # the second: reused
    assert (tmp_path / "fast").read_bytes() == b"ok"


def test_h2_to_a_server_that_never_speaks_gets_a_504_then_goaway(bed):
    sock = tls_via_proxy(bed.proxy, bed.tls_h2_silent.port, "h2")
    with sock:
        client = H2Client(sock)
        started = time.monotonic()
        stream = client.get("/anything")
        client.until(lambda: stream in client.ended)
        at, headers = client.heads[stream]
        assert headers[":status"] == "504" and headers["x-mirror-error"] == "upstream-response-timeout"
        assert TIMEOUT - 0.1 <= at - started < TIMEOUT + 2.5
        client.until(lambda: client.terminated)
    store_record(bed.proxy, bed.tls_h2_silent.port)


def test_passthrough_tunnel_to_a_silent_server_is_closed_in_time(bed):
    """Relayed raw (--ignore-hosts), the ClientHello is a whole request the server must answer:
    with no byte back in time the tunnel is closed (no HTTP answer is possible in TLS we do not
    terminate) and the capture says why."""
    sock = via_proxy(bed.proxy, (PASSTHROUGH, bed.plain_silent.port))
    context = ssl.create_default_context()
    started = time.monotonic()
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        context.wrap_socket(sock, server_hostname=PASSTHROUGH)
    elapsed = time.monotonic() - started
    sock.close()
    assert TIMEOUT - 0.1 <= elapsed < TIMEOUT + 2.5, elapsed
    record = store_record(bed.proxy, bed.plain_silent.port, protocol="passthrough")
    assert "ClientHello" in record["error"]["message"]


def test_zero_means_no_response_timeout(bed):
    extra = ["--upstream-response-timeout", "0"]
    with running_proxy(bed.workdir / "proxy-zero", modes=("http",), extra=extra) as proxy:
        sock = via_proxy(proxy)
        with sock:
            h1_get(sock, "/anything", absolute=f"http://127.0.0.1:{bed.plain_silent.port}")
            sock.settimeout(TIMEOUT + 1.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)                 # still waiting, well past the timeout the other proxy has


def test_the_option_says_its_default_and_refuses_a_negative_value():
    import sys

    shown = subprocess.run([sys.executable, "-m", "mirror", "run", "--help"], capture_output=True,
                           text=True, timeout=30, check=False)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "--upstream-response-timeout FLOAT RANGE" in text and "[default: 60.0; x>=0]" in text
    bad = subprocess.run([sys.executable, "-m", "mirror", "run", "--upstream-response-timeout",
                          "-1"], capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Invalid value for '--upstream-response-timeout'" in bad.stderr
