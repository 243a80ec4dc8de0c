"""HTTP/1.x response heads and how their bodies end, sans-I/O — what the proxy needs to follow
a server's responses on a relayed connection (status and headers for the capture, where each
response ends so the next can be read). Lenient where a proxy only observes: header lines are
kept as sent; anything that is not a response head raises ``WireError`` (layer "http1")."""

from __future__ import annotations

from dataclasses import dataclass

from mirror.wire.errors import WireError
from mirror.wire.http1 import _parse_header_line, _transfer_codings

MAX_RESPONSE_HEAD = 65536


@dataclass(slots=True, frozen=True)
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    length: int

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


def parse_response_head(data: bytes, max_size: int = MAX_RESPONSE_HEAD) -> ResponseHead | None:
    end = data.find(b"\r\n\r\n", 0, max_size)
    if end < 0:
        if len(data) >= max_size:
            raise WireError("response head larger than the limit", layer="http1")
        if not b"HTTP/1.".startswith(bytes(data[:7])):
            raise WireError("not an HTTP/1 response", layer="http1")
        return None
    lines = bytes(data[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise WireError("not an HTTP/1 status line", layer="http1")
    headers = [_parse_header_line(line) for line in lines[1:]]
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return ResponseHead(parts[0].decode(), int(parts[1]), reason, headers, end + 4)


def response_body(head: ResponseHead, request_method: str) -> tuple[str, int | None]:
    """("none", 0) | ("length", n) | ("chunked", None) | ("close", None) — RFC 9112 §6.3."""
    if request_method == "HEAD" or 100 <= head.status < 200 or head.status in (204, 304):
        return "none", 0
    codings = [v for k, v in head.headers if k.lower() == "transfer-encoding"]
    if codings:
        return ("chunked", None) if _transfer_codings(codings)[-1] == "chunked" else ("close", None)
    length = head.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise WireError("invalid Content-Length in a response", layer="http1")
        return "length", int(length.strip())
    return "close", None
