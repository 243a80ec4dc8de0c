"""Parse one TCP SYN as the kernel saw it: IP header (v4 or v6) + TCP header -> ``TcpSyn``.

Input is what Linux ``getsockopt(IPPROTO_TCP, TCP_SAVED_SYN)`` returns (the IP header, IPv6
extension headers and the TCP header with its options, no link layer, no payload) or one IP
packet taken from a capture (which may carry payload, or trailing link-layer padding past the
IP length). Nothing here does I/O.

Rules, in short:

* The IP version comes from the first nibble. IPv4: IHL, options, TOS/ECN, ID, flags, TTL and
  the total length are read; a fragment is refused. IPv6: traffic class, flow label and hop
  limit are read, and the hop-by-hop (0), routing (43) and destination-options (60) extension
  headers are walked to TCP; a fragment header (44) or any other next header is refused.
* The declared IP length may exceed the bytes given (a saved SYN keeps headers only, so a SYN
  that carried data, TCP Fast Open say, is shorter than its IP length): ``payload_len`` is
  what the IP length declares past the TCP header. The headers themselves must be complete
  and must fit in that declared length.
* TCP options are walked in order as type-length-value items, EOL (0) and NOP (1) being one
  byte. ``option_kinds`` lists every kind byte met the way Wireshark's ``tcp.option_kind``
  does (the FoxIO JA4T reference reads that field): after an EOL each further zero padding
  byte is listed as another 0, up to the first non-zero byte, where the walk ends (Wireshark
  calls that "non-zero header padding"). ``options`` holds one ``TcpOption`` per option
  (a single EOL entry; the bytes after it are in ``option_padding``).
* ``mss``, ``wscale``, ``sack_permitted`` and ``timestamps`` are taken, as Linux does, only from
  options of the right length (MSS 4, WS 3, SACK-permitted 2, TS 10); when an option repeats
  the last one wins (Linux overwrites, and FoxIO's current JA4T takes the last value).
* Invalid bytes raise ``WireError(layer="tcp")``: truncated headers, an IHL below 5, a TCP
  data offset below 5, a length byte below 2 or running past the header, an IP length that
  cannot hold the headers. Not being a SYN is *not* an error: ``flags`` is exposed and the
  caller decides (``is_initial_syn``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mirror.wire.errors import WireError
from mirror.wire.seen import SeenTable

__all__ = [
    "TcpOption",
    "TcpSyn",
    "parse_syn",
    "FIN",
    "SYN",
    "RST",
    "PSH",
    "ACK",
    "URG",
    "ECE",
    "CWR",
    "NS",
    "RESERVED_FLAGS",
    "OPT_EOL",
    "OPT_NOP",
    "OPT_MSS",
    "OPT_WSCALE",
    "OPT_SACK_PERMITTED",
    "OPT_SACK",
    "OPT_TIMESTAMPS",
]

# TCP flag bits as found in ``TcpSyn.flags``: the low byte is TCP header byte 13, the next
# four bits are the low nibble of byte 12 (NS, then the three reserved bits).
FIN = 0x001
SYN = 0x002
RST = 0x004
PSH = 0x008
ACK = 0x010
URG = 0x020
ECE = 0x040
CWR = 0x080
NS = 0x100
RESERVED_FLAGS = 0xE00

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

# IPv4 flags field (3 bits, as in ``TcpSyn.ip_flags``).
IP4_RESERVED = 0x4
IP4_DF = 0x2
IP4_MF = 0x1

_IPV6_WALKED_EXTENSIONS = {0: "hop-by-hop", 43: "routing", 60: "destination options"}
_IPV6_FRAGMENT = 44
_PROTO_TCP = 6


@dataclass(slots=True, frozen=True)
class TcpOption:
    """One TCP option: its kind byte and the bytes after kind and length (empty for EOL/NOP)."""

    kind: int
    data: bytes


@dataclass(slots=True, frozen=True)
class TcpSyn:
    """The fields of one IP + TCP header that fingerprints (JA4T, p0f) and mirroring need.

    ``tos`` is the whole IPv4 TOS byte / IPv6 traffic class (DSCP << 2 | ECN), ``ecn`` its low
    two bits. ``ip_options`` is the IPv4 option bytes (always ``b""`` for IPv6, whose extension
    headers are listed by next-header number in ``ip_ext_headers``). ``raw`` is the header bytes
    only (IP, extension headers, TCP with options), never payload.
    """

    ip_version: int
    src: str
    dst: str
    ttl: int
    df: bool
    ip_id: int | None
    ecn: int
    tos: int
    flow_label: int | None
    ip_options: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int
    options: list[TcpOption]
    option_kinds: list[int]
    mss: int | None
    wscale: int | None
    sack_permitted: bool
    timestamps: tuple[int, int] | None
    payload_len: int
    raw: bytes
    # Beyond the shared contract: what p0f-style quirks and re-emission need.
    ip_flags: int  # IPv4 3-bit flags (reserved 0x4, DF 0x2, MF 0x1); 0 for IPv6
    ip_header_len: int  # IPv4 IHL * 4, or 40 + IPv6 extension headers
    ip_ext_headers: list[int]  # IPv6 extension headers crossed, by next-header number
    tcp_header_len: int  # data offset * 4
    options_raw: bytes  # the TCP option area exactly as sent, padding included

    @property
    def is_syn(self) -> bool:
        """SYN flag set (a SYN+ACK is one too)."""
        return bool(self.flags & SYN)

    @property
    def is_initial_syn(self) -> bool:
        """A client's opening SYN: SYN set, ACK clear (ECE/CWR and others allowed)."""
        return bool(self.flags & SYN) and not self.flags & ACK

    @property
    def option_padding(self) -> bytes:
        """The option-area bytes after the first EOL (``b""`` when there is no EOL)."""
        end = 0
        for option in self.options:
            if option.kind == OPT_EOL:
                return self.options_raw[end + 1 :]
            end += 1 if option.kind == OPT_NOP else 2 + len(option.data)
        return b""


