"""Strip link layers and tunnels from one captured frame, down to the innermost IP packet.

``innermost_ip(linktype, frame)`` returns the bytes of the IP packet a frame finally carries,
or ``None`` when the frame carries no IP (ARP, LLDP, an unknown link type, a fragment, ...).

Link types: Ethernet (1; 802.1Q / 802.1ad / QinQ VLAN tags, MPLS label stacks, PPPoE
session), Linux cooked capture v1 (113) and v2 (276), raw IP (101, 12, 14, 228, 229), BSD
loopback / null (0, 108).

Tunnels, followed to any depth up to ``MAX_DEPTH``:

* IP-in-IP: IPv4 or IPv6 carried in IPv4 or IPv6 (protocol 4 and 41);
* GRE version 0 (protocol 47) with optional checksum / key / sequence fields, carrying IPv4,
  IPv6, transparent Ethernet bridging (0x6558), ERSPAN type I (0x88be without a sequence
  number), type II (0x88be, 8-byte header) and type III (0x22eb, 12-byte header plus the
  optional 8-byte platform sub-header); GRE version 1 (PPTP) carrying PPP with IPv4 / IPv6.
  GRE with the (deprecated) routing bit is not followed;
* VXLAN (UDP port 4789, 8-byte header, then Ethernet) and Geneve (UDP port 6081, header plus
  options, then Ethernet or IP). A UDP datagram on those ports whose header does not look
  like the encapsulation is left alone and treated as ordinary UDP.

Packets are cut to the length their IP header declares (Ethernet pads short frames). IPv4
fragments (and IPv6 packets with a fragment header) are dropped: reassembling IP fragments is
out of scope, and a first fragment alone would feed a partial segment to TCP reassembly.
Everything here is pure: bytes in, bytes out, never an exception for odd input.
"""

from __future__ import annotations

import struct

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "MAX_DEPTH",
    "SUPPORTED_LINKTYPES",
    "innermost_ip",
    "ip_from_link",
    "ip_upper_layer",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_DLT_RAW_ALIASES = (12, 14)  # DLT_RAW as written by some BSDs / old libpcap

SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
        *_DLT_RAW_ALIASES,
    }
)

MAX_DEPTH = 8  # nested encapsulations followed before giving up

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100, 0x9200)
_ETH_MPLS = (0x8847, 0x8848)
_ETH_PPPOE_SESSION = 0x8864
_ETH_TEB = 0x6558  # transparent Ethernet bridging (GRE, Geneve)
_ETH_ERSPAN_2 = 0x88BE
_ETH_ERSPAN_3 = 0x22EB
_ETH_PPP = 0x880B  # GRE version 1 (PPTP) payload

_PPP_IPV4 = 0x0021
_PPP_IPV6 = 0x0057

_PROTO_IPIP = 4
_PROTO_TCP = 6
_PROTO_UDP = 17
_PROTO_IPV6 = 41
_PROTO_GRE = 47

_VXLAN_PORT = 4789
_GENEVE_PORT = 6081

# IPv6 extension headers that may sit between the fixed header and the upper layer.
_IPV6_EXT_HEADERS = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_FRAGMENT = 44
_IPV6_AH = 51


