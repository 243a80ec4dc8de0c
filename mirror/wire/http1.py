"""HTTP/1.x request heads and body framing, parsed strictly from raw bytes (sans-I/O).

One job: turn the bytes a client sends into a :class:`RequestHead` that keeps everything a
fingerprint needs (header names in wire order, their exact case, duplicates), say how the body
that follows is framed (:func:`body_framing`), and decode a chunked body incrementally
(:class:`ChunkedReader`).

Strictness is deliberate. A MITM proxy that forwards what it was given must not forward
something a different parser upstream would read differently (request smuggling), so every
ambiguous construct RFC 9112 lets a server reject is rejected with
:class:`~mirror.wire.errors.WireError` (layer ``"http1"``):

* every line ends with CRLF; a bare LF or a bare CR anywhere in the head is an error;
* obs-fold (a header line starting with SP or HTAB) is an error (RFC 9112 §5.2 allows it);
* the request line is exactly ``method SP target SP version`` with single spaces, a token
  method, a target of visible ASCII, and a version of ``HTTP/1.0`` or ``HTTP/1.1``;
* leading empty lines before the request line are rejected (RFC 9112 §2.2 lets a server skip
  them; we would rather not guess where a request starts);
* header names are tokens with no whitespace before the colon; values may not contain CTLs
  (HTAB is allowed, obs-text bytes 0x80-0xFF are allowed and kept); OWS is stripped at both
  ends of a value and nowhere else;
* more than one ``Host`` header is an error (RFC 9112 §3.2: a server MUST answer 400);
* a head longer than ``max_head_size`` or with more than ``max_headers`` header lines is an
  error as soon as that is visible, even before the terminating CRLFCRLF has arrived.

Header names are ASCII; values are decoded as latin-1 so that every byte round-trips
(``value.encode("latin-1")`` gives back the wire bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mirror.wire.errors import WireError

_LAYER = "http1"

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                          "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Field values: HTAB, SP, VCHAR and obs-text; everything else (CTLs, DEL) is refused.
_VALUE_BYTE = frozenset([0x09, 0x20, *range(0x21, 0x7F), *range(0x80, 0x100)])
# request-target: visible ASCII only (no SP, no CTL, no obs-text).
_TARGET_BYTE = frozenset(range(0x21, 0x7F))
_OWS = b" \t"
# the same sets as bytes, to check a whole field at C speed: data.translate(None, ALLOWED)
# leaves exactly the bytes that are not allowed
_TCHAR_BYTES = bytes(sorted(_TCHAR))
_VALUE_BYTES = bytes(sorted(_VALUE_BYTE))
_TARGET_BYTES = bytes(sorted(_TARGET_BYTE))
_VERSIONS = {b"HTTP/1.0": "HTTP/1.0", b"HTTP/1.1": "HTTP/1.1"}
_DIGITS = frozenset("0123456789")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")

#: Content-Length values with more digits than this are refused (10**18 bytes is plenty).
MAX_CONTENT_LENGTH_DIGITS = 18


def _error(message: str) -> WireError:
    return WireError(message, layer=_LAYER)


@dataclass(slots=True, frozen=True)
class RequestHead:
    """One parsed HTTP/1.x request head.

    ``headers`` is every header line in wire order with the name exactly as sent (case kept)
    and duplicates kept. ``raw`` is the head's bytes including the final CRLFCRLF and
    ``length == len(raw)`` is how many bytes of the input it used; the body (if any) starts
    at ``data[length:]``.
    """

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw: bytes
    length: int

    def values(self, name: str) -> list[str]:
        """All values of header ``name`` (compared case-insensitively), in wire order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        found = self.values(name)
        return found[0] if found else None

    @property
    def header_names(self) -> list[str]:
        """Header names in wire order, exact case, duplicates kept."""
        return [key for key, _ in self.headers]


