"""What an explicit HTTP proxy must understand in a request head, beyond plain HTTP/1.

One job: turn a request that a client addressed *to a proxy* into where to go and what to
send there (sans-I/O, from values :func:`mirror.wire.http1.parse_request_head` produced):

* :func:`parse_connect_target` - the authority-form target of ``CONNECT host:port``;
* :func:`split_absolute_form` - the absolute-form target ``http://host[:port]/path?query``
  of any other method (RFC 9112 §3.2.2), split into scheme, host, port and origin-form;
* :func:`rewrite_request_for_origin` - the head to forward: the request line with an
  origin-form target, the proxy's own headers (Proxy-Connection, Proxy-Authorization,
  Proxy-Authenticate) removed, every other byte kept as the client sent it, so the origin
  sees the client's header order, case and values;
* :func:`proxy_authorization` - Basic credentials from ``Proxy-Authorization``.

Hosts are checked strictly: a reg-name may hold only letters, digits, ``-``, ``.`` and
``_`` (IDNA names arrive as A-labels, ``xn--...``); IPv6 literals must be bracketed and are
returned compressed without brackets; userinfo (``user@host``) is refused - it would be
sent to nobody and is a classic way to disguise a destination. Errors raise
:class:`~mirror.wire.errors.WireError` with layer ``"http1"``.
"""

from __future__ import annotations

import binascii
import ipaddress
from dataclasses import dataclass

from mirror.wire.errors import WireError
from mirror.wire.http1 import RequestHead

_LAYER = "http1"
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Header fields meant for the proxy itself; never forwarded to the origin.
PROXY_HEADERS = frozenset({"proxy-connection", "proxy-authorization", "proxy-authenticate"})

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_DIGITS = frozenset("0123456789")
# Visible ASCII: what a request-target may contain (as mirror.wire.http1 enforces).
_TARGET_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


def _error(message: str) -> WireError:
    return WireError(message, layer=_LAYER)


@dataclass(slots=True, frozen=True)
class AbsoluteTarget:
    """An absolute-form request target, split.

    ``scheme`` is lower-case (``"http"`` or ``"https"``); ``host`` is a name as sent, an
    IPv4 address, or a compressed IPv6 address without brackets; ``port`` is explicit or
    the scheme's default; ``origin_form`` is the path and query (``"/"`` when the path is
    empty); ``host_header_value`` is the authority exactly as it appeared (``host[:port]``,
    brackets kept), the value a Host header for this request should carry.
    """

    scheme: str
    host: str
    port: int
    origin_form: str
    host_header_value: str


# --------------------------------------------------------------------------- targets


