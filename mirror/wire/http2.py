"""The client half of an HTTP/2 connection, read frame by frame (sans-I/O).

One job: turn the bytes a client sends after TLS (connection preface first) into small event
values, exactly as sent — SETTINGS entries in wire order with duplicates and unknown / GREASE
ids kept, WINDOW_UPDATE increments, PRIORITY frames and HEADERS priority fields, and each
header block HPACK-decoded into ``(name, value)`` pairs in order, pseudo-headers included —
and keep the connection's HTTP/2 fingerprint (:class:`H2Fingerprint`, what the Akamai
fingerprint is computed from).

Frames are parsed here, from the bytes (each frame's 9-byte header decides what its payload
needs: a DATA frame's payload is never looked at beyond its padding length when the caller
does not want it); header blocks are decoded by :mod:`mirror.wire.hpack_decoder` (one decoder
per connection: the dynamic table is connection state).

Everything invalid raises :class:`~mirror.wire.errors.WireError` with layer ``"http2"``; after
that the reader is failed and every further ``feed`` raises too. Limits (the reader plays the
server, which advertises its own settings — by default RFC 9113's initial values):

* a frame longer than ``max_frame_size`` (our SETTINGS_MAX_FRAME_SIZE, default 16384);
* a header block (HEADERS + CONTINUATION fragments) longer than ``max_header_block_size``;
* a decoded header list larger than ``max_header_list_size`` (RFC 9113 §6.5.2 size: name +
  value + 32 per field) — the HPACK-bomb guard, enforced while decoding;
* more than ``max_continuation_frames`` CONTINUATION frames for one block (CONTINUATION
  flood, CVE-2024-27316 and friends);
* more than ``max_early_priority_frames`` PRIORITY frames before the first HEADERS (they are
  kept for the fingerprint, so they are bounded; browsers that used them sent six);
* ``header_table_size`` is the SETTINGS_HEADER_TABLE_SIZE the server advertised (default
  4096); the client's HPACK encoder may not use a larger dynamic table.

Names and values are decoded as latin-1 so every byte round-trips. Requests are checked as
RFC 9113 §8 says a server must: lowercase token names, no NUL/CR/LF in values, pseudo-headers
first, known and not repeated, no connection-specific fields, ``:method`` present and
``:scheme``/``:path`` present unless CONNECT. Trailers (a later HEADERS on a stream) must end
the stream and carry no pseudo-headers.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from mirror.wire.errors import WireError
from mirror.wire.hpack_decoder import HpackDecoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_LAYER = "http2"
_FRAME_HEADER = 9

# Frame type codes (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

# SETTINGS ids whose values RFC 9113 §6.5.2 / RFC 8441 / RFC 9218 constrain.
_BOOLEAN_SETTINGS = {
    0x2: "ENABLE_PUSH",
    0x8: "ENABLE_CONNECT_PROTOCOL",
    0x9: "NO_RFC7540_PRIORITIES",
}
_INITIAL_WINDOW_SIZE = 0x4
_MAX_FRAME_SIZE = 0x5

_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path", ":protocol"})
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
_NOT_NAME = re.compile(r"[^!#$%&'*+\-.^_`|~0-9a-z]")   # lowercase token characters only
_BAD_VALUE = re.compile("[\x00\r\n]")

# Flags (RFC 9113 §6): END_STREAM and ACK share a bit; PADDED and PRIORITY are HEADERS/DATA's.
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_ON_A_STREAM = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, CONTINUATION})
# A bug in this module must still surface as the one documented error, never as a crash.
_UNEXPECTED = (ValueError, IndexError, struct.error)


def _error(message: str) -> WireError:
    return WireError(message, layer=_LAYER)


# --------------------------------------------------------------------------- events


@dataclass(slots=True, frozen=True)
class Settings:
    """A SETTINGS frame: every ``(id, value)`` in wire order, duplicates and unknown ids kept."""

    entries: list[tuple[int, int]]
    ack: bool


@dataclass(slots=True, frozen=True)
class WindowUpdate:
    """A WINDOW_UPDATE frame (``stream_id`` 0 is the connection window)."""

    stream_id: int
    increment: int


@dataclass(slots=True, frozen=True)
class Priority:
    """A PRIORITY frame, or the priority fields of a HEADERS frame.

    ``weight`` is the wire byte (0-255); RFC 9113 §5.3.2's weight is ``weight + 1``.
    """

    stream_id: int
    depends_on: int
    weight: int
    exclusive: bool


@dataclass(slots=True, frozen=True)
class Headers:
    """A complete header block (HEADERS + CONTINUATIONs), decoded, in wire order."""

    stream_id: int
    headers: list[tuple[str, str]]
    end_stream: bool
    priority: Priority | None


@dataclass(slots=True, frozen=True)
class Data:
    """A DATA frame. ``length`` is the flow-controlled length (whole payload, padding
    included); ``data`` is the payload without padding."""

    stream_id: int
    length: int
    end_stream: bool
    data: bytes


@dataclass(slots=True, frozen=True)
class RstStream:
    stream_id: int
    error_code: int


@dataclass(slots=True, frozen=True)
class GoAway:
    last_stream_id: int
    error_code: int
    debug_data: bytes = b""


@dataclass(slots=True, frozen=True)
class Ping:
    opaque_data: bytes
    ack: bool


@dataclass(slots=True, frozen=True)
class Unknown:
    """A frame of a type this reader does not interpret (extension or GREASE types, ALTSVC,
    ORIGIN, ...). RFC 9113 §4.1: ignored, but reported so the frame order stays visible."""

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""


Event = Settings | WindowUpdate | Priority | Headers | Data | RstStream | GoAway | Ping | Unknown


@dataclass(slots=True, frozen=True)
class H2Fingerprint:
    """What a client's HTTP/2 connection start looks like.

    * ``settings``: the entries of the first SETTINGS frame, in wire order;
    * ``window_update``: the increment of the first connection-level (stream 0) WINDOW_UPDATE
      sent before the first HEADERS frame, or None;
    * ``priority_frames``: the PRIORITY frames sent before the first HEADERS frame, in order;
    * ``headers_priority``: the priority fields of the first HEADERS frame (PRIORITY flag), or
      None;
    * ``pseudo_header_order``: the pseudo-header names of the first header block, in order
      (e.g. ``[":method", ":authority", ":scheme", ":path"]``);
    * ``headers_stream_id``: the stream of that first request.
    """

    settings: list[tuple[int, int]]
    window_update: int | None
    priority_frames: list[Priority]
    headers_priority: Priority | None
    pseudo_header_order: list[str]
    headers_stream_id: int


# --------------------------------------------------------------------------- the reader


@dataclass(slots=True)
class _Block:
    """A header block being reassembled from HEADERS + CONTINUATION frames."""

    stream_id: int
    end_stream: bool
    priority: Priority | None
    trailers: bool
    fragments: bytearray = field(default_factory=bytearray)
    continuations: int = 0


class H2ClientReader:
    """Incremental reader of the client-to-server byte stream of one HTTP/2 connection.

    ``feed(data)`` takes bytes as they arrive (any split) and returns the events completed by
    them. The preface must come first (WireError as soon as the bytes differ from it), then a
    non-ACK SETTINGS frame (RFC 9113 §3.4). ``fingerprint`` is None until the first header
    block has been fully received. With ``server_side=True`` it reads a server's frames instead
    (fed the preface first: a server's first frame is SETTINGS as well), without the request
    field checks, so response headers (``:status``) come through. With ``data_events=False``
    DATA frames are checked but not copied: their payload bytes are skipped as they arrive,
    never buffered (what a relay that only watches headers wants), and only a DATA frame that
    ends its stream is returned, with empty ``data``, once its last byte is in. ``at_frame_boundary`` says whether
    every byte fed so far belongs to complete frames and no header block is open (where a
    relay may put a frame of its own into the stream).
    """

    def __init__(
        self,
        *,
        max_frame_size: int = 16384,
        max_header_block_size: int = 65536,
        max_header_list_size: int = 65536,
        max_continuation_frames: int = 32,
        header_table_size: int = 4096,
        max_early_priority_frames: int = 100,
        server_side: bool = False,
        data_events: bool = True,
    ) -> None:
        self.server_side = server_side   # reading a server's frames: response fields, no checks
        self.data_events = data_events
        # With data_events=False: set to {} to have the data bytes (padding excluded) of the
        # skipped DATA frames added up per stream; the caller reads and clears it.
        self.data_sizes: dict[int, int] | None = None
        self._skip = 0                   # payload bytes of the current DATA frame still to come
        self._skip_end: Data | None = None   # its event, if it ends its stream
        self.max_frame_size = max_frame_size
        self.max_early_priority_frames = max_early_priority_frames
        self.max_header_block_size = max_header_block_size
        self.max_continuation_frames = max_continuation_frames
        self._decoder = HpackDecoder(max_header_list_size=max_header_list_size,
                                     max_table_size=header_table_size)
        self._buffer = bytearray()
        self._preface_done = False
        self._failed = False
        self._frames = 0
        self._block: _Block | None = None
        self._highest_stream = 0
        # Fingerprint material, collected until the first HEADERS frame arrives.
        self._first_settings: list[tuple[int, int]] | None = None
        self._window_update: int | None = None
        self._early_priorities: list[Priority] = []
        self._seen_headers_frame = False
        self._fingerprint: H2Fingerprint | None = None

    @property
    def fingerprint(self) -> H2Fingerprint | None:
        """The connection's fingerprint, once the first header block is complete."""
        return self._fingerprint

    @property
    def preface_received(self) -> bool:
        return self._preface_done

    @property
    def at_frame_boundary(self) -> bool:
        return (self._preface_done and not self._buffer and not self._skip
                and self._block is None)

    @property
    def frames_read(self) -> int:
        return self._frames

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data``; return the events it completed, in order."""
        if self._failed:
            raise _error("reader already failed")
        try:
            return self._feed(data)
        except WireError:
            self._failed = True
            raise
        except _UNEXPECTED as exc:  # pragma: no cover - defensive
            self._failed = True
            raise _error(f"invalid frame: {exc}") from exc

    def _feed(self, data: bytes | memoryview) -> list[Event]:
        events: list[Event] = []
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            if not self._skip and self._skip_end is not None:
                events.append(self._skip_end)      # the stream's last DATA frame is in
                self._skip_end = None
            if skipped == len(data):
                return events
            data = memoryview(data)[skipped:]
        self._buffer += data
        if not self._preface_done:
            have = bytes(self._buffer[: len(PREFACE)])
            if not PREFACE.startswith(have):
                raise _error("not the HTTP/2 connection preface")
            if len(have) < len(PREFACE):
                return events
            del self._buffer[: len(PREFACE)]
            self._preface_done = True
        buffer = self._buffer
        pos = 0
        try:
            while len(buffer) - pos >= _FRAME_HEADER:
                header = bytes(buffer[pos : pos + _FRAME_HEADER])
                length = int.from_bytes(header[:3], "big")
                if length > self.max_frame_size:
                    raise _error(
                        f"frame of {length} bytes exceeds max frame size {self.max_frame_size}"
                    )
                if header[3] == DATA and not self.data_events:
                    body = pos + _FRAME_HEADER
                    padded = header[4] & _PADDED
                    if padded and length and len(buffer) <= body:
                        break                      # its pad length byte first
                    stream_id = self._data_frame(
                        header, length, (buffer[body] if length else -1) if padded else None)
                    last = Data(stream_id, length, True, b"") if header[4] & 0x1 else None
                    if len(buffer) - body >= length:
                        pos = body + length
                        if last is not None:
                            events.append(last)
                        continue
                    self._skip = length - (len(buffer) - body)
                    self._skip_end = last
                    pos = len(buffer)
                    break
                end = pos + _FRAME_HEADER + length
                if len(buffer) < end:
                    break
                payload = bytes(buffer[pos + _FRAME_HEADER : end])
                pos = end
                event = self._frame(header, payload)
                if event is not None:
                    events.append(event)
        finally:
            del buffer[:pos]  # one move per feed, not one per frame
        return events

    # ------------------------------------------------------------------ frames

    def _frame(self, header: bytes, payload: bytes) -> Event | None:
        frame_type, flags = header[3], header[4]
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        first = self._frames == 0
        self._frames += 1
        if first and (frame_type != SETTINGS or flags & 0x1):
            raise _error("the preface is not followed by a SETTINGS frame")
        if self._block is not None and (
            frame_type != CONTINUATION or stream_id != self._block.stream_id
        ):
            raise _error("header block interrupted by another frame")
        if frame_type == HEADERS:
            return self._headers(flags, stream_id, payload)
        if frame_type == SETTINGS:
            return self._settings(flags, stream_id, payload)
        if frame_type > CONTINUATION:
            return Unknown(frame_type, flags, stream_id, len(payload), payload)
        if frame_type == PUSH_PROMISE:
            raise _error("PUSH_PROMISE sent by a client")
        if frame_type in _ON_A_STREAM:
            if not stream_id:
                raise _error(f"invalid {_type_name(frame_type)} frame: stream 0")
        elif frame_type != WINDOW_UPDATE and stream_id:
            raise _error(f"invalid {_type_name(frame_type)} frame: stream {stream_id}, not 0")
        if frame_type == CONTINUATION:
            return self._continuation(flags, payload)
        if frame_type == DATA:
            return self._data(flags, stream_id, payload)
        if frame_type == PRIORITY:
            return self._priority(stream_id, payload)
        if frame_type == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _error(f"invalid WINDOW_UPDATE frame: {len(payload)}-byte payload, not 4")
            increment = int.from_bytes(payload, "big")
            if not 1 <= increment <= 0x7FFFFFFF:
                raise _error("invalid WINDOW_UPDATE frame: increment outside 1..2^31-1")
            if stream_id > self._highest_stream:
                raise _error("WINDOW_UPDATE on an idle stream")
            if stream_id == 0 and self._window_update is None and not self._seen_headers_frame:
                self._window_update = increment
            return WindowUpdate(stream_id, increment)
        if frame_type == RST_STREAM:
            if len(payload) != 4:
                raise _error(f"invalid RST_STREAM frame: {len(payload)}-byte payload, not 4")
            if stream_id > self._highest_stream:
                raise _error("RST_STREAM on an idle stream")
            return RstStream(stream_id, int.from_bytes(payload, "big"))
        if frame_type == GOAWAY:
            if len(payload) < 8:
                raise _error(f"invalid GOAWAY frame: {len(payload)}-byte payload, under 8")
            return GoAway(int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big"),
                          payload[8:])
        if frame_type == PING:
            if len(payload) != 8:
                raise _error(f"invalid PING frame: {len(payload)}-byte payload, not 8")
            return Ping(payload, bool(flags & 0x1))
        raise _error(f"unhandled frame type {frame_type}")  # pragma: no cover

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> Settings:
        if stream_id != 0:
            raise _error("SETTINGS on a stream other than 0")
        ack = bool(flags & 0x1)
        if ack and payload:
            raise _error("SETTINGS ACK with a payload")
        if len(payload) % 6:
            raise _error("SETTINGS payload is not a multiple of 6 bytes")
        entries = [
            (
                int.from_bytes(payload[i : i + 2], "big"),
                int.from_bytes(payload[i + 2 : i + 6], "big"),
            )
            for i in range(0, len(payload), 6)
        ]
        for ident, value in entries:
            if ident in _BOOLEAN_SETTINGS and value > 1:
                raise _error(f"SETTINGS_{_BOOLEAN_SETTINGS[ident]} must be 0 or 1")
            if ident == _INITIAL_WINDOW_SIZE and value > 0x7FFFFFFF:
                raise _error("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
            if ident == _MAX_FRAME_SIZE and not 16384 <= value <= 0xFFFFFF:
                raise _error("SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1")
        if not ack and self._first_settings is None:
            self._first_settings = entries
        return Settings(entries, ack)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> Headers | None:
        if not stream_id:
            raise _error("invalid HEADERS frame: stream 0")
        start, end = 0, len(payload)
        if flags & _PADDED:
            if not payload:
                raise _error("invalid HEADERS frame: no pad length")
            pad = payload[0]
            start, end = 1, end - pad
            if pad and pad >= len(payload) - 1:
                raise _error("invalid HEADERS frame: padding is too long")
        priority = None
        if flags & _PRIORITY:
            if len(payload) - start < 5:
                raise _error("invalid HEADERS frame: priority fields cut short")
            if start + 5 > end:
                raise _error("HEADERS padding longer than the payload")
            depends = int.from_bytes(payload[start : start + 4], "big")
            priority = Priority(stream_id, depends & 0x7FFFFFFF, payload[start + 4],
                                bool(depends >> 31))
            if priority.depends_on == stream_id:
                raise _error("stream depends on itself")
            start += 5
        if stream_id % 2 == 0:
            raise _error("HEADERS on an even (server-initiated) stream")
        end_stream = bool(flags & _END_STREAM)
        trailers = stream_id <= self._highest_stream
        if trailers and not end_stream:
            raise _error("HEADERS on a used stream without END_STREAM")
        if not trailers:
            self._highest_stream = stream_id
        self._seen_headers_frame = True
        self._block = _Block(stream_id, end_stream, priority, trailers)
        fragment = payload[start:end] if start or end != len(payload) else payload
        return self._add_fragment(fragment, bool(flags & _END_HEADERS))

    def _continuation(self, flags: int, payload: bytes) -> Headers | None:
        if self._block is None:
            raise _error("CONTINUATION without a preceding HEADERS")
        self._block.continuations += 1
        if self._block.continuations > self.max_continuation_frames:
            raise _error(f"more than {self.max_continuation_frames} CONTINUATION frames")
        return self._add_fragment(payload, bool(flags & _END_HEADERS))

    def _add_fragment(self, fragment: bytes, end_headers: bool) -> Headers | None:
        block = self._block
        assert block is not None
        block.fragments += fragment
        if len(block.fragments) > self.max_header_block_size:
            raise _error(f"header block larger than {self.max_header_block_size} bytes")
        if not end_headers:
            return None
        self._block = None
        headers = self._decoder.decode(bytes(block.fragments))
        if not self.server_side:
            _check_fields(headers, trailers=block.trailers)
        event = Headers(block.stream_id, headers, block.end_stream, block.priority)
        if self._fingerprint is None:
            self._fingerprint = H2Fingerprint(
                settings=list(self._first_settings or []),
                window_update=self._window_update,
                priority_frames=list(self._early_priorities),
                headers_priority=block.priority,
                pseudo_header_order=[name for name, _ in headers if name.startswith(":")],
                headers_stream_id=block.stream_id,
            )
        return event

    def _data_frame(self, header: bytes, length: int, pad_length: int | None) -> int:
        """The checks a DATA frame gets when its payload is skipped (``data_events=False``):
        those of ``_frame`` and ``_data``. ``pad_length`` is None without the PADDED flag, -1
        for a padded frame without a payload (no pad length)."""
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        if self._frames == 0:
            raise _error("the preface is not followed by a SETTINGS frame")
        self._frames += 1
        if self._block is not None:
            raise _error("header block interrupted by another frame")
        if stream_id == 0:
            raise _error("invalid DATA frame: stream 0")
        if pad_length == -1:
            raise _error("invalid DATA frame: no pad length")
        if pad_length and pad_length >= length:
            raise _error("invalid DATA frame: padding is too long")
        if stream_id > self._highest_stream or stream_id % 2 == 0:
            raise _error("DATA on a stream the client has not opened")
        if self.data_sizes is not None:
            data = length - (pad_length + 1 if pad_length is not None else 0)
            self.data_sizes[stream_id] = self.data_sizes.get(stream_id, 0) + data
        return stream_id

    def _data(self, flags: int, stream_id: int, payload: bytes) -> Data:
        data = payload
        if flags & _PADDED:
            if not payload:
                raise _error("invalid DATA frame: no pad length")
            pad = payload[0]
            if pad and pad >= len(payload):
                raise _error("invalid DATA frame: padding is too long")
            data = payload[1 : len(payload) - pad]
        if stream_id > self._highest_stream or stream_id % 2 == 0:
            raise _error("DATA on a stream the client has not opened")
        return Data(stream_id, len(payload), bool(flags & _END_STREAM), data)

    def _priority(self, stream_id: int, payload: bytes) -> Priority:
        if len(payload) != 5:
            raise _error("PRIORITY payload is not 5 bytes")
        depends = int.from_bytes(payload[:4], "big")
        event = Priority(stream_id, depends & 0x7FFFFFFF, payload[4], bool(depends >> 31))
        if event.depends_on == stream_id:
            raise _error("stream depends on itself")
        if not self._seen_headers_frame:
            if len(self._early_priorities) >= self.max_early_priority_frames:
                raise _error(
                    f"more than {self.max_early_priority_frames} PRIORITY frames before the first request"
                )
            self._early_priorities.append(event)
        return event


def _check_fields(headers: list[tuple[str, str]], *, trailers: bool) -> None:
    """RFC 9113 §8.2-8.3 checks a server makes on a request's (or trailers') field list."""
    seen_regular = False
    pseudo: dict[str, str] = {}
    for name, value in headers:
        if not name:
            raise _error("empty field name")
        if _BAD_VALUE.search(value):
            raise _error(f"NUL, CR or LF in the value of {name!r}")
        if name.startswith(":"):
            if trailers:
                raise _error("pseudo-header in trailers")
            if seen_regular:
                raise _error("pseudo-header after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise _error(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise _error(f"repeated pseudo-header {name!r}")
            pseudo[name] = value
            continue
        seen_regular = True
        if _NOT_NAME.search(name):
            raise _error(f"invalid field name {name!r} (uppercase or non-token)")
        if name in _CONNECTION_SPECIFIC or (name == "te" and value.lower() != "trailers"):
            raise _error(f"connection-specific field {name!r}")
    if trailers:
        return
    method = pseudo.get(":method")
    if not method:
        raise _error("request without :method")
    if method == "CONNECT" and ":protocol" not in pseudo:
        if ":scheme" in pseudo or ":path" in pseudo or not pseudo.get(":authority"):
            raise _error("malformed CONNECT request")
        return
    if not pseudo.get(":scheme") or not pseudo.get(":path"):
        raise _error("request without :scheme or :path")


def _type_name(frame_type: int) -> str:
    return {
        DATA: "DATA",
        HEADERS: "HEADERS",
        PRIORITY: "PRIORITY",
        RST_STREAM: "RST_STREAM",
        SETTINGS: "SETTINGS",
        PUSH_PROMISE: "PUSH_PROMISE",
        PING: "PING",
        GOAWAY: "GOAWAY",
        WINDOW_UPDATE: "WINDOW_UPDATE",
        CONTINUATION: "CONTINUATION",
    }.get(frame_type, f"type-{frame_type:#x}")
