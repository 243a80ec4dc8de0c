"""First bytes of a relayed connection, sans-I/O: a TLS ClientHello, plain HTTP, or other.

``FirstBytes.receive(bytes)`` may be fed any number of bytes at a time; it answers with a
:class:`~mirror.proxy.front_events.FrontStep` whose decision is, once the bytes tell:

- :class:`TlsHello`: the whole ClientHello (read across records, at most ``max_hello`` bytes),
  parsed, with the raw bytes as sent (anything after the hello included);
- :class:`PlainHttp`: the bytes start an HTTP/1 request line;
- :class:`RawBytes`: anything else, relayed untouched;
- :class:`Refusal`: a hello that is not valid TLS or too large, or (a reverse listener) the
  wrong kind for its origin's scheme; with a 400 when the bytes look like HTTP/1.

A few bytes that could still be an HTTP method are kept until there are enough to tell.
"""

from __future__ import annotations

import re

from mirror.proxy.front_events import (
    NEED_MORE,
    FrontStep,
    PlainHttp,
    RawBytes,
    TlsHello,
    refusal_of,
)
from mirror.wire.errors import WireError
from mirror.wire.tls import looks_like_tls, read_client_hello

HTTP_REQUEST_START = re.compile(rb"[A-Z]{1,20} [^ \r\n]+ HTTP/1\.[01]\r?\n|[A-Z]{1,20} [^ \r\n]{0,8192}$")
HTTP_METHOD_PREFIX = re.compile(rb"[A-Z]{1,20}")
UNDECIDED_MAX = 24          # a method prefix shorter than this may still become a request


def looks_like_http(data: bytes) -> bool:
    """Whether ``data`` starts like an HTTP/1 request (an answer to it is an HTTP/1 400)."""
    return HTTP_REQUEST_START.match(data) is not None


class FirstBytes:
    """``max_hello``: the largest ClientHello accepted. ``scheme``: a reverse listener's
    origin scheme ("https" needs TLS, "http" plain HTTP), None elsewhere."""

    def __init__(self, max_hello: int, scheme: str | None = None, origin: str = "") -> None:
        self.max_hello = max_hello
        self.scheme = scheme
        self.origin = origin          # "host:port" of the reverse listener's origin
        self.buffer = bytearray()

    def receive(self, data: bytes) -> FrontStep:
        self.buffer += data
        data = bytes(self.buffer)
        try:
            decision = self._decide(data)
        except WireError as exc:
            refusal, reply = refusal_of(exc, speaks_h1=looks_like_http(data))
            return FrontStep(reply, refusal)
        return NEED_MORE if decision is None else FrontStep(decision=decision)

    def _decide(self, data: bytes) -> TlsHello | PlainHttp | RawBytes | None:
        kind = looks_like_tls(data)
        if kind is None:
            return None
        if self.scheme is not None and kind != (self.scheme == "https"):
            raise WireError(f"this listener forwards to {self.scheme}://{self.origin}; the "
                            f"client must speak {'TLS' if self.scheme == 'https' else 'plain HTTP'}",
                            layer="front")
        if kind:
            hello = read_client_hello(data, max_size=self.max_hello)
            if hello is None:
                return None
            self.buffer = bytearray()
            return TlsHello(hello, data)
        if looks_like_http(data):
            self.buffer = bytearray()
            return PlainHttp(data)
        if len(data) < UNDECIDED_MAX and HTTP_METHOD_PREFIX.fullmatch(data):
            return None                    # too few bytes to tell yet
        self.buffer = bytearray()
        return RawBytes(data)
