"""Watch the client's plaintext on its way upstream: HTTP/1 request heads or HTTP/2 frames.

The proxy relays the client's bytes unchanged; this observer sees them first. It records
what the capture needs (each request's headers in order and case, JA4H — made by the store's
writer from them, off the event loop —, the HTTP/2 SETTINGS / WINDOW_UPDATE / PRIORITY start
and the Akamai string) and it is the gate that refuses what must
not be forwarded: an HTTP/1 request whose framing is ambiguous (Content-Length with
Transfer-Encoding, two Content-Lengths, bad chunk sizes — the request-smuggling set) or an
HTTP/2 stream that is not valid raises ``WireError`` before any of it has gone upstream.

Memory and work are bounded: at most ``max_requests`` requests are recorded per connection;
bodies are framed (never buffered). When the server answers an ``Upgrade`` request (WebSocket,
h2c...) with 101, the HTTP/1 observer stops parsing: what follows is another protocol.
"""

from __future__ import annotations

from collections import deque

from mirror.fingerprint.http import ja4h_all
from mirror.fingerprint.report import (
    http1_request_fields,
    http2_connection_report,
    http2_request_fields,
)
from mirror.proxy.response_timeout import StreamWaits
from mirror.record.deferred import DeferredFields
from mirror.wire.errors import WireError
from mirror.wire.http1 import ChunkedReader, body_framing, parse_request_head
from mirror.wire.http1_response import parse_response_head, response_body
from mirror.wire.http2 import PREFACE, H2ClientReader, Headers, RstStream, Settings

