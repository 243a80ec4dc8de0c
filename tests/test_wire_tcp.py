"""mirror.wire.tcp.parse_syn: SYNs built by scapy (an independent generator), read back.

Also: tshark as an independent judge of the option-kind walk that JA4T relies on (FoxIO's
reference reads Wireshark's ``tcp.option_kind``), and hypothesis properties: random bytes and
mutated SYNs raise nothing but WireError; generated option lists come back as generated.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from conftest import DST4, DST6, LINUX_OPTS, MACOS_OPTS, SRC4, SRC6, WINDOWS_OPTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, IPOption_Router_Alert, IPv6, Raw, wrpcap
from scapy.layers.inet6 import (
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)

from mirror.wire.errors import WireError
from mirror.wire.tcp import ACK, CWR, ECE, NS, PSH, SYN, URG, TcpOption, TcpSyn, parse_syn


def with_raw_options(ip_layer, tcp_kwargs: dict, options: bytes, payload: bytes = b"") -> bytes:
    """An IP packet whose TCP option area is exactly ``options`` (scapy adds no padding)."""
    assert len(options) % 4 == 0
    tcp = TCP(dataofs=5 + len(options) // 4, **tcp_kwargs)
    return bytes(ip_layer / tcp / Raw(options + payload))


def linux_syn() -> bytes:
    return bytes(IP(src=SRC4, dst=DST4, ttl=64, flags="DF", id=40123)
                 / TCP(sport=41000, dport=443, flags="S", seq=3_000_000_001, window=64240,
                       options=LINUX_OPTS))


def windows_syn() -> bytes:
    return bytes(IP(src=SRC4, dst=DST4, ttl=128, flags="DF", id=2222)
                 / TCP(sport=50000, dport=443, flags="S", seq=77, window=64240,
                       options=WINDOWS_OPTS))


def macos_syn() -> bytes:
    return bytes(IP(src=SRC4, dst=DST4, ttl=64, flags="DF", id=0)
                 / TCP(sport=61311, dport=443, flags="SEC", seq=99, window=65535,
                       options=MACOS_OPTS))


def ipv6_syn() -> bytes:
    return bytes(IPv6(src=SRC6, dst=DST6, hlim=64, fl=0xABCDE, tc=0xB8)
                 / TCP(sport=42000, dport=8443, flags="S", seq=5, window=64800,
                       options=LINUX_OPTS))


# --- the usual stacks ----------------------------------------------------------------------


def test_linux_like_syn() -> None:
    syn = parse_syn(linux_syn())
    assert isinstance(syn, TcpSyn)
    assert (syn.ip_version, syn.src, syn.dst, syn.ttl) == (4, SRC4, DST4, 64)
    assert syn.df is True and syn.ip_id == 40123 and syn.ip_flags == 0x2
    assert (syn.tos, syn.ecn, syn.flow_label, syn.ip_options) == (0, 0, None, b"")
    assert (syn.sport, syn.dport, syn.seq, syn.ack) == (41000, 443, 3_000_000_001, 0)
    assert syn.flags == SYN and syn.is_syn and syn.is_initial_syn
    assert (syn.window, syn.urgent) == (64240, 0)
    assert syn.option_kinds == [2, 4, 8, 1, 3]
    assert syn.options == [
        TcpOption(2, struct.pack("!H", 1460)),
        TcpOption(4, b""),
        TcpOption(8, struct.pack("!II", 2886759, 0)),
        TcpOption(1, b""),
        TcpOption(3, b"\x07"),
    ]
    assert (syn.mss, syn.wscale, syn.sack_permitted) == (1460, 7, True)
    assert syn.timestamps == (2886759, 0)
    assert syn.payload_len == 0
    assert (syn.ip_header_len, syn.tcp_header_len) == (20, 40)
    assert syn.raw == linux_syn()
    assert syn.option_padding == b""


def test_options_two_syns_share_are_one_object_and_timestamps_are_each_syns_own() -> None:
    first = parse_syn(linux_syn())
    second = parse_syn(bytes(IP(src=SRC4, dst=DST4, ttl=64, flags="DF", id=40124)
                             / TCP(sport=41001, dport=443, flags="S", seq=9, window=64240,
                                   options=[("MSS", 1460), ("SAckOK", b""),
                                            ("Timestamp", (2886999, 0)), ("NOP", None),
                                            ("WScale", 7)])))
    for a, b in zip(first.options, second.options, strict=True):
        if a.kind == 8:
            assert b is not a and b.data != a.data
        else:
            assert b is a
    assert second.timestamps == (2886999, 0) and second.options[0] == TcpOption(2, b"\x05\xb4")


def test_windows_like_syn() -> None:
    syn = parse_syn(windows_syn())
    assert (syn.ttl, syn.window, syn.df, syn.ip_id) == (128, 64240, True, 2222)
    assert syn.option_kinds == [2, 1, 3, 1, 1, 4]
    assert (syn.mss, syn.wscale, syn.sack_permitted, syn.timestamps) == (1460, 8, True, None)


def test_macos_like_syn_lists_eol_and_its_zero_padding() -> None:
    data = macos_syn()
    syn = parse_syn(data)
    # 23 bytes of options + EOL, padded by scapy with one zero byte to 24: 2-1-3-1-1-8-4-0-0.
    assert syn.option_kinds == [2, 1, 3, 1, 1, 8, 4, 0, 0]
    assert [o.kind for o in syn.options] == [2, 1, 3, 1, 1, 8, 4, 0]
    assert syn.option_padding == b"\x00"
    assert syn.flags == SYN | ECE | CWR and syn.is_initial_syn
    assert syn.ip_id == 0 and syn.df
    assert (syn.mss, syn.wscale, syn.timestamps) == (1460, 6, (1234567890, 0))
    assert syn.options_raw == data[40:64]


def test_ipv6_syn() -> None:
    syn = parse_syn(ipv6_syn())
    assert (syn.ip_version, syn.src, syn.dst, syn.ttl) == (6, SRC6, DST6, 64)
    assert (syn.tos, syn.ecn, syn.flow_label) == (0xB8, 0, 0xABCDE)
    assert (syn.df, syn.ip_id, syn.ip_flags, syn.ip_options) == (False, None, 0, b"")
    assert (syn.sport, syn.dport, syn.window) == (42000, 8443, 64800)
    assert syn.option_kinds == [2, 4, 8, 1, 3]
    assert (syn.ip_header_len, syn.ip_ext_headers) == (40, [])


def test_ipv6_extension_headers_are_walked_to_tcp() -> None:
    packet = (IPv6(src=SRC6, dst=DST6, hlim=61) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
              / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2, flags="S", options=WINDOWS_OPTS))
    data = bytes(packet)
    syn = parse_syn(data)
    assert syn.ip_ext_headers == [0, 43, 60]
    assert syn.ip_header_len == len(data) - 32
    assert (syn.sport, syn.dport, syn.ttl) == (1, 2, 61)
    assert syn.option_kinds == [2, 1, 3, 1, 1, 4]


def test_ipv6_fragment_header_is_refused() -> None:
    data = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment() / TCP(flags="S"))
    with pytest.raises(WireError) as info:
        parse_syn(data)
    assert info.value.layer == "tcp"


def test_no_options() -> None:
    syn = parse_syn(bytes(IP(src=SRC4, dst=DST4, ttl=50, id=7)
                          / TCP(sport=3, dport=4, flags="S", window=1024)))
    assert syn.options == [] and syn.option_kinds == []
    assert (syn.mss, syn.wscale, syn.sack_permitted, syn.timestamps) == (None, None, False, None)
    assert syn.df is False and syn.tcp_header_len == 20


def test_unknown_option_kinds_are_kept_raw() -> None:
    # TFO cookie request (34, len 2), MPTCP-ish 30 with 6 data bytes, experimental 254.
    options = b"\x02\x04\x05\x78" + b"\x22\x02" + b"\x1e\x08abcdef" + b"\xfe\x04\xf9\x89"
    options += b"\x01" * ((-len(options)) % 4)
    syn = parse_syn(with_raw_options(IP(src=SRC4, dst=DST4), {"flags": "S"}, options))
    assert syn.option_kinds[:4] == [2, 34, 30, 254]
    assert syn.options[1:4] == [TcpOption(34, b""), TcpOption(30, b"abcdef"),
                                TcpOption(254, b"\xf9\x89")]
    assert syn.mss == 0x0578


def test_ecn_bits_ns_and_reserved_flags() -> None:
    data = bytearray(bytes(IP(src=SRC4, dst=DST4, tos=0x03) / TCP(flags="SEC")))
    data[32] |= 0x0F  # NS + the three reserved bits, in the low nibble of the offset byte
    syn = parse_syn(bytes(data))
    assert syn.ecn == 3 and syn.tos == 3
    assert syn.flags == SYN | ECE | CWR | NS | 0xE00
    v6 = parse_syn(bytes(IPv6(src=SRC6, dst=DST6, tc=0x02) / TCP(flags="S")))
    assert (v6.ecn, v6.tos) == (2, 2)


def test_ip_options_and_reserved_ip_flag() -> None:
    packet = IP(src=SRC4, dst=DST4, flags="evil", options=[IPOption_Router_Alert()])
    syn = parse_syn(bytes(packet / TCP(flags="S", options=WINDOWS_OPTS)))
    assert syn.ip_options == bytes(IPOption_Router_Alert())
    assert syn.ip_header_len == 24 and syn.ip_flags == 0x4 and not syn.df


def test_other_flags_and_fields_are_exposed_not_refused() -> None:
    syn = parse_syn(bytes(IP(src=SRC4, dst=DST4)
                          / TCP(flags="SAPU", ack=12345, urgptr=99, window=0)))
    assert syn.flags == SYN | ACK | PSH | URG
    assert syn.is_syn and not syn.is_initial_syn
    assert (syn.ack, syn.urgent, syn.window) == (12345, 99, 0)
    plain_ack = parse_syn(bytes(IP(src=SRC4, dst=DST4) / TCP(flags="A")))
    assert not plain_ack.is_syn


def test_payload_and_trailing_padding() -> None:
    data = bytes(IP(src=SRC4, dst=DST4) / TCP(flags="S", options=LINUX_OPTS) / Raw(b"x" * 37))
    syn = parse_syn(data)
    assert syn.payload_len == 37
    assert syn.raw == data[:60]  # headers only
    # Link-layer padding after the IP packet is not payload.
    assert parse_syn(data + b"\x00" * 6).payload_len == 37
    # A saved SYN keeps headers only: the IP length still declares the payload it carried.
    assert parse_syn(data[:60]).payload_len == 37


def test_duplicate_and_odd_length_options() -> None:
    # MSS twice (last wins, as Linux and FoxIO's current JA4T), a 5-byte MSS (ignored for the
    # value), WS with length 4 (ignored), then a well-formed WS.
    options = (b"\x02\x04\x05\xb4" + b"\x02\x04\x02\x18" + b"\x02\x05\x01\x02\x03"
               + b"\x03\x04\x09\x00" + b"\x03\x03\x05" + b"\x00" * 4)
    syn = parse_syn(with_raw_options(IP(src=SRC4, dst=DST4), {"flags": "S"}, options))
    assert syn.option_kinds == [2, 2, 2, 3, 3, 0, 0, 0, 0]
    assert (syn.mss, syn.wscale) == (0x0218, 5)
    assert syn.options[2] == TcpOption(2, b"\x01\x02\x03")


def test_eol_then_non_zero_padding_stops_the_kind_list() -> None:
    options = b"\x02\x04\x05\xb4" + b"\x00\x00\x01\x03"
    syn = parse_syn(with_raw_options(IP(src=SRC4, dst=DST4), {"flags": "S"}, options))
    assert syn.option_kinds == [2, 0, 0]
    assert syn.option_padding == b"\x00\x01\x03"


# --- refusals ------------------------------------------------------------------------------


def _refused(data: bytes) -> WireError:
    with pytest.raises(WireError) as info:
        parse_syn(data)
    assert info.value.layer == "tcp"
    return info.value


@pytest.mark.parametrize("cut", [0, 1, 19, 20, 39, 40, 59])
def test_truncated_headers(cut: int) -> None:
    _refused(linux_syn()[:cut])


def test_truncated_ipv6() -> None:
    data = ipv6_syn()
    for cut in (39, 40, 59, len(data) - 1):
        _refused(data[:cut])


def test_lying_lengths() -> None:
    good = bytearray(linux_syn())
    bad_ihl = bytearray(good)
    bad_ihl[0] = 0x44
    _refused(bytes(bad_ihl))
    long_ihl = bytearray(good)
    long_ihl[0] = 0x4F  # 60-byte IP header: the TCP header no longer fits
    _refused(bytes(long_ihl))
    short_total = bytearray(good)
    short_total[2:4] = struct.pack("!H", 50)  # shorter than IP + TCP headers
    _refused(bytes(short_total))
    small_doff = bytearray(good)
    small_doff[32] = 0x40
    _refused(bytes(small_doff))
    big_doff = bytearray(good)
    big_doff[32] = 0xF0
    _refused(bytes(big_doff))


@pytest.mark.parametrize("options", [
    b"\x01\x02\x04\x05",        # option runs past the header (3 bytes of a 4-byte MSS)
    b"\x01\x01\x01\x02",        # kind with no length byte
    b"\x02\x01\x00\x00",        # length below 2
    b"\x02\x00\x00\x00",        # zero length
    b"\x08\x0a\x00\x00",        # length 10 in a 4-byte area
])
def test_lying_option_lengths(options: bytes) -> None:
    options += b"\x00" * ((-len(options)) % 4)
    _refused(with_raw_options(IP(src=SRC4, dst=DST4), {"flags": "S"}, options))


def test_not_tcp_or_fragmented() -> None:
    from scapy.all import UDP

    _refused(bytes(IP(src=SRC4, dst=DST4) / UDP()))
    _refused(bytes(IPv6(src=SRC6, dst=DST6) / UDP()))
    _refused(bytes(IP(src=SRC4, dst=DST4, flags="MF") / TCP()))
    _refused(bytes(IP(src=SRC4, dst=DST4, frag=3) / TCP()))
    _refused(b"\x50" + bytes(59))  # version 5
    _refused(b"")


# --- tshark as a judge of the option walk ----------------------------------------------------

ODD_OPTIONS = [
    b"\x02\x04\x05\xb4\x00\x00\x00\x00",
    b"\x02\x04\x05\xb4\x00\x01\x03\x03",
    b"\x00\x00\x00\x00",
    b"\x01\x01\x01\x01",
    b"\x02\x05\x05\xb4\x00\x03\x03\x07",
    b"\x03\x03\x0e\x03\x03\x0f\x02\x04\x00\x05\x00\x00",
    b"\x22\x02\xfe\x04\x01\x02\x00\x00",
    b"\x02\x04\x05\xb4\x02\x04\x04\x00\x03\x03\x05\x00",
]


def _judge_packets() -> list[bytes]:
    packets = [linux_syn(), windows_syn(), macos_syn(), ipv6_syn()]
    for index, options in enumerate(ODD_OPTIONS):
        packets.append(with_raw_options(IP(src=SRC4, dst=DST4),
                                        {"flags": "S", "sport": 30000 + index}, options))
    return packets


def test_option_walk_matches_tshark(tmp_path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is not installed (the independent judge of the option walk); "
                    ".ci/run installs it")
    packets = _judge_packets()
    frames = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / (IP(p) if p[0] >> 4 == 4 else IPv6(p)) for p in packets]
    path = tmp_path / "options.pcap"
    wrpcap(str(path), frames)
    result = subprocess.run(
        [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "separator=|",
         "-e", "tcp.option_kind", "-e", "tcp.options.mss_val",
         "-e", "tcp.options.wscale.shift"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(packets)
    for data, line in zip(packets, lines, strict=True):
        kinds, mss, shift = line.split("|")
        syn = parse_syn(data)
        assert syn.option_kinds == ([int(k) for k in kinds.split(",")] if kinds else [])
        assert syn.mss == (int(mss.split(",")[-1]) if mss else None)
        assert syn.wscale == (int(shift.split(",")[-1]) if shift else None)


# --- hypothesis -------------------------------------------------------------------------------

SEEDS = [linux_syn(), windows_syn(), macos_syn(), ipv6_syn(),
         bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / TCP(options=MACOS_OPTS))]


def _only_wire_errors(data: bytes) -> None:
    try:
        syn = parse_syn(data)
    except WireError as error:
        assert error.layer == "tcp"
        return
    assert isinstance(syn, TcpSyn)
    assert len(syn.raw) == syn.ip_header_len + syn.tcp_header_len


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    _only_wire_errors(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120).map(lambda b: b"\x45" + b), st.binary(max_size=120)
       .map(lambda b: b"\x60" + b))
def test_random_bytes_behind_a_valid_version_nibble(v4: bytes, v6: bytes) -> None:
    _only_wire_errors(v4)
    _only_wire_errors(v6)


@st.composite
def mutated_syn(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data) + 8))
    tail = draw(st.binary(max_size=8))
    return bytes(data[:cut]) + tail


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_syn())
def test_mutated_syns_raise_only_wire_error(data: bytes) -> None:
    _only_wire_errors(data)


_TLV = st.one_of(
    st.just((1, b"")),
    st.integers(0, 65535).map(lambda v: (2, struct.pack("!H", v))),
    st.integers(0, 255).map(lambda v: (3, bytes([v]))),
    st.just((4, b"")),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    .map(lambda t: (8, struct.pack("!II", *t))),
    st.tuples(st.integers(2, 255).filter(lambda k: k not in (2, 3, 4, 8)), st.binary(max_size=6)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TLV, max_size=8), st.booleans(), st.booleans())
def test_generated_option_lists_come_back(items, eol: bool, v6: bool) -> None:
    body = b"".join(bytes([k]) if k == 1 else bytes([k, 2 + len(d)]) + d for k, d in items)
    if len(body) + eol > 40:
        return
    area = body + (b"\x00" if eol else b"")
    pad = (-len(area)) % 4
    if pad and not eol:  # without EOL, pad with NOPs (zeros would read as EOL)
        area += b"\x01" * pad
        items = items + [(1, b"")] * pad
    else:
        area += b"\x00" * pad
    ip = IPv6(src=SRC6, dst=DST6) if v6 else IP(src=SRC4, dst=DST4)
    syn = parse_syn(with_raw_options(ip, {"flags": "S"}, area))
    expected_kinds = [k for k, _ in items] + ([0] * (1 + pad) if eol else [])
    assert syn.option_kinds == expected_kinds
    assert [(o.kind, o.data) for o in syn.options] == list(items) + ([(0, b"")] if eol else [])
    mss_values = [d for k, d in items if k == 2]
    assert syn.mss == (struct.unpack("!H", mss_values[-1])[0] if mss_values else None)
    ws_values = [d for k, d in items if k == 3]
    assert syn.wscale == (ws_values[-1][0] if ws_values else None)
    assert syn.sack_permitted == any(k == 4 for k, _ in items)
    ts_values = [d for k, d in items if k == 8]
    assert syn.timestamps == (struct.unpack("!II", ts_values[-1]) if ts_values else None)