def parse_request_head(
    data: bytes, *, max_head_size: int = 65536, max_headers: int = 100
) -> RequestHead | None:
    """Parse the request head at the start of ``data``.

    Returns None while ``data`` is a valid prefix of a head that has not ended yet (no
    CRLFCRLF). Raises WireError for anything invalid, including a head that already exceeds
    ``max_head_size`` bytes (CRLFCRLF included) or ``max_headers`` header lines.
    """
    data = bytes(data)
    end = data.find(b"\r\n\r\n", 0, max_head_size)
    if end < 0:
        _check_incomplete_head(data[:max_head_size], max_headers)
        if len(data) >= max_head_size:
            raise _error(f"request head larger than {max_head_size} bytes")
        return None

    length = end + 4
    raw = data[:length]
    lines = raw[:end].split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise _error("bare CR or LF in request head")
    method, target, version = _parse_request_line(lines[0])
    header_lines = lines[1:]
    if len(header_lines) > max_headers:
        raise _error(f"more than {max_headers} header lines")
    headers = [_parse_header_line(line) for line in header_lines]
    if sum(1 for name, _ in headers if name.lower() == "host") > 1:
        raise _error("more than one Host header")
    return RequestHead(
        method=method, target=target, version=version, headers=headers, raw=raw, length=length
    )


def _check_incomplete_head(prefix: bytes, max_headers: int) -> None:
    """Reject an unfinished head early when what has arrived already cannot be valid."""
    if not prefix:
        return
    lines = prefix.split(b"\r\n")
    tail = lines.pop()  # the line still being received (may be empty)
    # A CR is legitimate only as the very last byte (its LF has not arrived yet).
    tail_body = tail[:-1] if tail.endswith(b"\r") else tail
    for line in [*lines, tail_body]:
        if b"\r" in line or b"\n" in line:
            raise _error("bare CR or LF in request head")
    if lines:
        _parse_request_line(lines[0])
        for line in lines[1:]:
            _parse_header_line(line)
        if len(lines) - 1 > max_headers:
            raise _error(f"more than {max_headers} header lines")
        _check_partial_header_line(tail_body)
    else:
        _check_partial_request_line(tail_body)


def _check_partial_request_line(part: bytes) -> None:
    if not part:
        return
    method, sp, rest = part.partition(b" ")
    if not method:
        raise _error("request line does not start with a method")
    if method.translate(None, _TCHAR_BYTES):
        raise _error("invalid character in method")
    if not sp:
        return
    target, sp, version = rest.partition(b" ")
    if target.translate(None, _TARGET_BYTES) or (sp and not target):
        raise _error("invalid request target")
    if sp and not b"HTTP/1.1".startswith(version) and not b"HTTP/1.0".startswith(version):
        raise _error("unsupported HTTP version")


def _check_partial_header_line(part: bytes) -> None:
    if not part:
        return
    if part[0] in _OWS:
        raise _error("obs-fold (header line starting with whitespace)")
    name, colon, value = part.partition(b":")
    if name.translate(None, _TCHAR_BYTES):
        raise _error("invalid character in header name")
    if colon and not name:
        raise _error("empty header name")
    if value.translate(None, _VALUE_BYTES):
        raise _error("control character in header value")


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    if not line:
        raise _error("empty request line")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _error("request line is not 'method SP target SP version'")
    method, target, version = parts
    if not method or method.translate(None, _TCHAR_BYTES):
        raise _error("invalid method")
    if not target or target.translate(None, _TARGET_BYTES):
        raise _error("invalid request target")
    if version not in _VERSIONS:
        raise _error("unsupported HTTP version")
    return method.decode("ascii"), target.decode("ascii"), _VERSIONS[version]


