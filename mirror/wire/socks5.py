"""The server side of a SOCKS5 handshake (RFC 1928, RFC 1929), parsed and built from bytes.

One job: read what a SOCKS5 client sends before its tunnelled bytes, and build the server's
answers. A handshake is three client messages, each answered by the server:

1. greeting ``VER=5 NMETHODS METHODS...`` -> :func:`parse_greeting`; answer with
   :func:`method_reply` of :func:`choose_method`;
2. if the chosen method is ``METHOD_USERPASS``, the RFC 1929 sub-negotiation
   ``VER=1 ULEN UNAME PLEN PASSWD`` -> :func:`parse_userpass`; answer :func:`userpass_reply`;
3. the request ``VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT`` -> :func:`parse_request`; answer
   :func:`reply` (``REP_SUCCEEDED`` and the bound address, or an error code).

Every parser takes the bytes received so far, returns None while they are a valid prefix,
and otherwise a value whose ``length`` says how many bytes it used: a client may send its
request and the first bytes of the tunnel (a TLS ClientHello, say) in one segment, and
``data[length:]`` belongs to the tunnel. Invalid input raises
:class:`~mirror.wire.errors.WireError` (layer ``"socks5"``) as soon as it is visible, even
before the message is complete. A refused request raises :class:`RequestError`, a WireError
that also carries the RFC 1928 reply code to send before closing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mirror.wire.errors import WireError

_LAYER = "socks5"
VERSION = 5
USERPASS_VERSION = 1

# Authentication methods (RFC 1928 §3).
METHOD_NO_AUTH = 0x00
METHOD_GSSAPI = 0x01
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

# Commands (RFC 1928 §4).
CMD_CONNECT = 1
CMD_BIND = 2
CMD_UDP_ASSOCIATE = 3
_COMMANDS = frozenset((CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE))

# Address types (RFC 1928 §5).
ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

# Reply codes (RFC 1928 §6).
REP_SUCCEEDED = 0
GENERAL_FAILURE = 1
NOT_ALLOWED = 2
NETWORK_UNREACHABLE = 3
HOST_UNREACHABLE = 4
CONNECTION_REFUSED = 5
TTL_EXPIRED = 6
COMMAND_NOT_SUPPORTED = 7
ADDRESS_TYPE_NOT_SUPPORTED = 8

# Bytes a domain name may contain: letters, digits, hyphen, dot, underscore (seen in real
# names). Anything else - NUL, controls, spaces, "/", "@", non-ASCII (a client must send an
# IDNA A-label, "xn--...") - is refused, so the name is safe to log, resolve and put in a
# Host header. An IPv6 literal sent as a "domain" is accepted too (see _domain).
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def _error(message: str) -> WireError:
    return WireError(message, layer=_LAYER)


class RequestError(WireError):
    """A SOCKS5 request that is refused; ``reply_code`` is what to answer before closing
    (``GENERAL_FAILURE``, ``COMMAND_NOT_SUPPORTED`` or ``ADDRESS_TYPE_NOT_SUPPORTED``)."""

    def __init__(self, message: str, reply_code: int) -> None:
        super().__init__(message, layer=_LAYER)
        self.reply_code = reply_code


@dataclass(slots=True, frozen=True)
class Greeting:
    """The client's first message: the authentication methods it offers, in its order."""

    methods: tuple[int, ...]
    length: int


@dataclass(slots=True, frozen=True)
class UserPass:
    """RFC 1929 credentials, as raw bytes (the RFC names no character set)."""

    username: bytes
    password: bytes
    length: int


@dataclass(slots=True, frozen=True)
class Request:
    """The client's request: what to do (``command``) and where.

    ``host`` is dotted-quad IPv4, compressed IPv6 (no brackets) or an ASCII domain name as
    sent; ``address_type`` says which of the three was on the wire (1, 4 or 3).
    """

    command: int
    host: str
    port: int
    address_type: int
    length: int


# --------------------------------------------------------------------------- greeting


def parse_greeting(data: bytes) -> Greeting | None:
    """``VER=5 NMETHODS METHODS``; NMETHODS must be at least 1."""
    data = bytes(data)
    if not data:
        return None
    if data[0] != VERSION:
        raise _error(f"greeting version is {data[0]}, not 5")
    if len(data) < 2:
        return None
    count = data[1]
    if count == 0:
        raise _error("greeting offers no authentication method")
    length = 2 + count
    if len(data) < length:
        return None
    return Greeting(methods=tuple(data[2:length]), length=length)


def choose_method(greeting: Greeting, require_auth: bool) -> int:
    """The method the server picks from the client's offer.

    With ``require_auth``: username/password if offered, else ``METHOD_NONE_ACCEPTABLE``.
    Without: no-auth if offered; else username/password if offered (some clients configured
    with credentials offer only that; the caller then runs the sub-negotiation and may accept
    any credentials); else ``METHOD_NONE_ACCEPTABLE``.
    """
    if not require_auth and METHOD_NO_AUTH in greeting.methods:
        return METHOD_NO_AUTH
    if METHOD_USERPASS in greeting.methods:
        return METHOD_USERPASS
    return METHOD_NONE_ACCEPTABLE


def method_reply(method: int) -> bytes:
    """The server's answer to the greeting: ``VER=5 METHOD``."""
    return bytes((VERSION, _byte(method, "method")))


