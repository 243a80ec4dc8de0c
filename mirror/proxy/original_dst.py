"""Where a transparently intercepted connection was going.

REDIRECT (iptables nat): the kernel rewrote the destination; conntrack remembers the original,
read with ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (``SOL_IPV6, IP6T_SO_ORIGINAL_DST`` for v6).
TPROXY (mangle): the destination was never rewritten; the accepted socket's own address *is*
the original destination (the listener has IP_TRANSPARENT).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from mirror.net.listen import unmapped

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h


class OriginalDestinationError(OSError):
    """The original destination cannot be known for this connection."""


def so_original_dst(sock: socket.socket) -> tuple[str, int]:
    """The pre-NAT destination of a REDIRECTed connection (IPv4 or IPv6)."""
    try:
        if sock.family == socket.AF_INET6:
            local = sock.getsockname()[0]
            if ipaddress.IPv6Address(local.split("%")[0]).ipv4_mapped is None:
                raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
                port = struct.unpack_from("!H", raw, 2)[0]
                return str(ipaddress.IPv6Address(raw[8:24])), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError as error:
        raise OriginalDestinationError(
            error.errno, f"no original destination (SO_ORIGINAL_DST: {error.strerror}); is the "
                         "connection REDIRECTed by iptables/nftables on this host?") from None
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


def tproxy_dst(sock: socket.socket) -> tuple[str, int]:
    """The destination of a TPROXY-diverted connection: the accepted socket's own address."""
    host, port = sock.getsockname()[:2]
    return unmapped(host), port


def original_destination(sock: socket.socket, *, tproxy: bool) -> tuple[str, int, str]:
    """(host, port, how) for a transparent-mode connection."""
    if tproxy:
        host, port = tproxy_dst(sock)
        return host, port, "tproxy"
    host, port = so_original_dst(sock)
    return host, port, "so_original_dst"