def parse_connect_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` of a CONNECT request; the port is required (1-65535)."""
    if not target:
        raise _error("empty CONNECT target")
    if any(c in target for c in "/?#"):
        raise _error(f"CONNECT target {target!r} is not authority-form host:port (has a path)")
    host, port = _split_authority(target, what="CONNECT target")
    if port is None:
        raise _error(f"CONNECT target {target!r} has no port")
    return host, port


def split_absolute_form(target: str) -> AbsoluteTarget:
    """Split ``http[s]://host[:port][/path][?query]``; WireError for any other form."""
    if target.startswith("/"):
        raise _error(f"origin-form target {target!r}: a proxy needs absolute-form "
                     f"(http://host/path)")
    if target == "*":
        raise _error("asterisk-form target '*': a proxy needs absolute-form (http://host)")
    scheme, sep, rest = target.partition("://")
    if not sep or not scheme:
        raise _error(f"target {_short(target)!r} is not absolute-form: a proxy needs "
                     f"http://host/path (or CONNECT host:port)")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _error(f"unsupported scheme {scheme!r} in absolute-form target (http or https)")
    if any(c not in _TARGET_CHARS for c in rest):
        raise _error("absolute-form target has a character that is not visible ASCII")
    if "#" in rest:
        raise _error("absolute-form target has a fragment (#)")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path_query = rest[:cut], rest[cut:]
    host, port = _split_authority(authority, what="absolute-form target")
    origin_form = path_query if path_query.startswith("/") else "/" + path_query
    return AbsoluteTarget(scheme=scheme, host=host, port=port or DEFAULT_PORTS[scheme],
                          origin_form=origin_form, host_header_value=authority)


def _split_authority(authority: str, *, what: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port or None); IPv6 must be bracketed."""
    if "@" in authority:
        raise _error(f"{what} has userinfo (user@host), which is not allowed")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _error(f"{what}: unclosed '[' in IPv6 literal")
        literal, after = authority[1:close], authority[close + 1 :]
        try:
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            raise _error(f"{what}: {literal!r} is not an IPv6 address") from None
        if "%" in literal:
            raise _error(f"{what}: IPv6 zone identifiers are not allowed")
        if after and not after.startswith(":"):
            raise _error(f"{what}: junk after the IPv6 literal")
        return host, _port(after[1:], what) if after else None
    host, colon, port_text = authority.partition(":")
    if not host:
        raise _error(f"{what} has an empty host")
    bad = next((c for c in host if c not in _NAME_CHARS), None)
    if bad is not None:
        raise _error(f"{what}: character {bad!r} not allowed in a host name")
    return host, _port(port_text, what) if colon else None


def _port(text: str, what: str) -> int:
    if not text:
        raise _error(f"{what} has an empty port")
    if len(text) > 5 or any(c not in _DIGITS for c in text):
        raise _error(f"{what}: port {_short(text)!r} is not a number 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _error(f"{what}: port {port} is not 1-65535")
    return port


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- forwarding


def rewrite_request_for_origin(raw_head: bytes, head: RequestHead, origin_form: str, *,
                               host_header: str | None = None) -> bytes:
    """The request head to send to the origin server.

    ``raw_head`` starts with the head exactly as the client sent it (``head.raw``; bytes
    after ``head.length``, a body, are not part of the result). The result is the request
    line with ``origin_form`` as target (method and version bytes kept) followed by every
    header line byte for byte, in order, except Proxy-Connection, Proxy-Authorization and
    Proxy-Authenticate lines (matched case-insensitively), and the final CRLFCRLF.

    ``origin_form`` is ``/path[?query]`` of visible ASCII, or ``*`` for OPTIONS.

    ``host_header``: RFC 9110 §7.2 says a proxy must replace the Host field of an
    absolute-form request with the target's authority. Pass
    ``AbsoluteTarget.host_header_value`` to do that: a Host line whose value differs
    (case-insensitively) gets the new value, keeping its name's case, its position and the
    whitespace around the value; with no Host line one is added right after the request
    line. None (default) leaves Host lines as sent.
    """
    raw = bytes(raw_head[: head.length])
    lines = raw[:-4].split(b"\r\n")
    request_line = lines[0].split(b" ")
    if (raw != head.raw or not raw.endswith(b"\r\n\r\n") or len(request_line) != 3
            or len(lines) - 1 != len(head.headers)):
        raise _error("raw head bytes do not match the parsed head")
    _check_origin_form(origin_form, head.method)
    method, _target, version = request_line
    out = [method + b" " + origin_form.encode("ascii") + b" " + version]
    host_seen = False
    for line, (header_name, _value) in zip(lines[1:], head.headers, strict=True):
        name, _colon, value = line.partition(b":")
        if name != header_name.encode("latin-1", "replace"):
            raise _error("raw head bytes do not match the parsed head")
        if header_name.lower() in PROXY_HEADERS:
            continue
        if name.lower() == b"host" and host_header is not None:
            host_seen = True
            line = _replace_host(name, value, host_header)
        out.append(line)
    if host_header is not None and not host_seen:
        out.insert(1, b"Host: " + _host_bytes(host_header))
    return b"\r\n".join(out) + b"\r\n\r\n"


def _check_origin_form(origin_form: str, method: str) -> None:
    if origin_form == "*":
        if method != "OPTIONS":
            raise _error(f"'*' target with method {method} (only OPTIONS)")
        return
    if not origin_form.startswith("/"):
        raise _error(f"origin-form target {_short(origin_form)!r} does not start with '/'")
    if any(c not in _TARGET_CHARS for c in origin_form) or "#" in origin_form:
        raise _error("origin-form target has a character that is not visible ASCII or '#'")


def _host_bytes(host_header: str) -> bytes:
    if not host_header or any(c not in _TARGET_CHARS for c in host_header):
        raise _error(f"Host value {_short(host_header)!r} is not visible ASCII")
    return host_header.encode("ascii")


def _replace_host(name: bytes, value: bytes, host_header: str) -> bytes:
    new = _host_bytes(host_header)
    stripped = value.strip(b" \t")
    if stripped.lower() == new.lower():
        return name + b":" + value
    start = len(value) - len(value.lstrip(b" \t"))
    end = len(value.rstrip(b" \t")) if stripped else start
    return name + b":" + value[:start] + new + value[end:]


# --------------------------------------------------------------------------- credentials


def proxy_authorization(head: RequestHead) -> tuple[str, str] | None:
    """(user, password) from ``Proxy-Authorization: Basic <base64>`` (RFC 7617).

    None when the header is absent or uses another scheme (Digest, Bearer, ...: the proxy
    should answer 407 with ``Proxy-Authenticate: Basic``). WireError for more than one
    Proxy-Authorization header, malformed base64, a missing ``:``, or control characters.
    The credentials are decoded as UTF-8, or as latin-1 when they are not valid UTF-8.
    """
    values = head.values("proxy-authorization")
    if not values:
        return None
    if len(values) > 1:
        raise _error("more than one Proxy-Authorization header")
    scheme, _space, credentials = values[0].partition(" ")
    if scheme.lower() != "basic":
        return None
    token = credentials.strip(" \t")
    if not token or any(c not in _BASE64_CHARS for c in token):
        raise _error("Proxy-Authorization Basic credentials are not base64")
    try:
        decoded = binascii.a2b_base64(token, strict_mode=True)
    except (binascii.Error, ValueError):
        decoded = None
    # Only the canonical encoding (exact padding, zero trailing bits): one meaning per token.
    if decoded is None or binascii.b2a_base64(decoded, newline=False).decode() != token:
        raise _error("Proxy-Authorization Basic credentials are not valid base64")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        text = decoded.decode("latin-1")
    user, colon, password = text.partition(":")
    if not colon:
        raise _error("Proxy-Authorization Basic credentials have no ':' between user and "
                     "password")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise _error("control character in Proxy-Authorization credentials")
    return user, password


_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