# --------------------------------------------------------------------------- RFC 1929


def parse_userpass(data: bytes) -> UserPass | None:
    """``VER=1 ULEN UNAME PLEN PASSWD`` (empty username or password accepted as sent)."""
    data = bytes(data)
    if not data:
        return None
    if data[0] != USERPASS_VERSION:
        raise _error(f"username/password sub-negotiation version is {data[0]}, not 1")
    if len(data) < 2:
        return None
    user_end = 2 + data[1]
    if len(data) < user_end + 1:
        return None
    length = user_end + 1 + data[user_end]
    if len(data) < length:
        return None
    return UserPass(username=data[2:user_end], password=data[user_end + 1 : length], length=length)


def userpass_reply(ok: bool) -> bytes:
    """``VER=1 STATUS``: 0 accepts; anything else refuses (the server then closes)."""
    return bytes((USERPASS_VERSION, 0 if ok else 1))


# --------------------------------------------------------------------------- request


def parse_request(data: bytes) -> Request | None:
    """``VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT``.

    Raises :class:`RequestError` with ``COMMAND_NOT_SUPPORTED`` for a command other than
    CONNECT, BIND or UDP ASSOCIATE, ``ADDRESS_TYPE_NOT_SUPPORTED`` for an address type other
    than 1, 3 or 4, and ``GENERAL_FAILURE`` for anything else malformed (wrong version,
    non-zero RSV, an empty or unsafe domain name, CONNECT to port 0).
    """
    data = bytes(data)
    if not data:
        return None
    if data[0] != VERSION:
        raise RequestError(f"request version is {data[0]}, not 5", GENERAL_FAILURE)
    if len(data) < 2:
        return None
    command = data[1]
    if command not in _COMMANDS:
        raise RequestError(f"unknown command {command}", COMMAND_NOT_SUPPORTED)
    if len(data) < 3:
        return None
    if data[2] != 0:
        raise RequestError(f"reserved byte is {data[2]}, not 0", GENERAL_FAILURE)
    if len(data) < 4:
        return None
    address_type = data[3]
    if address_type == ATYP_IPV4:
        address_end = 8
    elif address_type == ATYP_IPV6:
        address_end = 20
    elif address_type == ATYP_DOMAIN:
        if len(data) < 5:
            return None
        if data[4] == 0:
            raise RequestError("empty domain name", GENERAL_FAILURE)
        address_end = 5 + data[4]
        _check_name_bytes(data[5:address_end])
    else:
        raise RequestError(f"unknown address type {address_type}", ADDRESS_TYPE_NOT_SUPPORTED)
    length = address_end + 2
    if len(data) < length:
        return None
    if address_type == ATYP_IPV4:
        host = str(ipaddress.IPv4Address(data[4:8]))
    elif address_type == ATYP_IPV6:
        host = ipaddress.IPv6Address(data[4:20]).compressed
    else:
        host = _domain(data[5:address_end])
    port = int.from_bytes(data[address_end:length], "big")
    if command == CMD_CONNECT and port == 0:
        raise RequestError("CONNECT to port 0", GENERAL_FAILURE)
    return Request(command=command, host=host, port=port, address_type=address_type,
                   length=length)


def _check_name_bytes(name: bytes) -> None:
    """Refuse a domain name (or the part of it received so far) with unsafe bytes."""
    for byte in name:
        if byte not in _NAME_BYTES and byte not in b":[]":
            if byte >= 0x80:
                raise RequestError("non-ASCII byte in domain name (IDNA names must be sent "
                                   "as A-labels, xn--...)", GENERAL_FAILURE)
            raise RequestError(f"byte 0x{byte:02x} not allowed in a domain name",
                               GENERAL_FAILURE)


def _domain(name: bytes) -> str:
    """The domain name as text; ``:``/``[``/``]`` only as an IPv6 literal (made compressed)."""
    text = name.decode("ascii")  # _check_name_bytes allowed ASCII only
    if any(c in text for c in ":[]"):
        literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            return ipaddress.IPv6Address(literal).compressed
        except ValueError:
            raise RequestError(f"domain name {text!r} is neither a host name nor an IPv6 "
                               f"address", GENERAL_FAILURE) from None
    return text


# --------------------------------------------------------------------------- reply


def reply(code: int, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
    """``VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT``.

    ``bind_host`` is an IPv4 or IPv6 address (sent as such) or a domain name (ASCII, 1-255
    bytes). ValueError for values that do not fit the message.
    """
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv4Address):
        encoded = bytes((ATYP_IPV4,)) + address.packed
    elif isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            raise ValueError(f"bind address {bind_host!r} has a scope id")
        encoded = bytes((ATYP_IPV6,)) + address.packed
    else:
        name = bind_host.encode("ascii")
        if not 1 <= len(name) <= 255:
            raise ValueError(f"bind host name {bind_host!r} must be 1-255 ASCII bytes")
        encoded = bytes((ATYP_DOMAIN, len(name))) + name
    if not 0 <= bind_port <= 0xFFFF:
        raise ValueError(f"bind port {bind_port} is not 0-65535")
    return bytes((VERSION, _byte(code, "reply code"), 0)) + encoded + bind_port.to_bytes(2, "big")


def _byte(value: int, what: str) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what} {value} does not fit in a byte")
    return value
