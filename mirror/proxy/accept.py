"""What a connection accepted in each mode starts with.

The explicit modes start with a front to feed the client's bytes to: ``HttpFront`` (an HTTP
proxy request) or ``SocksFront`` (a SOCKS5 handshake). The others know their destination at
once and start on the first bytes: a reverse listener's one origin, or a transparent
connection's original destination (``original_dst``: REDIRECT or TPROXY). That is a
:class:`Tunnel` to it, or a :class:`Refusal` when it cannot be known or is one of the proxy's
own listeners (a loop: the refusal names the destination, for the capture record).
"""

from __future__ import annotations

import dataclasses
import socket

from mirror.proxy.front_events import Destination, Refusal, Tunnel, loop_error, refusal_of
from mirror.proxy.http_front import HttpFront
from mirror.proxy.original_dst import OriginalDestinationError, original_destination
from mirror.proxy.socks_front import SocksFront

Start = HttpFront | SocksFront | Tunnel | Refusal


def start_for(proxy, mode: str, target: tuple[str, str, int] | None,
              sock: socket.socket) -> Start:
    """The start of a connection accepted on ``sock`` by a ``mode`` listener of ``proxy``
    (``target``: a reverse listener's origin, as (scheme, host, port))."""
    if mode == "http":
        return HttpFront(proxy.access, proxy.head_limits, proxy.is_own_address)
    if mode == "socks5":
        return SocksFront(proxy.access, proxy.is_own_address)
    if mode == "reverse" and target is not None:
        destination = Destination(target[1], target[2], "reverse")
    elif mode == "transparent":
        try:
            host, port, how = original_destination(sock, tproxy=proxy.config.tproxy)
        except OriginalDestinationError as exc:
            return Refusal("front", str(exc))
        destination = Destination(host, port, how)
    else:
        raise ValueError(f"no such listener mode: {mode!r}")
    if proxy.is_own_address(destination.host, destination.port):
        refusal, _ = refusal_of(loop_error(destination), speaks_h1=False)
        return dataclasses.replace(refusal, destination=destination)
    return Tunnel(destination)
