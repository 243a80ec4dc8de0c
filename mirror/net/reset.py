"""Close an asyncio transport with a TCP reset (RST) instead of a FIN.

A relay passes a server's reset on as a reset: a clean FIN would make a body delimited by
the end of the connection look complete to the client.
"""

from __future__ import annotations

import contextlib
import socket
import struct


def abort_with_reset(transport) -> None:
    """SO_LINGER 0 on the transport's socket (when it has one), then ``abort()``."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
