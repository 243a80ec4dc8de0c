"""What a client is told when the proxy refuses its bytes, by what it speaks at that stage.

HTTP/1 gets a 400 that says why: the proxy request (HTTP front), a plain relay, HTTP/1 inside
the client's TLS. HTTP/2 inside TLS gets a GOAWAY with the observer's error code and its
highest stream (nothing of the client's is sent upstream past the bad bytes). SOCKS5, the
first bytes and a raw relay get nothing: the connection just closes (the first bytes' own
refusals are ``sniff``'s, made before this).
"""

from __future__ import annotations

from mirror.proxy.error_reply import goaway
from mirror.proxy.front_events import Refusal, refusal_of
from mirror.proxy.observe import Http1Observer, Http2Observer
from mirror.proxy.stage import Stage
from mirror.wire.errors import WireError


def bad_input_reply(exc: WireError, stage: Stage, mode: str,
                    observer: Http1Observer | Http2Observer | None) -> tuple[Refusal, bytes]:
    """The refusal of ``exc``, raised by the client's bytes at ``stage`` of a connection
    accepted in ``mode``, and the bytes to send the client (possibly none)."""
    speaks_h1 = (stage in (Stage.FRONT, Stage.PLAIN) and mode != "socks5") or (
        stage == Stage.TLS and isinstance(observer, Http1Observer))
    refusal, reply = refusal_of(exc, speaks_h1=speaks_h1)
    if stage == Stage.TLS and isinstance(observer, Http2Observer):
        reply = goaway(observer.highest_stream, observer.error_code, refusal.message)
    return refusal, reply
