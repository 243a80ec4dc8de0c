"""Rewrite the proxy's own upstream SYN so that it carries the client's TCP characteristics.

Input: the SYN our kernel is about to send (a whole IPv4/IPv6 packet, as NFQUEUE hands it
over) and the client's SYN as the proxy received it. Output: our SYN with, from the client,
the TTL / hop limit (less ``hops``, as forwarding would), DF, IP ID, DSCP, flow label, window
and the option layout (kinds in order, NOP and EOL padding) with the client's MSS; and a
verdict per field.

What may not change, because the connection must stay correct:
- the window-scale value is the kernel's (it does the window arithmetic with it);
- an option the kernel did not send cannot be added (SACK, timestamps, anything else): the
  kernel would not honour what the peer answers. Dropping one is safe — the kernel follows the
  peer's SYN-ACK, which only echoes what our SYN offered;
- the timestamp value is the kernel's (its clock), the sequence number, ports and flags too.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from mirror.fingerprint.fidelity import FieldFidelity
from mirror.wire.checksum import internet_checksum
from mirror.wire.errors import WireError
from mirror.wire.tcp import TcpSyn, parse_syn

EOL, NOP, MSS, WS, SACK_PERM, TS = 0, 1, 2, 3, 4, 8
ECN_FLAGS = 0xC0   # CWR | ECE


@dataclass(slots=True)
class SynRewrite:
    packet: bytes
    fidelity: dict[str, FieldFidelity] = field(default_factory=dict)


def _exact() -> FieldFidelity:
    return FieldFidelity("exact")


def _approx(detail: str) -> FieldFidelity:
    return FieldFidelity("approximated", detail)


def _layout_length(syn: TcpSyn) -> int:
    """Bytes of the client's TCP options, EOL padding included."""
    size = sum(1 if o.kind in (EOL, NOP) else 2 + len(o.data) for o in syn.options)
    return size + len(syn.option_kinds) - len(syn.options)


def _options(client: TcpSyn, ours: TcpSyn, fid: dict[str, FieldFidelity]) -> bytes:
    out = bytearray()
    mine = {o.kind: o for o in ours.options}
    dropped, not_ours = [], []
    for option in client.options:
        kind = option.kind
        if kind == EOL:
            out.append(EOL)
            break
        if kind == NOP:
            out.append(NOP)
        elif kind == MSS:
            out += bytes([MSS, 4]) + option.data
        elif kind in (WS, SACK_PERM, TS):
            if kind not in mine:
                not_ours.append(kind)
                continue
            out += bytes([kind, 2 + len(mine[kind].data)]) + mine[kind].data
        else:
            dropped.append(kind)
    pad_to = _layout_length(client)
    if len(out) < pad_to and not (dropped or not_ours):
        out += bytes(pad_to - len(out))          # the client's EOL padding, byte for byte
    out += bytes(-len(out) % 4)                  # after a drop: zero-pad to a 32-bit boundary
    if len(out) > 40:
        raise WireError("rewritten TCP options longer than 40 bytes", layer="tcp")
    fid["mss"] = _exact()
    if client.wscale is None or ours.wscale == client.wscale:
        fid["wscale"] = _exact()
    elif ours.wscale is None:
        fid["wscale"] = _approx("the kernel did not offer window scaling; it cannot be added")
    else:
        fid["wscale"] = _approx(f"kept the kernel's window scale {ours.wscale} (the client's is "
                                f"{client.wscale}): the kernel computes windows with its own")
    problems = []
    if not_ours:
        problems.append(f"option(s) {not_ours} left out: the kernel did not send them and "
                        "would not honour them")
    if dropped:
        problems.append(f"option(s) {dropped} left out: not ours to send")
    fid["option_layout"] = _approx("; ".join(problems)) if problems else _exact()
    return bytes(out)


def _ip_header_length(packet: bytes, version: int) -> int:
    if version == 4:
        return (packet[0] & 0x0F) * 4
    if packet[6] != 6:
        raise WireError("IPv6 extension headers before TCP are not rewritten", layer="tcp")
    return 40


def rewrite_syn(packet: bytes, client: TcpSyn, *, hops: int = 1) -> SynRewrite:
    """Our SYN ``packet`` with the client's characteristics (see the module docstring)."""
    ours = parse_syn(packet)
    if ours.ip_version != client.ip_version:
        raise WireError("the client's SYN and ours are different IP versions", layer="tcp")
    fid: dict[str, FieldFidelity] = {}
    ip_len = _ip_header_length(packet, ours.ip_version)
    tcp = bytearray(packet[ip_len:ip_len + 20])
    options = _options(client, ours, fid)
    payload = packet[ip_len + ((packet[ip_len + 12] >> 4) * 4):]
    struct.pack_into("!H", tcp, 14, client.window)            # window
    fid["window"] = _exact()
    tcp[12] = ((20 + len(options)) // 4) << 4 | (tcp[12] & 0x0F)
    client_ecn = client.flags & ECN_FLAGS
    if client_ecn != ours.flags & ECN_FLAGS:
        fid["ecn_setup"] = _approx("the client's ECN set-up flags (ECE/CWR) are not added: the "
                                   "kernel did not negotiate ECN for this socket")
    else:
        fid["ecn_setup"] = _exact()
    struct.pack_into("!H", tcp, 16, 0)                        # checksum, recomputed below
    segment = bytes(tcp) + options + payload
    ttl = max(client.ttl - hops, 1)
    fid["ttl"] = _exact()
    if ours.ip_version == 4:
        header = bytearray(packet[:ip_len])
        header[1] = (client.tos & 0xFC) | (header[1] & 0x03)   # DSCP from the client, ECN ours
        struct.pack_into("!H", header, 2, ip_len + len(segment))
        struct.pack_into("!H", header, 4, client.ip_id or 0)
        flags_frag = struct.unpack_from("!H", header, 6)[0]
        flags_frag = (flags_frag | 0x4000) if client.df else (flags_frag & ~0x4000)
        struct.pack_into("!H", header, 6, flags_frag)
        header[8] = ttl
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
        pseudo = bytes(header[12:20]) + struct.pack("!BBH", 0, 6, len(segment))
        fid["df"] = fid["ip_id"] = _exact()
    else:
        header = bytearray(packet[:40])
        first = struct.unpack_from("!I", header, 0)[0]
        traffic_class = (client.tos & 0xFC) | ((first >> 20) & 0x03)
        flow = client.flow_label if client.flow_label is not None else first & 0xFFFFF
        struct.pack_into("!I", header, 0, (6 << 28) | (traffic_class << 20) | flow)
        struct.pack_into("!H", header, 4, len(segment))
        header[7] = ttl
        pseudo = bytes(header[8:40]) + struct.pack("!I", len(segment)) + b"\0\0\0\x06"
        fid["df"] = fid["ip_id"] = _exact()
    checksum = internet_checksum(pseudo + segment)
    segment = segment[:16] + struct.pack("!H", checksum) + segment[18:]
    return SynRewrite(bytes(header) + segment, fid)