MAX_REQUESTS = 100
MAX_RESETS = 1000          # streams a client may open and reset (rapid reset, CVE-2023-44487)
MAX_SETTINGS = 1000        # SETTINGS frames per connection (a SETTINGS flood)
H2_PROTOCOL_ERROR, H2_COMPRESSION_ERROR, H2_ENHANCE_YOUR_CALM = 0x1, 0x9, 0xB


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
        self._pending: deque[tuple[dict | None, str]] | None = None  # requests awaiting a response
        self._response = bytearray()  # the response head being read
        self._response_left = 0       # body bytes of the current response still to skip
        self._response_chunked: ChunkedReader | None = None
        self._responses_lost = False  # close-delimited body or unreadable bytes: stop following
        self._answer: dict | None = None   # the response whose body bytes are being counted
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
            entry = None
            if len(self.requests) < self.max_requests:
                entry = http1_request_fields(head)
                entry["ja4h"] = DeferredFields(ja4h_all, head.method, head.version,
                                               entry["headers"])
                self.requests.append(entry)
            if self._pending is None:
                self._pending = deque()
            self._pending.append((entry, head.method))
            out.append(self._rewrite(head) if self._rewrite else head.raw)
            if framing.kind == "chunked":
                self._chunked = ChunkedReader()
            elif framing.kind == "length":
                self._body_left = framing.length or 0
        return b"".join(out)

    def server_bytes(self, data: bytes) -> None:
        """Follow the server's responses: status and headers go to their request's entry;
        after a 101 (or a 2xx to CONNECT) the bytes are another protocol and parsing stops.
        The server's bytes are never refused: what cannot be followed is no longer followed."""
        if self.passthrough:
            return
        if self._responses_lost:
            if self._answer is not None:              # a body that runs to the close
                self._answer["body_size"] += len(data)
            return
        try:
            self._responses(memoryview(data))
        except WireError:
            self._responses_lost = True

    def _responses(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end and not self.passthrough and not self._responses_lost:
            if self._response_chunked is not None:
                pieces = self._response_chunked.feed(view[pos:].tobytes())
                if self._answer is not None:
                    self._answer["body_size"] += sum(map(len, pieces))
                if not self._response_chunked.done:
                    return
                pos = end - len(self._response_chunked.remainder)
                self._response_chunked = None
                continue
            if self._response_left:
                take = min(self._response_left, end - pos)
                self._response_left -= take
                if self._answer is not None:
                    self._answer["body_size"] += take
                pos += take
                continue
            self._response += view[pos:]
            head = parse_response_head(bytes(self._response))
            if head is None:
                return
            pos = end - (len(self._response) - head.length)
            self._response = bytearray()
            if 100 <= head.status < 200 and head.status != 101:
                continue                              # interim: the final one follows
            entry, method = self._pending.popleft() if self._pending else (None, "GET")
            self._answer = None
            if entry is not None:
                entry["response"] = {"status": head.status, "reason": head.reason,
                                     "headers": [[n, v] for n, v in head.headers],
                                     "body_size": 0}   # bytes of the body, without framing
                self._answer = entry["response"]
            if head.status == 101 or (method == "CONNECT" and 200 <= head.status < 300):
                self.passthrough = True
                return
            kind, length = response_body(head, method)
            if kind == "length":
                self._response_left = length or 0
            elif kind == "chunked":
                self._response_chunked = ChunkedReader()
            elif kind == "close":
                self._responses_lost = True           # the body runs to the end of the connection
                if self._answer is not None:
                    self._answer["body_size"] += end - pos
                return

    def awaiting_response(self) -> bool:
        """True while the oldest unanswered request has been sent whole and no byte of a
        response is under way (what ``--upstream-response-timeout`` times)."""
        if self.passthrough or self._responses_lost or not self._pending:
            return False
        if self._response or self._response_left or self._response_chunked is not None:
            return False
        sending = 1 if (self._body_left or self._chunked is not None) else 0
        return len(self._pending) > sending

    def mark_response(self, response: dict) -> None:
        """Record ``response`` (one the proxy made) for the oldest unanswered request."""
        if self._pending and self._pending[0][0] is not None:
            self._pending[0][0]["response"] = response

    def stamp(self, now: float) -> None:
        """Give requests and responses seen since the last call the time ``now``."""
        _stamp(self.requests, now)

    def report(self) -> dict:
        return {"version": self.version, "requests": self.requests, "count": self.count,
                "h2": None}


class Http2Observer:
    """The client's HTTP/2 frames: connection start (Akamai) and each request's header block."""

    version = "HTTP/2"

    def __init__(self, *, max_requests: int = MAX_REQUESTS) -> None:
        self.reader = H2ClientReader(max_frame_size=16777215, data_events=False)
        self.max_requests = max_requests
        self.requests: list[dict] = []
        self.count = 0
        self._by_stream: dict[int, dict] = {}
        self.resets = 0
        self.settings_frames = 0
        self.highest_stream = 0
        self.error_code = H2_PROTOCOL_ERROR     # for the GOAWAY when this observer refuses
        self._server: H2ClientReader | None = None   # the server's frames (responses)
        self._answers: dict[int, dict] = {}          # stream -> its response (body bytes)
        self._server_data_sizes: dict[int, int] = {}  # the server reader's DATA bytes per stream
        self._responses_lost = False
        self.waits: StreamWaits | None = None     # StreamWaits (--upstream-response-timeout): fed both sides' events

    def feed(self, data: bytes) -> bytes:
        try:
            events = self.reader.feed(data)
        except WireError as error:
            text = str(error).lower()
            self.error_code = (H2_COMPRESSION_ERROR if "hpack" in text or "header list" in text
                               else H2_ENHANCE_YOUR_CALM if "continuation" in text
                               or "larger than" in text or "more than" in text
                               else H2_PROTOCOL_ERROR)
            raise
        for event in events:
            if isinstance(event, RstStream):
                self.resets += 1
                if self.resets > MAX_RESETS:
                    self.error_code = H2_ENHANCE_YOUR_CALM
                    raise WireError(f"more than {MAX_RESETS} streams reset by the client "
                                    "(rapid reset)", layer="http2")
            elif isinstance(event, Settings):
                self.settings_frames += 1
                if self.settings_frames > MAX_SETTINGS:
                    self.error_code = H2_ENHANCE_YOUR_CALM
                    raise WireError(f"more than {MAX_SETTINGS} SETTINGS frames (a flood)",
                                    layer="http2")
            if self.waits is not None:
                self.waits.client_event(event)
            if isinstance(event, Headers):
                self.highest_stream = max(self.highest_stream, event.stream_id)
            if isinstance(event, Headers) and event.headers and event.headers[0][0].startswith(":"):
                self.count += 1
                if len(self.requests) < self.max_requests:
                    entry = http2_request_fields(event.headers, event.priority)
                    entry["ja4h"] = DeferredFields(ja4h_all, entry["method"], "HTTP/2",
                                                   entry["headers"])
                    entry["stream_id"] = event.stream_id
                    self.requests.append(entry)
                    self._by_stream[event.stream_id] = entry
        return data

    def server_bytes(self, data: bytes) -> None:
        """Follow the server's frames for each response's status and headers (the reader reads
        them as it reads a client's: after the preface, the server's first frame is SETTINGS
        too)."""
        if self._responses_lost:
            return
        try:
            if self._server is None:
                table = dict(self.reader.fingerprint.settings).get(1, 4096) \
                    if self.reader.fingerprint else 65536
                self._server = H2ClientReader(max_frame_size=16777215, server_side=True,
                                              data_events=False,
                                              header_table_size=max(table, 4096))
                self._server.feed(PREFACE)
                self._server.data_sizes = self._server_data_sizes
            for event in self._server.feed(data):
                if self.waits is not None:
                    self.waits.server_event(event)
                if isinstance(event, Headers):
                    entry = self._by_stream.get(event.stream_id)
                    status = next((v for n, v in event.headers if n == ":status"), None)
                    if entry is not None and status is not None and not status.startswith("1"):
                        entry["response"] = {"status": int(status) if status.isdigit() else 0,
                                             "reason": "",
                                             "headers": [[n, v] for n, v in event.headers],
                                             "body_size": 0}
                        del self._by_stream[event.stream_id]
                        self._answers[event.stream_id] = entry["response"]
            sizes = self._server_data_sizes
            for stream_id, size in sizes.items():
                answer = self._answers.get(stream_id)
                if answer is not None:
                    answer["body_size"] += size
            sizes.clear()
        except WireError:
            self._responses_lost = True

    def server_state(self) -> str:
        """Where the server's byte stream stands, for a frame the proxy adds towards the
        client: "silent" (no whole frame yet: not even its SETTINGS), "boundary" (between
        frames, no header block open), "mid-frame" or "lost" (no longer followed)."""
        if self._responses_lost:
            return "lost"
        if self._server is None:
            return "silent"
        if not self._server.at_frame_boundary:
            return "mid-frame"
        return "boundary" if self._server.frames_read else "silent"

    def mark_response(self, stream_id: int, response: dict) -> None:
        """Record ``response`` (one the proxy made) for the request on ``stream_id``."""
        entry = self._by_stream.pop(stream_id, None)
        if entry is not None:
            entry["response"] = response

    def stamp(self, now: float) -> None:
        _stamp(self.requests, now)

    def report(self) -> dict:
        h2 = http2_connection_report(self.reader.fingerprint, [])
        h2.pop("frames", None)
        return {"version": self.version, "requests": self.requests, "count": self.count, "h2": h2}


def _stamp(requests: list[dict], now: float) -> None:
    for entry in reversed(requests):
        response = entry.get("response")
        if response is not None and "time" not in response:
            response["time"] = now
        if "time" in entry:
            if response is None or "time" in response:
                break
            continue
        entry["time"] = now


def observer_for(alpn: str | None, **kwargs) -> Http1Observer | Http2Observer:
    return Http2Observer() if alpn == "h2" else Http1Observer(**kwargs)

