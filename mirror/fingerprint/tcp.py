"""TCP SYN fingerprints from a parsed ``TcpSyn``: FoxIO JA4T and p0f v3's ``raw_sig``.

JA4T (FoxIO License 1.1: internal and non-commercial use allowed) is
``window_optionkinds_mss_wscale``, e.g. ``64240_2-1-3-1-1-4_1460_8``. It follows the JA4T
spec (technical_details/JA4T.md: "If any field does not exist, then the output is 00") and
FoxIO's current Rust reference (rust/ja4/src/tcp.rs ``to_ja4t``):

* window: the raw 16-bit window, decimal;
* option kinds: every kind byte in order, ``-`` joined, EOL padding zeros included
  (``TcpSyn.option_kinds``); no options at all gives ``00``;
* MSS: decimal, zero-padded to two digits, ``00`` when absent (a 9 would print ``09``);
* window scale: decimal, but ``00`` when absent *or* zero.

Older FoxIO snapshots (ja4 rust before the ``00`` rule) printed ``0`` for an absent/zero MSS or
window scale and nothing for no options: ``8192_2-1-3-1-1-8_1440_0`` is ``..._1440_00`` now.

``p0f_signature`` reproduces what p0f 3.09b prints as ``raw_sig`` for a packet it has no better
context for (a client SYN opening a new flow): ``ver:ittl:olen:mss:wsize,scale:olayout:quirks:
pclass``. Its rules are p0f's own (process.c ``parse_packet``, fp_tcp.c ``dump_sig``), kept
quirk for quirk, including two of p0f's bugs, because the point is to print what p0f prints:

* ``ack+`` is tested as ``RD32(ack) & 1`` on a little-endian host (x86 builds, Debian's
  included): it appears when the *most significant* byte of the ACK number is odd, not when
  the ACK number is non-zero;
* ``opt+`` (non-zero bytes after EOL) is missed when the only non-zero byte is the last one.

p0f walks options by fixed sizes for MSS/WS/SACK-permitted/TS whatever their length byte, stops
after 24 options, and marks odd lengths and early stops with ``bad``: it re-walks
``TcpSyn.options_raw`` its own way here. Packets p0f itself would drop (SYN+FIN, IPv6 with
extension headers, ...) still get a signature built by the same rules.
"""

from __future__ import annotations

from mirror.wire.tcp import ACK, CWR, ECE, FIN, NS, PSH, RST, SYN, URG, TcpSyn

__all__ = ["ja4t", "p0f_signature"]


def ja4t(syn: TcpSyn) -> str:
    """FoxIO JA4T of a client SYN: ``window_optionkinds_mss_wscale``."""
    kinds = "-".join(str(kind) for kind in syn.option_kinds) or "00"
    mss = f"{syn.mss or 0:02d}"
    wscale = str(syn.wscale) if syn.wscale else "00"
    return f"{syn.window}_{kinds}_{mss}_{wscale}"


# --- p0f v3 -----------------------------------------------------------------------------

_MAX_DIST = 35  # config.h MAX_DIST
_MAX_TCP_OPT = 24  # config.h MAX_TCP_OPT
_SPECIAL_MSS = 1331  # p0f-sendsyn's probe MSS
_MIN_TCP4 = 40  # sizeof(ipv4_hdr) + sizeof(tcp_hdr)
_MIN_TCP6 = 60  # sizeof(ipv6_hdr) + sizeof(tcp_hdr)

# Quirks in the order dump_sig prints them.
_QUIRK_ORDER = (
    "df", "id+", "id-", "ecn", "0+", "flow",
    "seq-", "ack+", "ack-", "uptr+", "urgf+", "pushf+",
    "ts1-", "ts2+", "opt+", "exws", "bad",
)  # fmt: skip

_OPTION_NAMES = {1: "nop", 2: "mss", 3: "ws", 4: "sok", 5: "sack", 8: "ts"}


def _guess_dist(ttl: int) -> int:
    """fp_tcp.c guess_dist: hops from the nearest usual initial TTL at or above ``ttl``."""
    if ttl <= 32:
        return 32 - ttl
    if ttl <= 64:
        return 64 - ttl
    if ttl <= 128:
        return 128 - ttl
    return 255 - ttl


class _P0fOptions:
    """The result of p0f's option walk (process.c, the "TCP option parsing" loop)."""

    __slots__ = ("layout", "eol_pad", "mss", "wscale", "ts1", "quirks")

    def __init__(self) -> None:
        self.layout: list[int] = []
        self.eol_pad = 0
        self.mss = 0
        self.wscale = 0
        self.ts1 = 0
        self.quirks: set[str] = set()


