"""A real test origin for the proxy's functional tests: TLS (h2 + HTTP/1.1) and plain HTTP/1.1.

Run as ``python tests/origin.py --port 0 --ca-dir DIR [--plain-port 0] [--http1-only]``; it
prints one line ``origin listening tls=PORT plain=PORT|-`` and serves until SIGTERM (exit 0).
The TLS leaf is for ``origin.test``, minted by the CA in DIR (``DIR/ca.pem`` is what clients
and the proxy's ``--upstream-ca`` trust). ALPN offers h2 and http/1.1, or http/1.1 only.

Endpoints (HTTP/1.1 via h11, HTTP/2 via h2 with flow control):
- POST/PUT /echo: 200 with the request body byte for byte (Content-Length), headers
  ``x-body-sha256`` and ``x-request-framing`` (chunked / length / none / h2). HTTP/1.1
  ``Expect: 100-continue`` is answered with 100 before the body is read.
- GET /bytes/N: ``pattern_bytes(N)`` with Content-Length.
- GET /headers: JSON {version, method, target, headers: [[name, value], ...]} in wire order
  (HTTP/1.1: original case via h11's raw_items; HTTP/2: as decoded, pseudo-headers included).
- GET /reset/N: announces Content-Length N, sends N // 2 bytes, waits until the kernel has
  them acknowledged, then aborts the TCP connection with an RST (SO_LINGER 0). HTTP/1.1 with
  ``?framing=close``: no Content-Length (a body delimited by the connection's end, RFC 9112
  §6.3), so only the RST tells the client the body is incomplete. HTTP/2 with
  ``?how=stream``: RST_STREAM instead, the connection stays up.
- GET /ws (HTTP/1.1): WebSocket upgrade (RFC 6455), then every data frame is echoed back
  (same opcode and FIN bit, unmasked), pings answered with pongs, close echoed then closed.

Bounded: TLS handshake and idle timeouts, a body size limit, h11's head size limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

NAME = "origin.test"
IDLE_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
MAX_BODY = 64 << 20
MAX_HEAD = 65536
MAX_WS_FRAME = 16 << 20
READ_SIZE = 65536
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern_bytes(n: int) -> bytes:
    """The deterministic body of /bytes/N (and the first half of /reset/N)."""
    return random.Random(n).randbytes(n)


def websocket_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


class BodyTooLarge(Exception):
    pass


# ---------------------------------------------------------------------------- helpers
async def wait_sent(writer: asyncio.StreamWriter, limit: float = 5.0) -> None:
    """Wait until every byte written has left asyncio's buffers and been ACKed by the peer."""
    await writer.drain()
    sock = writer.get_extra_info("socket")
    deadline = time.monotonic() + limit
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if outq == 0 and writer.transport.get_write_buffer_size() == 0:
            quiet += 1
        else:
            quiet = 0
        await asyncio.sleep(0.01)


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def route(method: str, path: str) -> tuple[str, int | None]:
    """(endpoint, number) for a request path; endpoint "" for an unknown one."""
    path, _, _ = path.partition("?")
    if path == "/echo" and method in ("POST", "PUT"):
        return "echo", None
    match = re.fullmatch(r"/(bytes|reset)/(\d{1,9})", path)
    if match and method == "GET":
        return match.group(1), int(match.group(2))
    if path == "/headers" and method in ("GET", "POST"):
        return "headers", None
    if path == "/ws" and method == "GET":
        return "ws", None
    return "", None


