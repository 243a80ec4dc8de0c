"""Read an HTTP/1 request head that the strict parser refuses, for capture analysis only.

The proxy must refuse ambiguous heads (:mod:`mirror.wire.http1` is strict on purpose); a
capture analyser should still fingerprint what a client actually sent, the way the peers that
accepted it (and FoxIO's tools, through Wireshark) read it.
"""

from __future__ import annotations

from mirror.wire import http1

__all__ = ["lenient_request_head"]


def lenient_request_head(data: bytes, *, max_head_size: int = 65536) -> http1.RequestHead | None:
    """The request head at the start of ``data``, read leniently.

    Accepted here, unlike :func:`mirror.wire.http1.parse_request_head`: bare-LF line endings
    (mixed with CRLF), obs-fold lines (joined to the previous value), and any whitespace
    between the request-line fields. The request line must still be ``METHOD target
    HTTP/x.y`` and header lines ``name: value``.
    Returns None when no such head can be read (the strict error then stands).
    """
    end_crlf = data.find(b"\r\n\r\n", 0, max_head_size)
    end_lf = data.find(b"\n\n", 0, max_head_size)
    candidates = [(end_crlf, 4), (end_lf, 2)]
    ends = [(position, width) for position, width in candidates if position >= 0]
    if not ends:
        return None
    end, width = min(ends)
    # "\n\r\n" also ends a head (a bare LF line followed by an empty CRLF line).
    mixed = data.find(b"\n\r\n", 0, max_head_size)
    if 0 <= mixed < end:
        end, width = mixed, 3
    length = end + width
    lines = [line.rstrip(b"\r") for line in data[:end].split(b"\n")]
    request_line = lines[0].split()
    if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/"):
        return None
    try:
        method, target, version = (part.decode("ascii") for part in request_line)
    except UnicodeDecodeError:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:
            folded_name, folded_value = headers[-1]
            headers[-1] = (folded_name, f"{folded_value} {line.strip().decode('latin-1')}")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return None
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return http1.RequestHead(method, target, version, headers, bytes(data[:length]), length)
