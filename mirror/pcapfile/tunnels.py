"""Recognise a SOCKS4 / SOCKS4a / SOCKS5 handshake at the start of a client's byte stream.

A client that talks to a SOCKS proxy sends its handshake first and then the tunnelled
protocol (often a TLS ClientHello) in the same TCP stream. :func:`tunnel_prefix_length` says
how many bytes the handshake takes, reading only what the client sends:

* SOCKS4: ``VN=4 CD=1|2 DSTPORT DSTIP USERID NUL``; SOCKS4a adds ``HOST NUL`` when DSTIP is
  ``0.0.0.x`` with x != 0;
* SOCKS5 (RFC 1928): the greeting ``VER=5 NMETHODS METHODS``, then, if the next byte is 1, the
  RFC 1929 username/password sub-negotiation ``VER=1 ULEN UNAME PLEN PASSWD`` (the server's
  method choice is not needed: a request starts with 5), then the request
  ``VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT`` with an IPv4, domain or IPv6 address.

(HTTP CONNECT is an HTTP/1 request and is handled by the HTTP/1 walk.) Malformed handshakes
raise ``WireError`` with layer ``socks4`` / ``socks5``.
"""

from __future__ import annotations

from mirror.wire.errors import WireError

__all__ = ["tunnel_prefix_length"]


def _socks4_length(data: bytes) -> tuple[int, str] | None:
    # VN=4, CD=1|2, DSTPORT(2), DSTIP(4), USERID NUL [, DOMAIN NUL when DSTIP is 0.0.0.x, x != 0]
    if len(data) < 9:
        return None
    if data[1] not in (1, 2):
        raise WireError(f"SOCKS4 command {data[1]} is neither CONNECT nor BIND", layer="socks4")
    end = data.find(b"\x00", 8, 8 + 256)
    if end < 0:
        if len(data) >= 8 + 256:
            raise WireError("SOCKS4 user id longer than 255 bytes", layer="socks4")
        return None
    position = end + 1
    if data[4:7] == b"\x00\x00\x00" and data[7] != 0:  # SOCKS4a: a host name follows
        end = data.find(b"\x00", position, position + 256)
        if end < 0:
            if len(data) >= position + 256:
                raise WireError("SOCKS4a host name longer than 255 bytes", layer="socks4")
            return None
        return end + 1, "socks4a"
    return position, "socks4"


def _socks5_length(data: bytes) -> tuple[int, str] | None:
    # Greeting: VER=5, NMETHODS, METHODS; optional RFC 1929 VER=1 ULEN UNAME PLEN PASSWD;
    # request: VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT.
    if len(data) < 2:
        return None
    methods = data[1]
    if methods == 0:
        raise WireError("SOCKS5 greeting offers no methods", layer="socks5")
    position = 2 + methods
    if len(data) <= position:
        return None
    if data[position] == 0x01:  # username / password sub-negotiation
        if len(data) < position + 2:
            return None
        position += 2 + data[position + 1]
        if len(data) < position + 1:
            return None
        position += 1 + data[position]
    if len(data) < position + 5:
        return None
    version, command, reserved, address_type = data[position : position + 4]
    if version != 5:
        raise WireError(f"SOCKS5 request version {version}", layer="socks5")
    if command not in (1, 2, 3) or reserved != 0:
        raise WireError("invalid SOCKS5 request", layer="socks5")
    position += 4
    if address_type == 1:
        position += 4
    elif address_type == 4:
        position += 16
    elif address_type == 3:
        position += 1 + data[position]
    else:
        raise WireError(f"SOCKS5 address type {address_type}", layer="socks5")
    position += 2
    if len(data) < position:
        return None
    return position, "socks5"


def tunnel_prefix_length(data: bytes) -> tuple[int, str] | None:
    """(length, kind) of a SOCKS4/4a/5 handshake at the start of a client stream.

    None when ``data`` does not start with one or it is not complete; WireError when it
    starts like one but is malformed.
    """
    if not data:
        return None
    if data[0] == 4:
        return _socks4_length(data)
    if data[0] == 5:
        return _socks5_length(data)
    return None