def _parse_header_line(line: bytes) -> tuple[str, str]:
    """One ``name: value`` line (no CRLF). Shared by heads and chunked trailers."""
    if not line:
        raise _error("empty header line")
    if line[0] in _OWS:
        raise _error("obs-fold (header line starting with whitespace)")
    name, colon, value = line.partition(b":")
    if not colon:
        raise _error("header line without a colon")
    if not name:
        raise _error("empty header name")
    if name.translate(None, _TCHAR_BYTES):
        # Covers whitespace between the name and the colon (RFC 9112 §5.1: MUST reject).
        raise _error("invalid character in header name")
    if value.translate(None, _VALUE_BYTES):
        raise _error("control character in header value")
    return name.decode("ascii"), value.strip(_OWS).decode("latin-1")


# --------------------------------------------------------------------------- body framing


@dataclass(slots=True, frozen=True)
class BodyFraming:
    """How the request body after a head is delimited.

    ``kind`` is ``"length"`` (``length`` bytes follow), ``"chunked"`` (decode with
    :class:`ChunkedReader`; ``length`` is None) or ``"none"`` (no body; ``length`` is 0).
    """

    kind: Literal["length", "chunked", "none"]
    length: int | None


def body_framing(head: RequestHead) -> BodyFraming:
    """Decide the body framing of a request (RFC 9112 §6), refusing anything ambiguous.

    WireError for: Content-Length together with Transfer-Encoding; more than one
    Content-Length header or a list value, even when all values agree (RFC 9110 §8.6 lets a
    recipient merge identical values; we reject, which is the safer reading for a proxy);
    a Content-Length that is not 1*DIGIT or has more than 18 digits; Transfer-Encoding in an
    HTTP/1.0 request (RFC 9112 §6.1: the framing is faulty); a Transfer-Encoding list with an
    empty or non-token element, ``chunked`` more than once, or a final coding that is not
    ``chunked`` (a request body's length could not be determined).
    """
    lengths = head.values("content-length")
    codings_values = head.values("transfer-encoding")
    if codings_values:
        if lengths:
            raise _error("both Content-Length and Transfer-Encoding")
        if head.version == "HTTP/1.0":
            raise _error("Transfer-Encoding in an HTTP/1.0 request")
        codings = _transfer_codings(codings_values)
        if codings[-1] != "chunked":
            raise _error("final transfer coding is not chunked")
        if codings.count("chunked") > 1:
            raise _error("chunked applied more than once")
        return BodyFraming("chunked", None)
    if lengths:
        if len(lengths) > 1:
            raise _error("more than one Content-Length header")
        value = lengths[0]
        if not value or any(c not in _DIGITS for c in value):
            raise _error("Content-Length is not a decimal number")
        if len(value) > MAX_CONTENT_LENGTH_DIGITS:
            raise _error("Content-Length too large")
        return BodyFraming("length", int(value))
    return BodyFraming("none", 0)


def _transfer_codings(values: list[str]) -> list[str]:
    codings: list[str] = []
    for value in values:
        for element in value.split(","):
            coding = element.strip(" \t")
            name = coding.split(";", 1)[0].strip(" \t").lower()
            if not name or any(ord(c) > 0x7F or ord(c) not in _TCHAR for c in name):
                raise _error("invalid Transfer-Encoding element")
            if name == "chunked" and name != coding.lower():
                raise _error("parameters on the chunked coding")
            codings.append(name)
    return codings


# --------------------------------------------------------------------------- chunked bodies


