"""The stages of one proxied connection, in the order a connection normally goes through them."""

from __future__ import annotations

import enum


class Stage(enum.Enum):
    FRONT = "front"            # explicit modes: the proxy request or SOCKS5 handshake
    FIRST = "first"            # the first bytes: a ClientHello, plain HTTP or other
    CONNECTING = "connecting"  # TLS: the upstream is being opened, the client waits
    TLS = "tls"                # TLS relay: the client's TLS terminated, the upstream mirrored
    PLAIN = "plain"            # plain HTTP relay (observed)
    RAW = "raw"                # raw relay: passthrough TLS or unknown bytes
    ERROR = "error"            # the upstream failed: the client is told why
    CLOSED = "closed"


# The members under module names, for the paths run on every chunk of bytes: on Python 3.11
# ``Stage.TLS`` is a descriptor lookup (~0.2 us), a module name a dictionary lookup.
FRONT, FIRST, CONNECTING, TLS, PLAIN, RAW, ERROR, CLOSED = Stage
