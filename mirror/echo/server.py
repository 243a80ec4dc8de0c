"""The fingerprint echo server: answers every request with JSON of how the client looked.

In the manner of tls.peet.ws, and the judge of mirror's own fidelity tests, so it normalises
nothing away. Per connection it reads:

* the client's SYN, from the kernel (TCP_SAVE_SYN) — JA4T and the p0f-style signature;
* the raw ClientHello, from the first bytes, before any TLS library sees them; the same bytes
  are then replayed into an ``ssl.SSLObject`` over memory BIOs to finish the handshake;
* HTTP/1.x request heads with mirror's own parser (wire order, case, duplicates), or the
  HTTP/2 frames with mirror's own reader (SETTINGS order, WINDOW_UPDATE, PRIORITY, HEADERS
  priority, HPACK header order), while the ``h2`` library only drives the server's side.

Cleartext connections work too: HTTP/1.x, or HTTP/2 with prior knowledge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from mirror.fingerprint.report import (
    http1_report,
    http2_connection_report,
    http2_request_report,
    jsonable,
    tls_report,
)
from mirror.net.saved_syn import client_syn
from mirror.net.tls_server import ServerTls
from mirror.wire.errors import WireError
from mirror.wire.http1 import ChunkedReader, RequestHead, body_framing, parse_request_head
from mirror.wire.http2 import PREFACE, Event, H2ClientReader, Headers
from mirror.wire.tls import looks_like_tls, read_client_hello

log = logging.getLogger("mirror.echo")

FIRST_BYTES_TIMEOUT = 15.0
MAX_FRAMES_LOGGED = 64

ContextFactory = Callable[[str | None], ssl.SSLContext]


def _frame_entry(event: Event) -> dict[str, Any]:
    entry: dict[str, Any] = {"frame": type(event).__name__}
    entry.update(jsonable(event))
    if "data" in entry and isinstance(entry["data"], str):
        entry["data"] = f"{len(entry['data']) // 2} bytes"
    if "payload" in entry and isinstance(entry["payload"], str):
        entry["payload"] = f"{len(entry['payload']) // 2} bytes"
    return entry


class EchoConnection(asyncio.Protocol):
    """One client connection: first bytes, optional TLS, then HTTP/1.x or HTTP/2."""

    def __init__(self, context_for: ContextFactory) -> None:
        self._context_for = context_for
        self._transport: asyncio.Transport | None = None
        self._first = bytearray()
        self._tls: ServerTls | None = None
        self._app: H2Echo | H1Echo | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.peer: Any = None       # the peer's socket address
        self.report: dict[str, Any] = {}

    # -- connection set-up ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's do not subclass asyncio.Transport: no isinstance)
        self._transport = cast(asyncio.Transport, transport)
        self.peer = peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        self.report = {
            "client": {"address": peer[0], "port": peer[1]},
            "tcp": client_syn(sock)[1],
            "tls": None,
        }
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(FIRST_BYTES_TIMEOUT, self._first_bytes_timeout)

    def _first_bytes_timeout(self) -> None:
        if self._app is None and self._transport is not None:
            log.info("echo %s: no complete first flight after %.0fs, closing", self.peer,
                     FIRST_BYTES_TIMEOUT)
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except (WireError, ssl.SSLError, h2.exceptions.H2Error) as exc:
            log.info("echo %s: closing: %s", self.peer, exc)
            self.close(abort=True)

    def _receive(self, data: bytes) -> None:
        if self._tls is None and self._app is None:
            self._first += data
            kind = looks_like_tls(self._first)
            if kind is None:
                return
            if kind:
                hello = read_client_hello(bytes(self._first))
                if hello is None:
                    return
                self.report["tls"] = tls_report(hello)
                self._tls = ServerTls(self._context_for(hello.sni))
            else:
                if not self._choose_plain_app():
                    return
            data, self._first = bytes(self._first), bytearray()
        if self._tls is not None:
            plain = self._tls.receive(data)
            self._flush_tls()
            if self._app is None and self._tls.handshake_done:
                alpn = self._tls.alpn
                self.report["tls"]["negotiated"] = {"alpn": alpn, "version": self._tls.version}
                self._start_app("h2" if alpn == "h2" else "http/1.1")
            if plain:
                assert self._app is not None  # application data only after the handshake
                self._app.receive(plain)
            if self._tls.closed:
                self.close()
        else:
            assert self._app is not None  # chosen above from the first bytes
            self._app.receive(data)

    def _choose_plain_app(self) -> bool:
        prefix = bytes(self._first[: len(PREFACE)])
        if PREFACE.startswith(prefix) and len(prefix) < len(PREFACE):
            return False
        self._start_app("h2" if prefix == PREFACE else "http/1.1")
        return True

    def _start_app(self, protocol: str) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self._app = H2Echo(self) if protocol == "h2" else H1Echo(self)

    # -- output -----------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._transport is None:
            return
        if self._tls is not None:
            self._tls.send(data)
            self._flush_tls()
        else:
            self._transport.write(data)

    def _flush_tls(self) -> None:
        if self._tls is None:
            return
        out = self._tls.outgoing()
        if out and self._transport is not None:
            self._transport.write(out)

    def close(self, abort: bool = False) -> None:
        if self._transport is None:
            return
        if abort:
            self._transport.abort()
            return
        if self._tls is not None and self._tls.handshake_done:
            self._tls.close()
            self._flush_tls()
        self._transport.close()


class H1Echo:
    """HTTP/1.x: parse each head, skip its body, answer with the JSON report."""

    def __init__(self, conn: EchoConnection) -> None:
        self.conn = conn
        self.buffer = bytearray()
        self.head: RequestHead | None = None
        self.remaining = 0
        self.chunked: ChunkedReader | None = None
        self.body_length = 0
        self.requests = 0

    def receive(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.head is None:
                if not self.buffer:
                    return
                head = parse_request_head(bytes(self.buffer))
                if head is None:
                    return
                del self.buffer[: head.length]
                self.head = head
                framing = body_framing(head)
                self.body_length = 0
                self.chunked = ChunkedReader() if framing.kind == "chunked" else None
                self.remaining = (framing.length or 0) if framing.kind == "length" else 0
                expect = head.get("Expect")
                if expect and expect.lower() == "100-continue":
                    self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            if not self._consume_body():
                return
            self._respond()

    def _consume_body(self) -> bool:
        if self.chunked is not None:
            chunks = self.chunked.feed(bytes(self.buffer))
            self.body_length += sum(len(c) for c in chunks)
            self.buffer.clear()
            return self.chunked.done
        take = min(self.remaining, len(self.buffer))
        del self.buffer[:take]
        self.remaining -= take
        self.body_length += take
        return self.remaining == 0

    def _respond(self) -> None:
        head, self.head = self.head, None
        if head is None:
            return
        self.requests += 1
        report = dict(self.conn.report)
        report["http_version"] = head.version
        report["http1"] = http1_report(head)
        report["http1"]["body_length"] = self.body_length
        report["http1"]["request_index"] = self.requests
        body = json.dumps(report, indent=1).encode()
        close = (head.version == "HTTP/1.0"
                 or any(v.lower() == "close" for v in head.values("Connection")))
        response = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        ).encode() + body
        self.conn.send(response)
        if close:
            self.conn.close()


class H2Echo:
    """HTTP/2: mirror's reader records the client's frames; h2 serves the responses."""

    def __init__(self, conn: EchoConnection) -> None:
        self.conn = conn
        self.reader = H2ClientReader()
        self.frames: list[dict[str, Any]] = []
        self.streams: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, bytes] = {}
        config = h2.config.H2Configuration(client_side=False, header_encoding="latin-1",
                                           validate_inbound_headers=False,
                                           normalize_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.conn.send(self.h2.data_to_send())

    def receive(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            if len(self.frames) < MAX_FRAMES_LOGGED:
                self.frames.append(_frame_entry(frame))
            if isinstance(frame, Headers) and frame.stream_id not in self.streams:
                self.streams[frame.stream_id] = {"headers": frame.headers, "priority": frame.priority,
                                                 "body_length": 0}
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.streams:
                    self.streams[event.stream_id]["body_length"] += len(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                self._respond(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self._drain()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.conn.send(self.h2.data_to_send())
                self.conn.close()
                return
        self.conn.send(self.h2.data_to_send())

    def _respond(self, stream_id: int) -> None:
        seen = self.streams.pop(stream_id, None)
        if seen is None:
            return
        report = dict(self.conn.report)
        report["http_version"] = "HTTP/2"
        report["http2"] = http2_connection_report(self.reader.fingerprint, self.frames)
        request = http2_request_report(seen["headers"], seen["priority"])
        request["stream_id"] = stream_id
        request["body_length"] = seen["body_length"]
        report["http2"]["request"] = request
        body = json.dumps(report, indent=1).encode()
        self.h2.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                         ("content-length", str(len(body))),
                                         ("cache-control", "no-store")])
        self.pending[stream_id] = body
        self._drain()

    def _drain(self) -> None:
        for stream_id in list(self.pending):
            body = self.pending[stream_id]
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                del self.pending[stream_id]
                continue
            size = min(window, len(body), self.h2.max_outbound_frame_size)
            while size > 0:
                self.h2.send_data(stream_id, body[:size])
                body = body[size:]
                window -= size
                size = min(window, len(body), self.h2.max_outbound_frame_size)
            if body:
                self.pending[stream_id] = body
            else:
                self.h2.end_stream(stream_id)
                del self.pending[stream_id]


async def serve(listener, context_for: ContextFactory) -> asyncio.base_events.Server:
    """Start serving on an already listening socket (TCP_SAVE_SYN set by the caller)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoConnection(context_for), sock=listener)