class ChunkedReader:
    """Incremental decoder of a ``Transfer-Encoding: chunked`` body (RFC 9112 §7.1).

    Feed it the bytes that follow the head, in any pieces; ``feed`` returns the body data
    decoded so far as a list of byte strings (pieces of chunks, never empty). ``done`` turns
    True after the last chunk and the trailer section; ``trailers`` then holds the trailer
    fields (wire order, exact case) and ``remainder`` the bytes fed after the body's end (the
    next pipelined request). Memory is bounded by ``max_line`` (a chunk-size line with its
    extensions) and ``max_trailer_size`` / ``max_trailers``; chunk data is passed through
    without being buffered.

    Strict: chunk sizes are 1-16 hex digits with nothing before them (no sign, no ``0x``, no
    whitespace); a chunk-size line may only continue with chunk extensions (``;`` after
    optional SP/HTAB, no CTLs), which are tolerated and dropped; chunk data must be followed
    by CRLF; every line ends with CRLF. Anything else raises WireError (layer ``"http1"``),
    and the reader stays failed.
    """

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE, _FAILED = range(6)
    MAX_SIZE_DIGITS = 16

    def __init__(
        self, *, max_line: int = 4096, max_trailer_size: int = 16384, max_trailers: int = 100
    ) -> None:
        self.max_line = max_line
        self.max_trailer_size = max_trailer_size
        self.max_trailers = max_trailers
        self.trailers: list[tuple[str, str]] = []
        self.remainder = b""
        self._state = self._SIZE
        self._line = bytearray()
        self._left = 0  # bytes of chunk data still expected, or of the CRLF after it
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section have been read."""
        return self._state == self._DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Decode ``data``; returns the body bytes it carried (possibly an empty list)."""
        if self._state == self._FAILED:
            raise _error("chunked reader already failed")
        if self._state == self._DONE:
            self.remainder += bytes(data)
            return []
        try:
            return self._feed(bytes(data))
        except WireError:
            self._state = self._FAILED
            raise

    def _feed(self, view: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, end = 0, len(view)
        while pos < end:
            state = self._state
            if state == self._DATA:
                take = min(self._left, end - pos)
                out.append(view[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state, self._left = self._DATA_END, 2
            elif state == self._DATA_END:
                expected = b"\r\n"[2 - self._left]
                if view[pos] != expected:
                    raise _error("chunk data not followed by CRLF")
                pos += 1
                self._left -= 1
                if self._left == 0:
                    self._state = self._SIZE
            elif state in (self._SIZE, self._TRAILER):
                pos = self._take_line(view, pos, end)
            else:  # DONE: everything after the body belongs to the next message
                self.remainder += view[pos:end]
                pos = end
        return out

    def _take_line(self, view: bytes, pos: int, end: int) -> int:
        """Accumulate one CRLF-terminated line; process it when complete."""
        newline = view.find(b"\n", pos, end)
        stop = end if newline < 0 else newline + 1
        self._line += view[pos:stop]
        limit = self.max_line if self._state == self._SIZE else self.max_trailer_size
        if len(self._line) > limit + 2:
            raise _error("chunk-size or trailer line too long")
        if newline >= 0:
            line = bytes(self._line)
            self._line.clear()
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise _error("bare LF or CR in chunked framing")
            if self._state == self._SIZE:
                self._size_line(line[:-2])
            else:
                self._trailer_line(line[:-2])
        elif b"\r" in self._line[:-1]:
            raise _error("bare CR in chunked framing")
        return stop

    def _size_line(self, line: bytes) -> None:
        digits = 0
        while digits < len(line) and line[digits] in _HEXDIGITS:
            digits += 1
        if digits == 0:
            raise _error("chunk size is not hexadecimal")
        if digits > self.MAX_SIZE_DIGITS:
            raise _error("chunk size has too many digits")
        _check_chunk_extensions(line[digits:])
        size = int(line[:digits], 16)
        if size == 0:
            self._state = self._TRAILER
        else:
            self._state, self._left = self._DATA, size

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._state = self._DONE
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self.max_trailer_size:
            raise _error("trailer section too large")
        if len(self.trailers) >= self.max_trailers:
            raise _error("too many trailer fields")
        self.trailers.append(_parse_header_line(line))


def _check_chunk_extensions(rest: bytes) -> None:
    """``*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )``, loosely: it must
    start (after optional whitespace) with ``;`` and contain no CTL other than HTAB."""
    if not rest:
        return
    if rest.lstrip(_OWS)[:1] != b";":
        raise _error("junk after chunk size")
    if rest.translate(None, _VALUE_BYTES):
        raise _error("control character in chunk extension")
