"""The explicit HTTP proxy front, sans-I/O: the client's first request head in, a decision out.

``HttpFront.receive(bytes)`` may be fed any number of bytes at a time. Once the head is
whole it answers with a :class:`~mirror.proxy.front_events.FrontStep`:

- wrong or missing Basic credentials (``--proxy-auth``, checked by ``AccessPolicy``): a 407
  and a :class:`Refusal` (stage "access");
- ``CONNECT host:port``: "200 Connection established" and a :class:`Tunnel` with the bytes
  that came after the head;
- an absolute-form ``http://`` request: a :class:`Forward` of every byte so far, with the
  rewrite that makes each following request origin-form (a request for another origin on the
  same connection is refused);
- a destination that is one of the proxy's own listeners: a 400 with ``X-Mirror-Error: loop``;
- anything invalid (a bad head, ``https://`` without CONNECT, a bad target): one 400 saying why.
"""

from __future__ import annotations

from collections.abc import Callable

from mirror.proxy.access import AccessPolicy
from mirror.proxy.front_events import (
    NEED_MORE,
    Destination,
    Forward,
    FrontStep,
    Refusal,
    Tunnel,
    loop_error,
    refusal_of,
)
from mirror.wire.errors import WireError
from mirror.wire.http1 import RequestHead, parse_request_head
from mirror.wire.proxy_request import (
    parse_connect_target,
    proxy_authorization,
    rewrite_request_for_origin,
    split_absolute_form,
)

PROXY_AUTH_REQUIRED = (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                       b'Proxy-Authenticate: Basic realm="mirror"\r\n'
                       b"Content-Length: 0\r\nConnection: close\r\n\r\n")
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class HttpFront:
    """One client's proxy request. ``is_own(host, port)`` says whether a destination is one
    of the proxy's own listeners; ``head_limits`` are ``parse_request_head``'s limits."""

    def __init__(self, access: AccessPolicy, head_limits: dict,
                 is_own: Callable[[str, int], bool]) -> None:
        self.access = access
        self.head_limits = head_limits
        self.is_own = is_own
        self.buffer = bytearray()

    def receive(self, data: bytes) -> FrontStep:
        self.buffer += data
        destination = None
        try:
            head = parse_request_head(bytes(self.buffer), **self.head_limits)
            if head is None:
                return NEED_MORE
            if not self.access.check(*(proxy_authorization(head) or (None, None))):
                return FrontStep(PROXY_AUTH_REQUIRED, Refusal(
                    "access", "proxy authentication failed",
                    logged="refused: proxy authentication required or wrong"))
            if head.method == "CONNECT":
                destination = Destination(*parse_connect_target(head.target), "connect")
                self._check_loop(destination)
                return FrontStep(ESTABLISHED, Tunnel(destination, bytes(self.buffer[head.length:])))
            target = split_absolute_form(head.target)
            if target.scheme != "http":
                raise WireError(f"a proxy request for {target.scheme}:// must use CONNECT",
                                layer="http1")
            destination = Destination(target.host, target.port, "absolute-form")
            self._check_loop(destination)
            return FrontStep(decision=Forward(destination, bytes(self.buffer),
                                              origin_rewrite(target.host, target.port)))
        except WireError as exc:
            refusal, reply = refusal_of(exc, speaks_h1=True)
            if destination is not None:
                refusal = Refusal(refusal.stage, refusal.message, refusal.logged, destination)
            return FrontStep(reply, refusal)

    def _check_loop(self, destination: Destination) -> None:
        if self.is_own(destination.host, destination.port):
            raise loop_error(destination)


def origin_rewrite(host: str, port: int) -> Callable[[RequestHead], bytes]:
    """The head rewrite for a plain-HTTP proxy connection to ``host:port``: origin-form
    targets pass, absolute-form ones for the same origin are made origin-form, others refused."""

    def rewrite(head: RequestHead) -> bytes:
        if head.target.startswith("/"):
            return rewrite_request_for_origin(head.raw, head, head.target)
        again = split_absolute_form(head.target)
        if (again.host, again.port) != (host, port):
            raise WireError(f"request for {again.host}:{again.port} on a connection to "
                            f"{host}:{port}; open a new connection", layer="http1")
        return rewrite_request_for_origin(head.raw, head, again.origin_form,
                                          host_header=again.host_header_value)

    return rewrite
