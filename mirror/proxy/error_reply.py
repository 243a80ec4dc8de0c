"""Tell the client why its request could not reach the server: 400 / 502 / 504 with the reason.

Used when the upstream connection failed after the client's TLS was accepted (or for plain
HTTP), and for a request the proxy refuses. HTTP/1.1: one response, then the connection closes.
HTTP/2: a server connection (h2) that answers every request with the same response and then
sends GOAWAY. The body is plain text starting with "mirror:"; the header ``X-Mirror-Error``
carries the failed stage.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions

REASONS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 504: "Gateway Timeout"}


def _body(status: int, stage: str, message: str) -> bytes:
    return f"mirror: {REASONS.get(status, 'Error')} ({stage}): {message}\n".encode("utf-8", "replace")


def http1_error(status: int, stage: str, message: str) -> bytes:
    body = _body(status, stage, message)
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Mirror-Error: {stage}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def goaway(last_stream_id: int, error_code: int, message: str) -> bytes:
    """One HTTP/2 GOAWAY frame (RFC 9113 §6.8) with ``message`` as its debug data."""
    debug = message.encode("utf-8", "replace")[:256]
    payload = (last_stream_id & 0x7FFFFFFF).to_bytes(4, "big") + error_code.to_bytes(4, "big")
    payload += debug
    return len(payload).to_bytes(3, "big") + b"\x07\x00" + (0).to_bytes(4, "big") + payload


class H2ErrorResponder:
    """An HTTP/2 server that answers every request with one error response."""

    def __init__(self, status: int, stage: str, message: str) -> None:
        self.status = status
        self.stage = stage
        self.body = _body(status, stage, message)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.done = False

    def initial(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> bytes:
        """Client bytes in, bytes to send out. ``done`` turns True once GOAWAY is sent."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.done = True
            return self.conn.data_to_send()
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.conn.send_headers(event.stream_id, [
                    (b":status", str(self.status).encode()),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(self.body)).encode()),
                    (b"x-mirror-error", self.stage.encode()),
                ])
                self.conn.send_data(event.stream_id, self.body, end_stream=True)
                self.conn.close_connection(last_stream_id=event.stream_id)
                self.done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.done = True
        return self.conn.data_to_send()


# ---------------------------------------------------------------- frames added to a relayed h2
# The server's HPACK state is shared by the server's encoder and the client's decoder: a header
# block the proxy adds must leave the dynamic table alone, so every field is a literal "without
# indexing" (RFC 7541 §6.2.2), its name from the static table where there is one.
_STATIC_NAMES = {b":status": 8, b"content-length": 28, b"content-type": 31}


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    index = _STATIC_NAMES.get(name)
    head = _hpack_int(index, 4) if index else b"\x00" + _hpack_int(len(name), 7) + name
    return head + _hpack_int(len(value), 7) + value


def h2_error_headers(stream_id: int, status: int, stage: str, message: str) -> bytes:
    """One HEADERS frame (END_HEADERS | END_STREAM) answering ``stream_id`` with ``status``,
    the stage in ``x-mirror-error`` and the reason in ``x-mirror-reason`` (no body: DATA would
    take from the client's flow-control window, which the server counts too)."""
    reason = " ".join(_body(status, stage, message).decode("utf-8").split())
    block = b"".join([
        _literal(b":status", str(status).encode()),
        _literal(b"content-length", b"0"),
        _literal(b"x-mirror-error", stage.encode("ascii", "replace")),
        _literal(b"x-mirror-reason", reason.encode("ascii", "replace")),
    ])
    return (len(block).to_bytes(3, "big") + b"\x01\x05"
            + (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + block)


def h2_settings_empty() -> bytes:
    """An empty SETTINGS frame (a server's connection preface, when the server sent none)."""
    return b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rst_stream(stream_id: int, error_code: int = 0x8) -> bytes:
    """One RST_STREAM frame (default CANCEL)."""
    return (b"\x00\x00\x04\x03\x00" + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")
            + error_code.to_bytes(4, "big"))
