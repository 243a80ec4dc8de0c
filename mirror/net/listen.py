"""Listening sockets for the echo server and the proxy: TCP_SAVE_SYN on, IPv4 or IPv6."""

from __future__ import annotations

import ipaddress
import socket

from mirror.net.saved_syn import enable_save_syn


def parse_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` or ``:PORT`` -> (host, port). ValueError for a
    bad port, or for none when there is no ``default_port``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port = text, ""
    else:
        host, port = text, ""
    host = host or "127.0.0.1"
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"invalid port in {text!r}") from None
    if number is None:
        raise ValueError(f"no port in {text!r}")
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range in {text!r}")
    return host, number


def make_listener(host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False,
                  transparent: bool = False) -> tuple[socket.socket, str | None]:
    """A bound, listening, non-blocking socket and why the SYN cannot be saved (or None)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if transparent:
            sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19), 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        syn_error = enable_save_syn(sock)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, syn_error


def unmapped(host: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:198.18.1.2``, as a dual-stack listener reports
    IPv4 peers) as plain IPv4; any other address unchanged."""
    if host.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host
