"""The Internet checksum (RFC 1071) and the TCP checksum over an IPv4 / IPv6 pseudo-header."""

from __future__ import annotations

import ipaddress
import struct


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_checksum(src: str, dst: str, segment: bytes) -> int:
    """Checksum of ``segment`` (its checksum field zeroed) between two addresses."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        pseudo = a.packed + b.packed + struct.pack("!BBH", 0, 6, len(segment))
    else:
        pseudo = a.packed + b.packed + struct.pack("!I", len(segment)) + b"\0\0\0\x06"
    return internet_checksum(pseudo + segment)