def _fail(message: str) -> WireError:
    return WireError(message, layer="tcp")


def parse_syn(data: bytes) -> TcpSyn:
    """Parse an IPv4 or IPv6 packet carrying a TCP header (a SYN, usually) into ``TcpSyn``.

    Raises ``WireError(layer="tcp")`` on anything that is not a complete, consistent IP + TCP
    header; no other exception escapes, whatever the input.
    """
    try:
        return _parse(bytes(data))
    except WireError:
        raise
    except (struct.error, IndexError, ValueError, TypeError) as exc:  # defensive: never leak
        raise _fail(f"malformed input: {exc}") from exc


def _parse(data: bytes) -> TcpSyn:
    if not data:
        raise _fail("empty input")
    version = data[0] >> 4
    if version == 4:
        ip = _parse_ipv4(data)
    elif version == 6:
        ip = _parse_ipv6(data)
    else:
        raise _fail(f"IP version {version} is neither 4 nor 6")
    return _parse_tcp(data, ip)


@dataclass(slots=True)
class _IpPart:
    version: int
    src: str
    dst: str
    ttl: int
    df: bool
    ip_id: int | None
    tos: int
    flow_label: int | None
    ip_options: bytes
    ip_flags: int
    header_len: int
    ext_headers: list[int]
    end: int  # offset just past the declared IP packet (may exceed len(data))


def _parse_ipv4(data: bytes) -> _IpPart:
    if len(data) < 20:
        raise _fail(f"IPv4 header truncated ({len(data)} bytes)")
    ihl = data[0] & 0x0F
    if ihl < 5:
        raise _fail(f"IPv4 IHL {ihl} is below 5")
    header_len = ihl * 4
    if len(data) < header_len:
        raise _fail(f"IPv4 header truncated ({len(data)} of {header_len} bytes)")
    tos, total_len, ip_id, flags_frag, ttl, proto = struct.unpack_from("!xBHHHBB", data, 0)
    if total_len < header_len:
        raise _fail(f"IPv4 total length {total_len} is shorter than its header ({header_len})")
    if proto != _PROTO_TCP:
        raise _fail(f"IPv4 protocol {proto} is not TCP")
    ip_flags = flags_frag >> 13
    if ip_flags & IP4_MF or flags_frag & 0x1FFF:
        raise _fail("IPv4 fragment")
    s1, s2, s3, s4, d1, d2, d3, d4 = data[12:20]   # str(IPv4Address(...)) without its cost
    return _IpPart(
        version=4,
        src=f"{s1}.{s2}.{s3}.{s4}",
        dst=f"{d1}.{d2}.{d3}.{d4}",
        ttl=ttl,
        df=bool(ip_flags & IP4_DF),
        ip_id=ip_id,
        tos=tos,
        flow_label=None,
        ip_options=data[20:header_len],
        ip_flags=ip_flags,
        header_len=header_len,
        ext_headers=[],
        end=total_len,
    )


def _parse_ipv6(data: bytes) -> _IpPart:
    if len(data) < 40:
        raise _fail(f"IPv6 header truncated ({len(data)} bytes)")
    (ver_tc_flow,) = struct.unpack_from("!I", data, 0)
    payload_len, next_header, hop_limit = struct.unpack_from("!HBB", data, 4)
    end = 40 + payload_len
    offset = 40
    ext_headers: list[int] = []
    while next_header != _PROTO_TCP:
        if next_header == _IPV6_FRAGMENT:
            raise _fail("IPv6 fragment header")
        if next_header not in _IPV6_WALKED_EXTENSIONS:
            raise _fail(f"IPv6 next header {next_header} is not TCP")
        if len(data) < offset + 8:
            raise _fail("IPv6 extension header truncated")
        ext_len = (data[offset + 1] + 1) * 8
        if len(data) < offset + ext_len:
            raise _fail(f"IPv6 {_IPV6_WALKED_EXTENSIONS[next_header]} header truncated")
        if offset + ext_len > end:
            raise _fail("IPv6 extension headers run past the payload length")
        ext_headers.append(next_header)
        next_header = data[offset]
        offset += ext_len
    return _IpPart(
        version=6,
        src=str(ipaddress.IPv6Address(data[8:24])),
        dst=str(ipaddress.IPv6Address(data[24:40])),
        ttl=hop_limit,
        df=False,
        ip_id=None,
        tos=(ver_tc_flow >> 20) & 0xFF,
        flow_label=ver_tc_flow & 0xFFFFF,
        ip_options=b"",
        ip_flags=0,
        header_len=offset,
        ext_headers=ext_headers,
        end=end,
    )


