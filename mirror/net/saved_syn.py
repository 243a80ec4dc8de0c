"""Read the client's SYN as the kernel received it (Linux TCP_SAVE_SYN / TCP_SAVED_SYN).

A listener with TCP_SAVE_SYN set keeps each incoming connection's SYN (IP header + TCP header
with options, no payload); ``getsockopt(TCP_SAVED_SYN)`` on the accepted socket returns it once.
That is exact — no sniffing, no race with a packet capture. When it cannot be read, the
result says why and the connection goes on.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mirror.fingerprint.report import tcp_report
from mirror.wire.errors import WireError
from mirror.wire.tcp import parse_syn

TCP_SAVE_SYN = getattr(socket, "TCP_SAVE_SYN", 27)
TCP_SAVED_SYN = getattr(socket, "TCP_SAVED_SYN", 28)
SAVED_SYN_MAX = 512  # IPv6 header + extension headers + 60-byte TCP header fit easily


@dataclass(slots=True, frozen=True)
class SavedSyn:
    """The raw SYN bytes, or why there are none."""

    raw: bytes | None
    error: str | None = None


def enable_save_syn(listener: socket.socket) -> str | None:
    """Ask the kernel to keep the SYN of each connection; returns an error text or None."""
    try:
        listener.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
    except OSError as error:
        return f"TCP_SAVE_SYN unavailable: {error.strerror or error}"
    return None


def read_saved_syn(conn) -> SavedSyn:
    """The accepted connection's SYN (call once, right after accept)."""
    try:
        raw = conn.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, SAVED_SYN_MAX)
    except OSError as error:
        return SavedSyn(None, f"TCP_SAVED_SYN failed: {error.strerror or error}")
    if not raw:
        return SavedSyn(None, "no saved SYN (listener without TCP_SAVE_SYN, or already read)")
    return SavedSyn(bytes(raw))


def client_syn(conn, *, report: bool = True):
    """The accepted connection's SYN, parsed (or None), and its report (``tcp_report``:
    fields, JA4T, p0f — or why it is missing). With ``report=False`` the report of a parsed
    SYN is left to the caller (None): only a missing SYN's is made."""
    saved = read_saved_syn(conn)
    if saved.raw is None:
        return None, tcp_report(None, saved.error)
    try:
        syn = parse_syn(saved.raw)
    except WireError as exc:
        return None, tcp_report(None, f"unparsable SYN: {exc}")
    return syn, tcp_report(syn) if report else None