def ip_from_link(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet directly inside ``frame`` of ``linktype`` (no tunnel decapsulation)."""
    if linktype == LINKTYPE_ETHERNET:
        return _from_ethernet(frame, 0)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *_DLT_RAW_ALIASES):
        return _trim_ip(frame)
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # 4-byte address family, host byte order (NULL) or network order (LOOP); the values
        # differ between BSDs (IPv6 is 24, 28 or 30), so trust the IP version nibble.
        return _trim_ip(frame[4:]) if len(frame) > 4 else None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        return _from_ethertype(struct.unpack_from("!H", frame, 14)[0], frame, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        return _from_ethertype(struct.unpack_from("!H", frame, 0)[0], frame, 20)
    return None


def innermost_ip(linktype: int, frame: bytes) -> bytes | None:
    """The innermost IP packet of ``frame``: link layer removed, tunnels followed."""
    packet = ip_from_link(linktype, frame)
    for _ in range(MAX_DEPTH):
        if packet is None:
            return None
        inner = _tunnel_payload(packet)
        if inner is None:
            return packet
        packet = inner
    return packet


# --------------------------------------------------------------------------- link layers


def _from_ethernet(frame: bytes, offset: int) -> bytes | None:
    if len(frame) < offset + 14:
        return None
    ethertype = struct.unpack_from("!H", frame, offset + 12)[0]
    return _from_ethertype(ethertype, frame, offset + 14)


def _from_ethertype(ethertype: int, frame: bytes, offset: int) -> bytes | None:
    for _ in range(MAX_DEPTH):
        if ethertype in (_ETH_IPV4, _ETH_IPV6):
            return _trim_ip(frame[offset:])
        if ethertype in _ETH_VLAN_TAGS:
            if len(frame) < offset + 4:
                return None
            ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
            offset += 4
            continue
        if ethertype in _ETH_MPLS:
            return _from_mpls(frame, offset)
        if ethertype == _ETH_PPPOE_SESSION:
            # PPPoE header (6 bytes) then a 2-byte PPP protocol number.
            if len(frame) < offset + 8:
                return None
            return _from_ppp_protocol(struct.unpack_from("!H", frame, offset + 6)[0], frame, offset + 8)
        return None
    return None


def _from_mpls(frame: bytes, offset: int) -> bytes | None:
    # Pop labels until bottom-of-stack, then guess the payload from the IP version nibble.
    for _ in range(16):
        if len(frame) < offset + 4:
            return None
        entry = struct.unpack_from("!I", frame, offset)[0]
        offset += 4
        if entry & 0x100:
            return _trim_ip(frame[offset:])
    return None


def _from_ppp_protocol(protocol: int, frame: bytes, offset: int) -> bytes | None:
    if protocol in (_PPP_IPV4, _PPP_IPV6):
        return _trim_ip(frame[offset:])
    return None


# --------------------------------------------------------------------------- IP helpers


def _trim_ip(data: bytes) -> bytes | None:
    """``data`` cut to the IP packet's declared length; None if it is not a whole IP header."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            return None
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if ihl < 20 or len(data) < ihl:
            return None
        if total == 0:  # segmentation offload on the capturing host: keep what was captured
            return bytes(data)
        if total < ihl:
            return None
        return bytes(data[:total])
    if version == 6:
        if len(data) < 40:
            return None
        payload_len = struct.unpack_from("!H", data, 4)[0]
        if payload_len == 0:  # jumbogram or TSO capture: keep what was captured
            return bytes(data)
        return bytes(data[: 40 + payload_len])
    return None


def ip_upper_layer(packet: bytes) -> tuple[int, int] | None:
    """(protocol number, offset of the upper-layer header) of an IP packet.

    None when the packet is a fragment (other than an atomic IPv6 fragment) or the headers
    are cut short.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        flags_frag = struct.unpack_from("!H", packet, 6)[0]
        if flags_frag & 0x3FFF:  # MF set or a non-zero offset
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        return packet[9], ihl
    if version == 6:
        if len(packet) < 40:
            return None
        next_header = packet[6]
        offset = 40
        for _ in range(MAX_DEPTH):
            if next_header in _IPV6_EXT_HEADERS:
                if len(packet) < offset + 2:
                    return None
                next_header, length = packet[offset], (packet[offset + 1] + 1) * 8
                offset += length
            elif next_header == _IPV6_FRAGMENT:
                if len(packet) < offset + 8:
                    return None
                frag = struct.unpack_from("!H", packet, offset + 2)[0]
                if frag & 0xFFF9:  # offset != 0 or M flag: a real fragment
                    return None
                next_header = packet[offset]
                offset += 8
            elif next_header == _IPV6_AH:
                if len(packet) < offset + 2:
                    return None
                next_header, length = packet[offset], (packet[offset + 1] + 2) * 4
                offset += length
            else:
                break
        if offset > len(packet):
            return None
        return next_header, offset
    return None


# --------------------------------------------------------------------------- tunnels


def _tunnel_payload(packet: bytes) -> bytes | None:
    """The IP packet tunnelled inside ``packet``, or None if it is not a tunnel we follow."""
    upper = ip_upper_layer(packet)
    if upper is None:
        return None
    protocol, offset = upper
    if protocol in (_PROTO_IPIP, _PROTO_IPV6):
        return _trim_ip(packet[offset:])
    if protocol == _PROTO_GRE:
        return _from_gre(packet, offset)
    if protocol == _PROTO_UDP:
        if len(packet) < offset + 8:
            return None
        sport, dport = struct.unpack_from("!HH", packet, offset)
        payload = offset + 8
        if _VXLAN_PORT in (dport, sport):
            inner = _from_vxlan(packet, payload)
            if inner is not None:
                return inner
        if _GENEVE_PORT in (dport, sport):
            return _from_geneve(packet, payload)
    return None


def _from_gre(packet: bytes, offset: int) -> bytes | None:
    if len(packet) < offset + 4:
        return None
    flags, protocol = struct.unpack_from("!HH", packet, offset)
    version = flags & 0x7
    has_checksum = bool(flags & 0x8000)
    has_routing = bool(flags & 0x4000)
    has_key = bool(flags & 0x2000)
    has_seq = bool(flags & 0x1000)
    if has_routing:
        return None
    if version == 1:  # enhanced GRE (PPTP): key always present, optional ack number
        has_ack = bool(flags & 0x0080)
        header = 8 + (4 if has_seq else 0) + (4 if has_ack else 0)
        if protocol != _ETH_PPP or len(packet) < offset + header + 2:
            return None
        start = offset + header
        if packet[start : start + 2] == b"\xff\x03":  # address / control, when not compressed
            start += 2
        if len(packet) < start + 1:
            return None
        if packet[start] & 1:  # protocol field compressed to one byte
            return _from_ppp_protocol(packet[start], packet, start + 1)
        if len(packet) < start + 2:
            return None
        return _from_ppp_protocol(struct.unpack_from("!H", packet, start)[0], packet, start + 2)
    if version != 0:
        return None
    start = offset + 4 + (4 if has_checksum else 0) + (4 if has_key else 0) + (4 if has_seq else 0)
    if len(packet) < start:
        return None
    if protocol in (_ETH_IPV4, _ETH_IPV6):
        return _trim_ip(packet[start:])
    if protocol == _ETH_TEB:
        return _from_ethernet(packet, start)
    if protocol == _ETH_ERSPAN_2:
        if not has_seq:  # ERSPAN type I: no ERSPAN header at all
            return _from_ethernet(packet, start)
        return _from_ethernet(packet, start + 8)
    if protocol == _ETH_ERSPAN_3:
        if len(packet) < start + 12:
            return None
        has_platform_subheader = bool(packet[start + 11] & 0x01)
        return _from_ethernet(packet, start + 12 + (8 if has_platform_subheader else 0))
    return None


def _from_vxlan(packet: bytes, offset: int) -> bytes | None:
    # flags(8) with the I bit set, 24 reserved bits, VNI(24), 8 reserved bits.
    if len(packet) < offset + 8 or not packet[offset] & 0x08:
        return None
    return _from_ethernet(packet, offset + 8)


def _from_geneve(packet: bytes, offset: int) -> bytes | None:
    # ver(2) optlen(6) | O C rsvd(6) | protocol type(16) | VNI(24) rsvd(8) | options
    if len(packet) < offset + 8:
        return None
    if packet[offset] >> 6 != 0:
        return None
    options = (packet[offset] & 0x3F) * 4
    protocol = struct.unpack_from("!H", packet, offset + 2)[0]
    start = offset + 8 + options
    if protocol == _ETH_TEB:
        return _from_ethernet(packet, start)
    if protocol in (_ETH_IPV4, _ETH_IPV6):
        return _trim_ip(packet[start:])
    return None