def _parse_tcp(data: bytes, ip: _IpPart) -> TcpSyn:
    start = ip.header_len
    if len(data) < start + 20:
        raise _fail(f"TCP header truncated ({max(0, len(data) - start)} of 20 bytes)")
    sport, dport, seq, ack, off_flags, window, _checksum, urgent = struct.unpack_from(
        "!HHIIHHHH", data, start
    )
    doff = off_flags >> 12
    if doff < 5:
        raise _fail(f"TCP data offset {doff} is below 5")
    tcp_len = doff * 4
    if len(data) < start + tcp_len:
        raise _fail(f"TCP options truncated ({len(data) - start} of {tcp_len} header bytes)")
    if start + tcp_len > ip.end:
        raise _fail(
            f"IP length {ip.end} cannot hold the headers ({start} IP + {tcp_len} TCP bytes)"
        )
    options_raw = data[start + 20 : start + tcp_len]
    walk = _walk_options(options_raw)
    return TcpSyn(
        ip_version=ip.version,
        src=ip.src,
        dst=ip.dst,
        ttl=ip.ttl,
        df=ip.df,
        ip_id=ip.ip_id,
        ecn=ip.tos & 0x03,
        tos=ip.tos,
        flow_label=ip.flow_label,
        ip_options=ip.ip_options,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=off_flags & 0x0FFF,
        window=window,
        urgent=urgent,
        options=walk.options,
        option_kinds=walk.kinds,
        mss=walk.mss,
        wscale=walk.wscale,
        sack_permitted=walk.sack_permitted,
        timestamps=walk.timestamps,
        payload_len=ip.end - start - tcp_len,
        raw=data[: start + tcp_len],
        ip_flags=ip.ip_flags,
        ip_header_len=ip.header_len,
        ip_ext_headers=ip.ext_headers,
        tcp_header_len=tcp_len,
        options_raw=options_raw,
    )


@dataclass(slots=True)
class _OptionWalk:
    options: list[TcpOption]
    kinds: list[int]
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None


# TcpOption is immutable: the options every SYN carries alike (NOP, EOL, an MSS, a window
# scale, SACK permitted) are made once and shared; timestamps differ per SYN and are not kept.
_EOL_OPTION, _NOP_OPTION = TcpOption(OPT_EOL, b""), TcpOption(OPT_NOP, b"")
_SEEN_OPTIONS: SeenTable[tuple[int, bytes], TcpOption] = SeenTable(1024)


def _option(kind: int, value: bytes) -> TcpOption:
    key = (kind, value)
    option = _SEEN_OPTIONS.get(key)
    if option is None:
        option = TcpOption(kind, value)
        if kind != OPT_TIMESTAMPS and len(value) <= 40:
            _SEEN_OPTIONS.keep(key, option)
    return option


def _walk_options(raw: bytes) -> _OptionWalk:
    walk = _OptionWalk(options=[], kinds=[])
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        walk.kinds.append(kind)
        if kind == OPT_EOL:
            walk.options.append(_EOL_OPTION)
            i += 1
            # Zero padding bytes are listed as further EOL kinds (Wireshark's
            # tcp.option_kind, hence JA4T); the first non-zero byte ends the walk.
            while i < n and raw[i] == 0:
                walk.kinds.append(OPT_EOL)
                i += 1
            break
        if kind == OPT_NOP:
            walk.options.append(_NOP_OPTION)
            i += 1
            continue
        if i + 1 >= n:
            raise _fail(f"TCP option {kind} has no length byte")
        length = raw[i + 1]
        if length < 2:
            raise _fail(f"TCP option {kind} has length {length}")
        if i + length > n:
            raise _fail(f"TCP option {kind} (length {length}) runs past the header")
        value = raw[i + 2 : i + length]
        walk.options.append(_option(kind, value))
        if kind == OPT_MSS and length == 4:
            walk.mss = int.from_bytes(value, "big")
        elif kind == OPT_WSCALE and length == 3:
            walk.wscale = value[0]
        elif kind == OPT_SACK_PERMITTED and length == 2:
            walk.sack_permitted = True
        elif kind == OPT_TIMESTAMPS and length == 10:
            walk.timestamps = (
                int.from_bytes(value[:4], "big"),
                int.from_bytes(value[4:], "big"),
            )
        i += length
    return walk
