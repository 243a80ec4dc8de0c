"""The client side of a tunnel through an upstream proxy: HTTP CONNECT and SOCKS5 (RFC 1928 /
1929), sans-I/O. ``ProxyHandshake`` takes the proxy's bytes and says what to send next, until
the tunnel is open (``done``) or refused (``WireError`` with layer ``"upstream-proxy"``, whose
message never holds the password). libcurl makes the tunnels for TLS; this one serves the
plain-TCP relays (HTTP without TLS, raw bytes, passthrough TLS).
"""

from __future__ import annotations

import base64
import ipaddress
import struct

from mirror.wire.errors import WireError

_LAYER = "upstream-proxy"
MAX_RESPONSE_HEAD = 16384
SOCKS_REPLIES = {1: "general failure", 2: "connection not allowed by ruleset",
                 3: "network unreachable", 4: "host unreachable", 5: "connection refused",
                 6: "TTL expired", 7: "command not supported", 8: "address type not supported"}


def _error(message: str) -> WireError:
    return WireError(message, layer=_LAYER)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProxyHandshake:
    """One tunnel set-up. ``start()`` gives the first bytes to send; ``feed(data)`` returns the
    next bytes to send (possibly empty); once ``done``, ``leftover`` holds tunnel bytes that
    arrived with the proxy's last answer."""

    def __init__(self, scheme: str, host: str, port: int, username: str | None = None,
                 password: str | None = None) -> None:
        self.kind = "http" if scheme in ("http", "https") else "socks5"
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.done = False
        self.leftover = b""
        self._buffer = b""
        self._state = "connect" if self.kind == "http" else "method"

    def start(self) -> bytes:
        if self.kind == "http":
            target = _host_port(self.host, self.port)
            lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
            if self.username is not None:
                token = f"{self.username}:{self.password or ''}".encode()
                lines.append("Proxy-Authorization: Basic " + base64.b64encode(token).decode())
            return ("\r\n".join(lines) + "\r\n\r\n").encode()
        methods = b"\x00\x02" if self.username is not None else b"\x00"
        return bytes([5, len(methods)]) + methods

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        if self.kind == "http":
            return self._http()
        out = b""
        while not self.done:
            step = self._socks()
            if step is None:
                break
            out += step
        return out

    # --- HTTP CONNECT --------------------------------------------------------------------------
    def _http(self) -> bytes:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_RESPONSE_HEAD:
                raise _error("the proxy's answer to CONNECT is larger than 16 KiB")
            return b""
        status_line = self._buffer[:self._buffer.find(b"\r\n")]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _error("the proxy did not answer CONNECT with an HTTP status line")
        status = int(parts[1])
        if not 200 <= status < 300:
            reason = parts[2].decode("latin-1", "replace") if len(parts) > 2 else ""
            raise _error(f"the proxy refused CONNECT: {status} {reason}".rstrip())
        self.leftover = self._buffer[end + 4:]
        self.done = True
        return b""

    # --- SOCKS5 --------------------------------------------------------------------------------
    def _socks(self) -> bytes | None:
        buf = self._buffer
        if self._state == "method":
            if len(buf) < 2:
                return None
            self._buffer = buf[2:]
            if buf[0] != 5:
                raise _error("the proxy does not speak SOCKS5")
            if buf[1] == 0x02 and self.username is not None:
                self._state = "auth"
                user = self.username.encode()
                password = (self.password or "").encode()
                if len(user) > 255 or len(password) > 255:
                    raise _error("SOCKS5 username or password longer than 255 bytes")
                return bytes([1, len(user)]) + user + bytes([len(password)]) + password
            if buf[1] != 0x00:
                raise _error("the SOCKS5 proxy accepts none of the offered methods"
                             + (" (it wants credentials)" if self.username is None else ""))
            self._state = "request"
            return self._socks_request()
        if self._state == "auth":
            if len(buf) < 2:
                return None
            self._buffer = buf[2:]
            if buf[1] != 0:
                raise _error("the SOCKS5 proxy refused the username/password")
            self._state = "request"
            return self._socks_request()
        if self._state == "reply":
            if len(buf) < 5:
                return None
            if buf[0] != 5:
                raise _error("malformed SOCKS5 reply")
            if buf[1] != 0:
                raise _error(f"the SOCKS5 proxy refused the connection: "
                             f"{SOCKS_REPLIES.get(buf[1], f'reply {buf[1]}')}")
            address_length = {1: 4, 4: 16, 3: 1 + buf[4]}.get(buf[3])
            if address_length is None:
                raise _error("malformed SOCKS5 reply address")
            total = 4 + address_length + 2
            if len(buf) < total:
                return None
            self.leftover = buf[total:]
            self._buffer = b""
            self.done = True
            return b""
        return None

    def _socks_request(self) -> bytes:
        self._state = "reply"
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            try:
                name = self.host.encode("idna")
            except UnicodeError:
                raise _error(f"destination {self.host!r} is not a valid host name") from None
            if len(name) > 255:
                raise _error("destination name longer than 255 bytes") from None
            dst = bytes([3, len(name)]) + name
        else:
            dst = (bytes([1]) if address.version == 4 else bytes([4])) + address.packed
        return b"\x05\x01\x00" + dst + struct.pack("!H", self.port)