# ---------------------------------------------------------------------------- HTTP/1.1
class Http1Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        self.h11 = h11
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self):
        h11 = self.h11
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), IDLE_TIMEOUT)
            self.conn.receive_data(data)

    def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        h11 = self.h11
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.send(h11.Response(status_code=status, headers=headers))
        if body:
            self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())
        await self.writer.drain()

    async def read_body(self) -> bytes:
        h11 = self.h11
        if self.conn.they_are_waiting_for_100_continue:
            self.send(h11.InformationalResponse(status_code=100, headers=[]))
            await self.writer.drain()
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise ConnectionError(f"unexpected {event!r} inside a request body")

    async def run(self) -> None:
        h11 = self.h11
        while True:
            try:
                event = await self.next_event()
            except h11.RemoteProtocolError:
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self.send(h11.Response(status_code=400, headers=[(b"connection", b"close"),
                                                                     (b"content-length", b"0")]))
                    self.send(h11.EndOfMessage())
                    await self.writer.drain()
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            if await self.handle(event) == "done":
                return
            if self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def handle(self, request) -> str | None:
        h11 = self.h11
        method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        raw = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items()]
        endpoint, number = route(method, target)
        if endpoint == "ws":
            return await self.websocket(raw)
        try:
            body = await self.read_body()
        except BodyTooLarge:
            await self.respond(413, [(b"connection", b"close")], b"too large\n")
            return "done"
        if endpoint == "echo":
            names = {n.lower(): v for n, v in raw}
            framing = ("chunked" if "chunked" in names.get("transfer-encoding", "").lower()
                       else "length" if "content-length" in names else "none")
            await self.respond(200, [(b"content-type", b"application/octet-stream"),
                                     (b"x-body-sha256", hashlib.sha256(body).hexdigest().encode()),
                                     (b"x-request-framing", framing.encode())], body)
        elif endpoint == "bytes":
            await self.respond(200, [(b"content-type", b"application/octet-stream")],
                               pattern_bytes(number))
        elif endpoint == "headers":
            report = {"version": f"HTTP/{request.http_version.decode()}", "method": method,
                      "target": target, "headers": [list(pair) for pair in raw]}
            await self.respond(200, [(b"content-type", b"application/json")],
                               json.dumps(report).encode())
        elif endpoint == "reset":
            half = pattern_bytes(number)[: number // 2]
            if "framing=close" in target:     # no length: the body ends when the connection does
                self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                  b"Connection: close\r\n\r\n" + half)
            else:
                self.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(number).encode())]))
                self.send(h11.Data(data=half))
            await wait_sent(self.writer)
            abort_with_rst(self.writer)
            return "done"
        else:
            await self.respond(404, [(b"content-type", b"text/plain")],
                               f"not found: {method} {target}\n".encode("latin-1"))
        return None

    async def websocket(self, raw: list[tuple[str, str]]) -> str:
        h11 = self.h11
        names = {n.lower(): v for n, v in raw}
        key = names.get("sec-websocket-key", "").encode("latin-1")
        await self.read_body()         # h11 switches protocols only after the request's end
        if (names.get("upgrade", "").lower() != "websocket"
                or "upgrade" not in names.get("connection", "").lower() or not key):
            await self.respond(400, [(b"connection", b"close")], b"not a websocket upgrade\n")
            return "done"
        self.send(h11.InformationalResponse(status_code=101, headers=[
            (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", websocket_accept(key))]))
        await self.writer.drain()
        leftover, _ = self.conn.trailing_data
        await websocket_echo(self.reader, self.writer, bytes(leftover))
        return "done"


async def websocket_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         buffered: bytes) -> None:
    buffer = bytearray(buffered)

    async def need(count: int) -> bytes:
        while len(buffer) < count:
            data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
            if not data:
                raise ConnectionError("websocket peer went away")
            buffer.extend(data)
        out = bytes(buffer[:count])
        del buffer[:count]
        return out

    def frame(fin_opcode: int, payload: bytes) -> bytes:
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", fin_opcode, size)
        elif size < 65536:
            head = struct.pack("!BBH", fin_opcode, 126, size)
        else:
            head = struct.pack("!BBQ", fin_opcode, 127, size)
        return head + payload

    while True:
        first, second = await need(2)
        opcode = first & 0x0F
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", await need(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await need(8))[0]
        if not second & 0x80 or size > MAX_WS_FRAME or first & 0x70:
            writer.write(frame(0x88, struct.pack("!H", 1002)))   # protocol error
            await writer.drain()
            return
        mask = await need(4)
        payload = bytes(await need(size))
        if size:
            key = (mask * (size // 4 + 1))[:size]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        if opcode == 0x8:
            writer.write(frame(0x88, payload[:125]))
            await writer.drain()
            return
        if opcode == 0x9:
            writer.write(frame(0x8A, payload))
        elif opcode in (0x0, 0x1, 0x2):
            writer.write(frame(first & 0x8F, payload))
        await writer.drain()


# ---------------------------------------------------------------------------- HTTP/2
@dataclass
class H2Stream:
    headers: list[tuple[str, str]]
    body: bytearray
    task: asyncio.Task | None = None
    reset: bool = False


class Http2Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="latin-1",
                                           normalize_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.streams: dict[int, H2Stream] = {}
        self.window_open = asyncio.Event()
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    def _window_changed(self) -> None:
        self.window_open.set()
        self.window_open = asyncio.Event()

    async def run(self) -> None:
        import h2.events
        import h2.exceptions

        self.conn.initiate_connection()
        self.flush()
        try:
            while not self.closed:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), IDLE_TIMEOUT)
                if not data:
                    return
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush()
                    return
                for event in events:
                    self.on_event(event, h2.events)
                self.flush()
                await self.writer.drain()
        finally:
            self.closed = True
            self._window_changed()
            for stream in self.streams.values():
                if stream.task is not None:
                    stream.task.cancel()

    def on_event(self, event, events) -> None:
        if isinstance(event, events.RequestReceived):
            self.streams[event.stream_id] = H2Stream(list(event.headers), bytearray())
        elif isinstance(event, events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                stream.body += event.data
                if len(stream.body) > MAX_BODY:
                    self.conn.reset_stream(event.stream_id, 11)   # ENHANCE_YOUR_CALM
                    stream.reset = True
        elif isinstance(event, events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.reset:
                stream.task = asyncio.create_task(self.respond_quietly(event.stream_id, stream))
        elif isinstance(event, events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset = True
                if stream.task is not None:
                    stream.task.cancel()
            self._window_changed()
        elif isinstance(event, (events.WindowUpdated, events.RemoteSettingsChanged)):
            self._window_changed()
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = True

    async def send_body(self, stream_id: int, body: bytes, end: bool = True) -> bool:
        import h2.exceptions

        view = memoryview(body)
        while view and not self.closed:
            try:
                room = min(self.conn.local_flow_control_window(stream_id),
                           self.conn.max_outbound_frame_size, len(view))
            except h2.exceptions.StreamClosedError:
                return False
            if room <= 0:
                waiter = self.window_open
                try:
                    await asyncio.wait_for(waiter.wait(), IDLE_TIMEOUT)
                except TimeoutError:
                    return False
                continue
            self.conn.send_data(stream_id, view[:room].tobytes())
            view = view[room:]
            self.flush()
            await self.writer.drain()
        if self.closed:
            return False
        if end:
            self.conn.end_stream(stream_id)
            self.flush()
        return True

    async def respond_quietly(self, stream_id: int, stream: H2Stream) -> None:
        import h2.exceptions

        try:
            await self.respond(stream_id, stream)
        except (OSError, h2.exceptions.ProtocolError, asyncio.CancelledError):
            pass

    async def respond(self, stream_id: int, stream: H2Stream) -> None:
        pseudo = dict(h for h in stream.headers if h[0].startswith(":"))
        method, target = pseudo.get(":method", ""), pseudo.get(":path", "")
        endpoint, number = route(method, target)
        body = bytes(stream.body)
        extra: list[tuple[str, str]] = [("content-type", "application/octet-stream")]
        status = 200
        if endpoint == "echo":
            out = body
            extra += [("x-body-sha256", hashlib.sha256(body).hexdigest()),
                      ("x-request-framing", "h2")]
        elif endpoint == "bytes":
            out = pattern_bytes(number)
        elif endpoint == "headers":
            out = json.dumps({"version": "HTTP/2", "method": method, "target": target,
                              "headers": [list(pair) for pair in stream.headers]}).encode()
            extra = [("content-type", "application/json")]
        elif endpoint == "reset":
            self.conn.send_headers(stream_id, [(":status", "200"), *extra,
                                               ("content-length", str(number))])
            self.flush()
            if not await self.send_body(stream_id, pattern_bytes(number)[: number // 2], end=False):
                return
            if "how=stream" in target:
                self.conn.reset_stream(stream_id, 2)     # INTERNAL_ERROR
                self.flush()
                return
            await wait_sent(self.writer)
            self.closed = True
            abort_with_rst(self.writer)
            return
        else:
            status, out = 404, f"not found: {method} {target}\n".encode("latin-1")
            extra = [("content-type", "text/plain")]
        self.conn.send_headers(stream_id, [(":status", str(status)), *extra,
                                           ("content-length", str(len(out)))],
                               end_stream=not out)
        self.flush()
        if out:
            await self.send_body(stream_id, out)
        await self.writer.drain()
        self.streams.pop(stream_id, None)


# ---------------------------------------------------------------------------- server
class Origin:
    def __init__(self, ca_dir: Path, http1_only: bool) -> None:
        from mirror.ca import CertificateAuthority, LeafCache

        self.ca = CertificateAuthority.init(ca_dir)
        self.leaves = LeafCache(self.ca)       # kept alive: it owns the leaf's files
        alpn = ["http/1.1"] if http1_only else ["h2", "http/1.1"]
        self.context = self.leaves.ssl_context(NAME, alpn=alpn)
        self.tasks: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            session = Http2Session(reader, writer) if alpn == "h2" else Http1Session(reader, writer)
            await session.run()
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as error:   # noqa: BLE001 - log and drop this connection only
            print(f"origin: connection failed: {type(error).__name__}: {error}", file=sys.stderr,
                  flush=True)
        finally:
            self.tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.close()

    async def serve(self, host: str, port: int, plain_port: int | None) -> None:
        loop = asyncio.get_running_loop()
        servers = [await asyncio.start_server(self.handle, host, port, ssl=self.context,
                                              ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                                              limit=READ_SIZE)]
        if plain_port is not None:
            servers.append(await asyncio.start_server(self.handle, host, plain_port, limit=READ_SIZE))
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        plain = str(ports[1]) if plain_port is not None else "-"
        print(f"origin listening tls={ports[0]} plain={plain}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for server in servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TLS port (0: any free one)")
    parser.add_argument("--plain-port", type=int, default=None,
                        help="also serve plain HTTP/1.1 here (0: any free one)")
    parser.add_argument("--ca-dir", required=True, type=Path)
    parser.add_argument("--http1-only", action="store_true", help="offer only http/1.1 in ALPN")
    args = parser.parse_args(argv)
    origin = Origin(args.ca_dir, args.http1_only)
    asyncio.run(origin.serve(args.host, args.port, args.plain_port))
    return 0


# ---------------------------------------------------------------------------- for tests
@dataclass
class RunningOrigin:
    process: subprocess.Popen
    port: int
    plain_port: int | None
    ca_cert: Path
    log: Path


@contextlib.contextmanager
def running_origin(workdir: Path, *, http1_only: bool = False, plain: bool = False,
                   ca_dir: Path | None = None):
    """Start ``tests/origin.py`` in a subprocess; SIGTERM at the end (it must exit 0).

    ``ca_dir`` (default ``workdir/ca``) is created on first use and reused after that, so
    several origins can share one CA (one ``--upstream-ca`` file for the proxy)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca_dir = ca_dir or workdir / "ca"
    repo = Path(__file__).resolve().parents[1]
    args = [sys.executable, str(Path(__file__).resolve()), "--port", "0",
            "--ca-dir", str(ca_dir)]
    if plain:
        args += ["--plain-port", "0"]
    if http1_only:
        args.append("--http1-only")
    log = workdir / "origin.log"
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.match(r"origin listening tls=(\d+) plain=(\d+|-)", line)
        if not match:
            proc.kill()
            raise AssertionError(f"origin did not start: {line!r} {log.read_text()!r}")
        plain_port = int(match.group(2)) if match.group(2) != "-" else None
        yield RunningOrigin(proc, int(match.group(1)), plain_port, ca_dir / "ca.pem", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository, for mirror.ca
    sys.exit(main())