def _p0f_walk_options(raw: bytes, plain_syn: bool) -> _P0fOptions:
    out = _P0fOptions()
    end = len(raw)
    pos = 0  # index of the next unread byte, as p0f's ``data`` pointer
    aborted = False
    while pos < end and len(out.layout) < _MAX_TCP_OPT:
        kind = raw[pos]
        out.layout.append(kind)
        pos += 1  # p0f reads the kind with *data++; pos now sits on the length byte
        if kind == 0:  # EOL: count what is left, flag non-zero padding
            out.eol_pad = end - pos
            while pos < end:
                byte = raw[pos]
                pos += 1
                if byte:
                    break
            if pos != end:
                out.quirks.add("opt+")
                pos = end
        elif kind == 1:  # NOP
            pass
        elif kind == 2:  # MSS: fixed four bytes
            if pos + 3 > end:
                aborted = True
                break
            if raw[pos] != 4:
                out.quirks.add("bad")
            out.mss = int.from_bytes(raw[pos + 1 : pos + 3], "big")
            pos += 3
        elif kind == 3:  # WS: fixed three bytes
            if pos + 2 > end:
                aborted = True
                break
            if raw[pos] != 3:
                out.quirks.add("bad")
            out.wscale = raw[pos + 1]
            if out.wscale > 14:
                out.quirks.add("exws")
            pos += 2
        elif kind == 4:  # SACK permitted: fixed two bytes
            if pos + 1 > end:
                aborted = True
                break
            if raw[pos] != 2:
                out.quirks.add("bad")
            pos += 1
        elif kind == 5:  # SACK: 10 to 34 bytes
            if pos == end or not 10 <= raw[pos] <= 34 or pos - 1 + raw[pos] > end:
                aborted = True
                break
            pos += raw[pos] - 1
        elif kind == 8:  # timestamps: fixed ten bytes
            if pos + 9 > end:
                aborted = True
                break
            if raw[pos] != 10:
                out.quirks.add("bad")
            out.ts1 = int.from_bytes(raw[pos + 1 : pos + 5], "big")
            if not out.ts1:
                out.quirks.add("ts1-")
            if plain_syn and any(raw[pos + 5 : pos + 9]):
                out.quirks.add("ts2+")
            pos += 9
        else:  # unknown, with a length byte of 2..40
            if pos == end or not 2 <= raw[pos] <= 40 or pos - 1 + raw[pos] > end:
                aborted = True
                break
            pos += raw[pos] - 1
    if aborted or pos != end:
        out.quirks.add("bad")
    return out


def _win_multiplier(syn: TcpSyn, mss: int, ts1: int) -> tuple[int, bool] | None:
    """fp_tcp.c detect_win_multi for a SYN with no peer MSS: (multiplier, is_mtu) or None."""
    win = syn.window
    if not win or mss < 100:
        return None
    v6 = syn.ip_version == 6
    tot_hdr = syn.ip_header_len + syn.tcp_header_len
    candidates: list[tuple[int, bool]] = [(mss, False)]
    if ts1:
        candidates.append((mss - 12, False))
    candidates += [(1500 - _MIN_TCP4, False), (1500 - _MIN_TCP4 - 12, False)]
    if v6:
        candidates += [(1500 - _MIN_TCP6, False), (1500 - _MIN_TCP6 - 12, False)]
    candidates += [(mss + _MIN_TCP4, True), (mss + tot_hdr, True)]
    if v6:
        candidates.append((mss + _MIN_TCP6, True))
    candidates.append((1500, True))
    for divisor, is_mtu in candidates:
        if win % divisor == 0:
            return win // divisor, is_mtu
    return None


def _p0f_quirks(syn: TcpSyn, walked: _P0fOptions) -> list[str]:
    quirks = set(walked.quirks)
    if syn.ip_version == 4:
        if syn.ecn:
            quirks.add("ecn")
        if syn.ip_flags & 0x4:
            quirks.add("0+")
        if syn.df:
            if syn.ip_id:
                quirks.add("id+")
        elif not syn.ip_id:
            quirks.add("id-")
    else:
        if syn.flow_label:
            quirks.add("flow")
        if syn.ecn:
            quirks.add("ecn")
    if syn.df:
        quirks.add("df")
    flags = syn.flags
    if flags & (ECE | CWR | NS):
        quirks.add("ecn")
    if not syn.seq:
        quirks.add("seq-")
    if flags & ACK:
        if not syn.ack:
            quirks.add("ack-")
    elif not flags & RST and (syn.ack >> 24) & 1:
        # p0f: RD32(tcp->ack) & !(flags & RST) -- bit 0 of the little-endian load.
        quirks.add("ack+")
    if flags & URG:
        quirks.add("urgf+")
    elif syn.urgent:
        quirks.add("uptr+")
    if flags & PSH:
        quirks.add("pushf+")
    return [name for name in _QUIRK_ORDER if name in quirks]


def p0f_signature(syn: TcpSyn) -> str:
    """p0f 3 ``raw_sig`` of a SYN: ``ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass``."""
    tcp_type = syn.flags & (SYN | ACK | FIN | RST)
    walked = _p0f_walk_options(syn.options_raw, plain_syn=tcp_type == SYN)

    dist = _guess_dist(syn.ttl)
    ittl = f"{syn.ttl}+?" if dist > _MAX_DIST else f"{syn.ttl}+{dist}"
    olen = len(syn.ip_options) if syn.ip_version == 4 else 0

    if walked.mss == _SPECIAL_MSS and tcp_type == SYN | ACK:
        mss = "*"
    else:
        mss = str(walked.mss)

    multi = _win_multiplier(syn, walked.mss, walked.ts1)
    if multi is None:
        wsize = str(syn.window)
    else:
        wsize = f"{'mtu' if multi[1] else 'mss'}*{multi[0]}"

    layout = ",".join(
        f"eol+{walked.eol_pad}" if kind == 0 else _OPTION_NAMES.get(kind, f"?{kind}")
        for kind in walked.layout
    )
    quirks = ",".join(_p0f_quirks(syn, walked))
    pclass = "+" if syn.payload_len else "0"
    fields = (str(syn.ip_version), ittl, str(olen), mss, f"{wsize},{walked.wscale}", layout,
              quirks, pclass)
    return ":".join(fields)
