"""Watch the client's plaintext on its way upstream: HTTP/1 request heads or HTTP/2 frames.

The proxy relays the client's bytes unchanged; this observer sees them first. It records
what the capture needs (each request's headers in order and case, JA4H, the HTTP/2 SETTINGS /
WINDOW_UPDATE / PRIORITY start and the Akamai string) and it is the gate that refuses what must
not be forwarded: an HTTP/1 request whose framing is ambiguous (Content-Length with
Transfer-Encoding, two Content-Lengths, bad chunk sizes — the request-smuggling set) or an
HTTP/2 stream that is not valid raises ``WireError`` before any of it has gone upstream.

Memory and work are bounded: at most ``max_requests`` requests are recorded per connection;
bodies are framed (never buffered). When the server answers an ``Upgrade`` request (WebSocket,
h2c...) with 101, the HTTP/1 observer stops parsing: what follows is another protocol.
"""

from __future__ import annotations

from mirror.fingerprint.report import (
    http1_report,
    http2_connection_report,
    http2_request_report,
)
from mirror.wire.http1 import ChunkedReader, body_framing, parse_request_head
from mirror.wire.http2 import H2ClientReader, Headers

MAX_REQUESTS = 100
MAX_STATUS_HEADS = 16384   # interim + final response heads read while an upgrade waits


class Http1Observer:
    """Request heads and body framing of an HTTP/1.x client stream."""

    version = "HTTP/1.1"

    def __init__(self, *, max_head_size: int = 65536, max_headers: int = 100,
                 max_requests: int = MAX_REQUESTS, rewrite=None) -> None:
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_requests = max_requests
        self.requests: list[dict] = []
        self.count = 0
        self.passthrough = False      # after a 101: bytes are no longer HTTP/1
        self.upgrade_pending = False  # an Upgrade request waits for its response
        self._status = bytearray()
        self._head = bytearray()
        self._body_left = 0
        self._chunked: ChunkedReader | None = None
        self._rewrite = rewrite       # head -> bytes to send instead (explicit proxy)

    def feed(self, data: bytes) -> bytes:
        """Check ``data``; returns the bytes to forward (the same unless heads are rewritten)."""
        if self.passthrough:
            return data
        out: list[bytes] = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            if self.passthrough:
                out.append(view[pos:].tobytes())
                break
            if self._chunked is not None:
                start = pos
                self._chunked.feed(view[pos:].tobytes())
                if self._chunked.done:
                    rest = self._chunked.remainder
                    used = (end - pos) - len(rest)
                    pos += used
                    self._chunked = None
                else:
                    pos = end
                out.append(view[start:pos].tobytes())
                continue
            if self._body_left:
                take = min(self._body_left, end - pos)
                out.append(view[pos:pos + take].tobytes())
                self._body_left -= take
                pos += take
                continue
            self._head += view[pos:]
            head = parse_request_head(bytes(self._head), max_head_size=self.max_head_size,
                                      max_headers=self.max_headers)
            if head is None:
                pos = end
                break
            consumed_here = head.length - (len(self._head) - (end - pos))
            pos += consumed_here
            self._head = bytearray()
            framing = body_framing(head)
            self.count += 1
            if len(self.requests) < self.max_requests:
                self.requests.append(http1_report(head))
            out.append(self._rewrite(head) if self._rewrite else head.raw)
            if framing.kind == "chunked":
                self._chunked = ChunkedReader()
            elif framing.kind == "length":
                self._body_left = framing.length or 0
            if head.get("upgrade") is not None or head.method == "CONNECT":
                self.upgrade_pending = True
                self._status = bytearray()
        return b"".join(out)

    def server_bytes(self, data: bytes) -> None:
        """Watch the response to an Upgrade (or CONNECT) request: after a 101 (or a 2xx to
        CONNECT) the bytes are another protocol and parsing stops; after any other final
        status it goes on. Interim responses (100 Continue...) before it are skipped."""
        if not self.upgrade_pending:
            return
        self._status += data[:MAX_STATUS_HEADS - len(self._status)]
        while True:
            end = self._status.find(b"\r\n\r\n")
            if end < 0:
                if len(self._status) >= MAX_STATUS_HEADS:
                    self.upgrade_pending = False      # not a response we understand: go on
                return
            line = bytes(self._status[:self._status.find(b"\r\n")])
            parts = line.split(b" ", 2)
            status = parts[1] if len(parts) > 1 else b""
            if len(status) == 3 and status.startswith(b"1") and status != b"101":
                del self._status[:end + 4]
                continue
            connect = bool(self.requests) and self.requests[-1]["method"] == "CONNECT"
            self.passthrough = status == b"101" or (connect and status.startswith(b"2"))
            self.upgrade_pending = False
            self._status = bytearray()
            return

    def report(self) -> dict:
        return {"version": self.version, "requests": self.requests, "count": self.count,
                "h2": None}


class Http2Observer:
    """The client's HTTP/2 frames: connection start (Akamai) and each request's header block."""

    version = "HTTP/2"

    def __init__(self, *, max_requests: int = MAX_REQUESTS) -> None:
        self.reader = H2ClientReader(max_frame_size=16777215)
        self.max_requests = max_requests
        self.requests: list[dict] = []
        self.count = 0

    def feed(self, data: bytes) -> bytes:
        for event in self.reader.feed(data):
            if isinstance(event, Headers) and event.headers and event.headers[0][0].startswith(":"):
                self.count += 1
                if len(self.requests) < self.max_requests:
                    entry = http2_request_report(event.headers, event.priority)
                    entry["stream_id"] = event.stream_id
                    self.requests.append(entry)
        return data

    def report(self) -> dict:
        h2 = http2_connection_report(self.reader.fingerprint, [])
        h2.pop("frames", None)
        return {"version": self.version, "requests": self.requests, "count": self.count, "h2": h2}


def observer_for(alpn: str | None, **kwargs) -> Http1Observer | Http2Observer:
    return Http2Observer() if alpn == "h2" else Http1Observer(**kwargs)

