"""Capture reading, decapsulation, TCP reassembly, per-connection analysis and the CLI.

Synthetic captures are built here with scapy (IP / TCP / UDP headers and checksums) and
written as pcap with dpkt or as pcapng block by block, into tmp_path. The CLI is exercised on
FoxIO's real captures (../shared/vectors, MIRROR_VECTORS overrides).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quic_packets import client_hello, crypto_frame, protect
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether

from mirror.cli import main as cli_main
from mirror.fingerprint import http as http_fp
from mirror.fingerprint import tls as tls_fp
from mirror.pcapfile.analyze import analyze_capture
from mirror.pcapfile.decap import innermost_ip
from mirror.pcapfile.lenient_http import lenient_request_head
from mirror.pcapfile.reader import (
    CaptureReader,
    CorruptCaptureError,
    NotACaptureError,
    PcapError,
)
from mirror.pcapfile.report import JSON_KEYS
from mirror.pcapfile.streams import StreamBuffer, StreamCollector
from mirror.wire import quic
from mirror.wire.http2 import PREFACE
from mirror.wire.tls import parse_client_hello

VECTORS = Path(os.environ.get("MIRROR_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
FOXIO_PCAPS = VECTORS / "foxio-ja4" / "pcap"
VECTOR_NAMES = sorted(p.name for p in FOXIO_PCAPS.iterdir()) if FOXIO_PCAPS.is_dir() else []


def vector(name: str) -> Path:
    """A FoxIO capture; the test fails (not skips) when the vectors are missing."""
    path = FOXIO_PCAPS / name
    if not path.is_file():
        pytest.fail(f"reference capture {path} not found (set MIRROR_VECTORS)")
    return path

CLIENT, SERVER = ("10.0.0.1", 40001), ("10.0.0.2", 443)
SYN_OPTIONS = [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
EXPECTED_JA4T = "64240_2-1-3-1-1-4_1460_8"  # window, MSS NOP WS NOP NOP SACK-permitted, 1460, 8

HELLO = client_hello(sni=b"reassembly.example", alpn=b"h2", padding=700)
EXPECTED_JA4 = tls_fp.ja4(parse_client_hello(HELLO), "t")


# --------------------------------------------------------------------------- builders


def records(handshake: bytes, sizes: list[int] | None = None) -> bytes:
    """``handshake`` in TLS handshake records of the given fragment sizes (one record if None)."""
    sizes = sizes or [len(handshake)]
    out, position = b"", 0
    for size in sizes:
        fragment = handshake[position : position + size]
        if not fragment:
            break
        out += b"\x16\x03\x01" + struct.pack("!H", len(fragment)) + fragment
        position += size
    if position < len(handshake):
        rest = handshake[position:]
        out += b"\x16\x03\x01" + struct.pack("!H", len(rest)) + rest
    return out


def ip_layer(src: str, dst: str, ttl: int = 64):
    return IPv6(src=src, dst=dst, hlim=ttl) if ":" in src else IP(src=src, dst=dst, ttl=ttl, flags="DF")


def syn(client=CLIENT, server=SERVER, isn: int = 1000):
    return ip_layer(client[0], server[0]) / TCP(
        sport=client[1], dport=server[1], flags="S", seq=isn, window=64240, options=SYN_OPTIONS
    )


def syn_ack(client=CLIENT, server=SERVER, isn: int = 1000, server_isn: int = 9000):
    return ip_layer(server[0], client[0]) / TCP(
        sport=server[1], dport=client[1], flags="SA", seq=server_isn, ack=(isn + 1) % 2**32, window=65535
    )


def segment(offset: int, data: bytes, client=CLIENT, server=SERVER, isn: int = 1000, flags: str = "PA"):
    return ip_layer(client[0], server[0]) / TCP(
        sport=client[1], dport=server[1], flags=flags, seq=(isn + 1 + offset) % 2**32, ack=9001
    ) / data


def server_segment(offset: int, data: bytes, client=CLIENT, server=SERVER, server_isn: int = 9000):
    return ip_layer(server[0], client[0]) / TCP(
        sport=server[1], dport=client[1], flags="PA", seq=(server_isn + 1 + offset) % 2**32, ack=1001
    ) / data


def connection(stream: bytes, *, pieces: int = 1, client=CLIENT, server=SERVER, isn: int = 1000,
               server_data: bytes = b""):
    """SYN, SYN-ACK, the client's stream in ``pieces`` in-order segments, the server's bytes."""
    packets = [syn(client, server, isn), syn_ack(client, server, isn)]
    step = -(-len(stream) // pieces)
    for offset in range(0, len(stream), step):
        packets.append(segment(offset, stream[offset : offset + step], client, server, isn))
    if server_data:
        packets.append(server_segment(0, server_data, client, server))
    return packets


def write_pcap(path: Path, frames: list[bytes], linktype: int = dpkt.pcap.DLT_EN10MB, *, nano: bool = False) -> Path:
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=linktype, nano=nano)
        for number, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + number / 1000)
    return path


def ether(packet) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet)


def write_ether(path: Path, packets) -> Path:
    return write_pcap(path, [ether(p) for p in packets])


def pcapng_block(block_type: int, body: bytes, order: str = "<") -> bytes:
    body += bytes(-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def pcapng_file(
    interfaces: list[tuple[int, int | None]], packets: list[tuple[int, int, bytes]], order: str = "<"
) -> bytes:
    """SHB, one IDB per (linktype, tsresol option or None), then EPBs of (iface, ticks, frame)."""
    out = pcapng_block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)
    for linktype, tsresol in interfaces:
        options = b""
        if tsresol is not None:
            options = struct.pack(order + "HH", 9, 1) + bytes([tsresol]) + bytes(3) + struct.pack(order + "HH", 0, 0)
        out += pcapng_block(1, struct.pack(order + "HHI", linktype, 0, 0) + options, order)
    for iface, ticks, frame in packets:
        body = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame
        out += pcapng_block(6, body, order)
    return out


def only_tcp(result):
    tcp = [c for c in result.connections if c.transport == "tcp"]
    assert len(tcp) == 1, [c.key for c in result.connections]
    return tcp[0]


# --------------------------------------------------------------------------- reader


def test_pcap_variants_read_the_same(tmp_path: Path) -> None:
    packets = connection(records(HELLO), pieces=3)
    frames = [ether(p) for p in packets]
    micro = write_pcap(tmp_path / "micro.pcap", frames)
    nano = write_pcap(tmp_path / "nano.pcap", frames, nano=True)
    big_endian = tmp_path / "big.pcap"  # hand-written: magic a1b2c3d4, big-endian fields
    data = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for number, frame in enumerate(frames):
        data += struct.pack(">IIII", 1_700_000_000, number * 1000, len(frame), len(frame)) + frame
    big_endian.write_bytes(data)
    ng = tmp_path / "capture.pcapng"
    ng.write_bytes(pcapng_file([(1, None)], [(0, (1_700_000_000 * 10**6) + n * 1000, f) for n, f in enumerate(frames)]))
    results = {}
    for path in (micro, nano, big_endian, ng):
        with CaptureReader(path) as reader:
            results[path.name] = [(round(ts, 3), packet) for ts, packet in reader.ip_packets()]
            assert reader.format == ("pcapng" if path.suffix == ".pcapng" else "pcap")
    expected = [(round(1_700_000_000 + n / 1000, 3), bytes(p)) for n, p in enumerate(packets)]
    for name, got in results.items():
        assert got == expected, name


def test_pcapng_interfaces_with_their_own_linktype_and_resolution(tmp_path: Path) -> None:
    first, second = syn(), segment(0, records(HELLO))
    path = tmp_path / "two-interfaces.pcapng"
    path.write_bytes(
        pcapng_file(
            [(1, None), (101, 9)],  # Ethernet in microseconds; raw IP in nanoseconds
            [(0, 1_700_000_000_000_000, ether(first)), (1, 1_700_000_000_500_000_000, bytes(second))],
        )
    )
    with CaptureReader(path) as reader:
        got = list(reader.ip_packets())
    assert [p for _, p in got] == [bytes(first), bytes(second)]
    assert got[0][0] == pytest.approx(1_700_000_000.0)
    assert got[1][0] == pytest.approx(1_700_000_000.5)


def test_pcapng_big_endian_and_several_sections(tmp_path: Path) -> None:
    first, second = syn(), segment(0, records(HELLO))
    path = tmp_path / "sections.pcapng"
    path.write_bytes(
        pcapng_file([(101, None)], [(0, 5_000_000, bytes(first))], order=">")
        + pcapng_file([(1, 3)], [(0, 7_000, ether(second))], order="<")  # milliseconds
    )
    with CaptureReader(path) as reader:
        got = list(reader.ip_packets())
    assert got == [(5.0, bytes(first)), (7.0, bytes(second))]


def test_pcapng_decryption_secrets_are_collected(tmp_path: Path) -> None:
    secrets = b"CLIENT_RANDOM " + b"00" * 32 + b" " + b"11" * 48 + b"\n"
    dsb = pcapng_block(0x0A, struct.pack("<II", 0x544C534B, len(secrets)) + secrets)
    path = tmp_path / "secrets.pcapng"
    path.write_bytes(pcapng_file([(1, None)], []) + dsb)
    with CaptureReader(path) as reader:
        assert list(reader) == []
        assert reader.secrets == [secrets]


@pytest.mark.parametrize("cut", ["record header", "record data"])
def test_truncated_pcap_yields_what_it_can_then_raises(tmp_path: Path, cut: str) -> None:
    frames = [ether(p) for p in connection(records(HELLO), pieces=3)]
    path = write_pcap(tmp_path / "whole.pcap", frames)
    data = path.read_bytes()
    end_of_third = 24 + sum(16 + len(f) for f in frames[:3])
    cut_at = end_of_third + (7 if cut == "record header" else 16 + 10)
    path.write_bytes(data[:cut_at])
    seen = []
    with CaptureReader(path) as reader, pytest.raises(CorruptCaptureError) as info:
        for frame in reader:
            seen.append(frame.data)
    assert seen == frames[:3]
    assert info.value.frames == 3
    assert "cut short" in str(info.value)


def test_truncated_pcapng_yields_what_it_can_then_raises(tmp_path: Path) -> None:
    frames = [ether(p) for p in connection(records(HELLO), pieces=2)]
    data = pcapng_file([(1, None)], [(0, n, f) for n, f in enumerate(frames)])
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[:-10])
    seen = []
    with pytest.raises(CorruptCaptureError) as info, CaptureReader(path) as reader:
        seen.extend(frame.data for frame in reader)
    assert seen == frames[:-1]
    assert info.value.frames == len(frames) - 1


def test_absurd_record_length_is_corruption_not_memory_exhaustion(tmp_path: Path) -> None:
    path = tmp_path / "huge.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                     + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 0xFFFFFFF0) + b"abc")
    with pytest.raises(CorruptCaptureError):
        list(CaptureReader(path))


def test_pcapng_block_with_lying_length(tmp_path: Path) -> None:
    data = bytearray(pcapng_file([(1, None)], [(0, 0, ether(syn()))]))
    data[-4:] = struct.pack("<I", 999)  # the trailing copy of the length disagrees
    path = tmp_path / "lying.pcapng"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCaptureError, match="disagree"):
        list(CaptureReader(path))


@pytest.mark.parametrize("content", [b"", b"ab", b"hello, this is not a capture\n", bytes(100)])
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file.pcap"
    path.write_bytes(content)
    with pytest.raises(NotACaptureError):
        CaptureReader(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotACaptureError, match="No such file"):
        CaptureReader(tmp_path / "missing.pcap")
    with pytest.raises(NotACaptureError):
        CaptureReader(tmp_path)


def _valid_capture_bytes() -> tuple[bytes, bytes]:
    frames = [ether(p) for p in connection(records(HELLO, [100, 300]), pieces=4)]
    stream = io.BytesIO()
    writer = dpkt.pcap.Writer(stream, linktype=1)
    for frame in frames:
        writer.writepkt(frame, ts=1.0)
    return stream.getvalue(), pcapng_file([(1, 6), (113, None)], [(n % 2, n, f) for n, f in enumerate(frames)])


_PCAP_BYTES, _PCAPNG_BYTES = _valid_capture_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_captures_raise_only_pcap_errors(tmp_path: Path, ng: bool, edits, cut) -> None:
    data = bytearray(_PCAPNG_BYTES if ng else _PCAP_BYTES)
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    path = tmp_path / "fuzz.cap"
    path.write_bytes(bytes(data))
    try:
        result = analyze_capture(path)
    except NotACaptureError:
        return
    assert result.error is None or isinstance(result.error, PcapError)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 300), st.binary(max_size=200))
def test_decapsulation_never_raises(linktype: int, frame: bytes) -> None:
    packet = innermost_ip(linktype, frame)
    assert packet is None or packet[0] >> 4 in (4, 6)


# --------------------------------------------------------------------------- decapsulation


def _gre(protocol: int, payload: bytes, *, key: bool = False, seq: bool = False, checksum: bool = False) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x2000 if key else 0) | (0x1000 if seq else 0)
    header = struct.pack("!HH", flags, protocol)
    if checksum:
        header += b"\x00\x00\x00\x00"
    if key:
        header += b"\x00\x00\x00\x2a"
    if seq:
        header += b"\x00\x00\x00\x07"
    return header + payload


def _outer(payload: bytes, proto: int) -> bytes:
    return bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=proto) / payload)


def _udp_outer(dport: int, payload: bytes) -> bytes:
    return bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=55555, dport=dport) / payload)


def _inner_ether(packet) -> bytes:
    return bytes(Ether(src="02:aa:00:00:00:01", dst="02:aa:00:00:00:02") / packet)


ENCAPSULATIONS = {
    # name: (linktype, function from an inner IP packet to the captured frame)
    "ethernet": (1, lambda p: ether(p)),
    "vlan": (1, lambda p: bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / p)),
    "qinq": (
        1,
        lambda p: bytes(
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88A8)
            / Dot1Q(vlan=100, type=0x8100) / Dot1Q(vlan=7) / p
        ),
    ),
    "mpls": (1, lambda p: bytes(Ether(type=0x8847)) + struct.pack("!I", (16 << 12) | 0x100 | 64) + bytes(p)),
    "linux-sll": (113, lambda p: bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6,
                                                   src=b"\x02" * 6 + b"\x00\x00",
                                                   proto=0x0800 if p.version == 4 else 0x86DD) / p)),
    "linux-sll2": (276, lambda p: bytes(CookedLinuxV2(proto=0x0800 if p.version == 4 else 0x86DD,
                                                      ifindex=2, lladdrtype=1, lladdrlen=6,
                                                      src=b"\x02" * 8) / p)),
    "raw": (101, lambda p: bytes(p)),
    "null-loopback": (0, lambda p: struct.pack("<I", 2 if p.version == 4 else 30) + bytes(p)),
    "ip-in-ip": (1, lambda p: ether(IP(src="192.0.2.1", dst="192.0.2.2") / p)),
    "gre": (1, lambda p: _outer_frame(_gre(0x0800 if p.version == 4 else 0x86DD, bytes(p),
                                           key=True, seq=True, checksum=True), 47)),
    "gre-ethernet": (1, lambda p: _outer_frame(_gre(0x6558, _inner_ether(p), key=True), 47)),
    "erspan-ii": (1, lambda p: _outer_frame(_gre(0x88BE, bytes(8) + _inner_ether(p), seq=True), 47)),
    "erspan-iii": (1, lambda p: _outer_frame(_gre(0x22EB, bytes(11) + b"\x00" + _inner_ether(p), seq=True), 47)),
    "vxlan": (1, lambda p: ether_bytes(_udp_outer(4789, b"\x08\x00\x00\x00\x00\x00\x2a\x00" + _inner_ether(p)))),
    "geneve": (1, lambda p: ether_bytes(_udp_outer(
        6081, b"\x01\x00\x65\x58\x00\x00\x2a\x00" + b"\x01\x02\x03\x04" + _inner_ether(p)))),
}


def ether_bytes(ip_packet: bytes) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)) + ip_packet


def _outer_frame(gre_payload: bytes, proto: int) -> bytes:
    return ether_bytes(_outer(gre_payload, proto))


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", sorted(ENCAPSULATIONS))
def test_encapsulations_reach_the_inner_connection(tmp_path: Path, name: str, ipv6: bool) -> None:
    client = ("2001:db8::1", 40001) if ipv6 else CLIENT
    server = ("2001:db8::2", 443) if ipv6 else SERVER
    linktype, wrap = ENCAPSULATIONS[name]
    packets = connection(records(HELLO), pieces=2, client=client, server=server)
    path = write_pcap(tmp_path / f"{name}.pcap", [wrap(p) for p in packets], linktype)
    result = only_tcp(analyze_capture(path))
    assert (result.src, result.sport, result.dst, result.dport) == (*client, *server)
    assert result.ja4t == EXPECTED_JA4T
    assert [t.ja4 for t in result.tls] == [EXPECTED_JA4]
    assert result.hello.sni == "reassembly.example"


def test_ipv6_extension_header_before_tcp(tmp_path: Path) -> None:
    client, server = ("2001:db8::1", 40001), ("2001:db8::2", 443)
    hop = IPv6(src=client[0], dst=server[0]) / IPv6ExtHdrHopByHop()
    packets = [
        hop / TCP(sport=client[1], dport=server[1], flags="S", seq=1000, window=64240, options=SYN_OPTIONS),
        hop / TCP(sport=client[1], dport=server[1], flags="PA", seq=1001) / records(HELLO),
    ]
    result = only_tcp(analyze_capture(write_ether(tmp_path / "hbh.pcap", packets)))
    assert result.hello.ja4 == EXPECTED_JA4
    assert result.ja4t == EXPECTED_JA4T


def test_ip_fragments_are_dropped(tmp_path: Path) -> None:
    fragment = IP(src=CLIENT[0], dst=SERVER[0], flags="MF", proto=6) / (b"x" * 40)
    path = write_ether(tmp_path / "frag.pcap", [fragment])
    with CaptureReader(path) as reader:
        packets = list(reader.ip_packets())
    collector = StreamCollector()
    for ts, packet in packets:
        collector.feed(ts, packet)
    assert collector.finish().tcp == [] and collector.ignored == 1


# --------------------------------------------------------------------------- reassembly


def test_hello_over_many_segments_and_records_out_of_order(tmp_path: Path) -> None:
    stream = records(HELLO, [50, 7, 300, 1])  # four-plus records
    pieces = [(offset, stream[offset : offset + 37]) for offset in range(0, len(stream), 37)]
    rng = random.Random(7)
    shuffled = pieces[:]
    rng.shuffle(shuffled)
    retransmitted = shuffled + rng.sample(pieces, 5)  # duplicates after the fact
    overlapping = [(o, stream[o : o + 80]) for o in range(10, len(stream) - 80, 150)]
    packets = [syn(), syn_ack()] + [segment(o, d) for o, d in retransmitted + overlapping]
    path = write_ether(tmp_path / "scrambled.pcap", packets)
    collector = StreamCollector()
    with CaptureReader(path) as reader:
        for ts, packet in reader.ip_packets():
            collector.feed(ts, packet)
    (conn,) = collector.finish().tcp
    assert conn.client_data == stream
    assert not conn.client_gap and not conn.client_truncated
    result = only_tcp(analyze_capture(path))
    assert result.hello.ja4 == EXPECTED_JA4
    assert result.hello.hello.raw == HELLO


def test_overlapping_conflicting_bytes_first_copy_wins(tmp_path: Path) -> None:
    stream = records(HELLO)
    conflicting = b"\xee" * 100 + stream[200:300]  # covers 100..300; its first half disagrees
    packets = [syn(), segment(0, stream[:200]), segment(100, conflicting), segment(300, stream[300:])]
    result = only_tcp(analyze_capture(write_ether(tmp_path / "overlap.pcap", packets)))
    assert result.hello.hello.raw == HELLO  # last-wins would have put 0xee into the hello
    # The same at the buffer level, with the conflicting copy arriving first this time.
    buffer = StreamBuffer(0, 10_000)
    buffer.add(100, conflicting)
    buffer.add(0, stream[:300])
    data, gap = buffer.contiguous_from(0)
    assert data == stream[:100] + conflicting and not gap


def test_sequence_numbers_wrapping_around(tmp_path: Path) -> None:
    isn = 2**32 - 50  # the hello crosses the 32-bit wrap
    stream = records(HELLO)
    packets = [syn(isn=isn), syn_ack(isn=isn)]
    offsets = list(range(0, len(stream), 30))
    for offset in reversed(offsets):
        packets.append(segment(offset, stream[offset : offset + 30], isn=isn))
    result = only_tcp(analyze_capture(write_ether(tmp_path / "wrap.pcap", packets)))
    assert result.hello.ja4 == EXPECTED_JA4


def test_without_syn_the_client_is_the_side_talking_to_the_lower_port(tmp_path: Path) -> None:
    stream = records(HELLO)
    # The capture starts with the server's answer, then the client's second segment.
    packets = [server_segment(0, b"\x16\x03\x03\x00\x01\x02"), segment(200, stream[200:]), segment(0, stream[:200])]
    result = only_tcp(analyze_capture(write_ether(tmp_path / "nosyn.pcap", packets)))
    assert (result.src, result.sport, result.dst, result.dport) == (*CLIENT, *SERVER)
    assert result.client_by == "port"
    assert result.ja4t is None
    assert result.hello.ja4 == EXPECTED_JA4


def test_port_reuse_starts_a_new_connection(tmp_path: Path) -> None:
    first = connection(records(HELLO), isn=1000)
    fin = segment(len(records(HELLO)), b"", flags="FA")
    other_hello = client_hello(sni=b"second.example")
    second = connection(records(other_hello), isn=777_777)
    result = analyze_capture(write_ether(tmp_path / "reuse.pcap", first + [fin] + second))
    assert [c.hello.sni for c in result.connections] == ["reassembly.example", "second.example"]


def test_retransmitted_syn_keeps_the_first(tmp_path: Path) -> None:
    later = ip_layer(*[CLIENT[0], SERVER[0]]) / TCP(sport=CLIENT[1], dport=SERVER[1], flags="S", seq=1000, window=1024)
    packets = [syn(), later, syn_ack(), segment(0, records(HELLO))]
    result = only_tcp(analyze_capture(write_ether(tmp_path / "syn-again.pcap", packets)))
    assert result.ja4t == EXPECTED_JA4T


def test_memory_cap_per_direction(tmp_path: Path) -> None:
    stream = records(HELLO) + bytes(5000)
    packets = connection(stream, pieces=10)
    path = write_ether(tmp_path / "big.pcap", packets)
    collector = StreamCollector(client_cap=2000)
    with CaptureReader(path) as reader:
        for ts, packet in reader.ip_packets():
            collector.feed(ts, packet)
    (conn,) = collector.finish().tcp
    assert conn.client_data == stream[:2000]
    assert conn.client_truncated


def test_gap_stops_the_contiguous_stream(tmp_path: Path) -> None:
    stream = records(HELLO)
    packets = [syn(), segment(0, stream[:100]), segment(150, stream[150:])]
    result = only_tcp(analyze_capture(write_ether(tmp_path / "gap.pcap", packets)))
    assert result.tls == []
    assert any("incomplete" in e for e in result.errors)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.randoms(use_true_random=False), st.integers(1, 400), st.integers(0, 20))
def test_reassembly_property(data: bytes, rng, max_piece: int, duplicates: int) -> None:
    """Any cut, order and duplication of a byte string reassembles to the same string."""
    pieces, offset = [], 0
    while offset < len(data):
        size = rng.randint(1, max_piece)
        pieces.append((offset, data[offset : offset + size]))
        offset += size
    pieces += [rng.choice(pieces) for _ in range(duplicates)]
    # overlapping copies of correct bytes
    for _ in range(duplicates):
        start = rng.randrange(len(data))
        pieces.append((start, data[start : start + rng.randint(1, max_piece)]))
    rng.shuffle(pieces)
    buffer = StreamBuffer(0, 1 << 20)
    for piece_offset, piece in pieces:
        buffer.add(piece_offset, piece)
    assert buffer.contiguous_from(0) == (data, False)
    assert buffer.stored == len(data)


# --------------------------------------------------------------------------- analysis


def _request(method: str, headers: list[tuple[str, str]], body: bytes = b"", target: str = "/") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode() + body


def test_http1_requests_with_bodies(tmp_path: Path) -> None:
    first = [("Host", "a.example"), ("User-Agent", "t/1"), ("Content-Length", "11"), ("Cookie", "b=2; a=1")]
    second = [("host", "a.example"), ("Transfer-Encoding", "chunked"), ("Accept-Language", "de-CH,de;q=0.9")]
    third = [("Host", "a.example"), ("Referer", "http://a.example/"), ("X-Custom", "1")]
    stream = _request("POST", first, b"hello=world") + _request("PUT", second, b"5\r\nhello\r\n0\r\n\r\n")
    stream += _request("GET", third)
    result = only_tcp(analyze_capture(write_ether(
        tmp_path / "h1.pcap", connection(stream, pieces=5, server=("10.0.0.2", 80)))))
    assert [r.method for r in result.http] == ["POST", "PUT", "GET"]
    assert [r.headers for r in result.http] == [[k for k, _ in h] for h in (first, second, third)]
    for request, headers in zip(result.http, (first, second, third), strict=True):
        assert request.ja4h == http_fp.ja4h(request.method, "HTTP/1.1", headers)
    assert result.http[0].ja4h.startswith("po11cn03")  # POST, 1.1, cookie, no referer, 3 headers (Cookie not counted)
    assert result.http[2].ja4h.startswith("ge11nr02")  # Referer not counted
    assert result.errors == []


def test_http1_bare_lf_is_read_leniently(tmp_path: Path) -> None:
    stream = b"GET / HTTP/1.0\nUser-Agent:\n\n"
    result = only_tcp(analyze_capture(write_ether(tmp_path / "lf.pcap", connection(stream))))
    assert [r.headers for r in result.http] == [["User-Agent"]]
    assert result.http[0].ja4h.startswith("ge10nn01")
    assert lenient_request_head(b"GET / HTTP/1.1\r\nA: b\r\n") is None  # not finished


def _h2_client_bytes() -> bytes:
    import hpack
    from hyperframe.frame import (
        HeadersFrame,
        PriorityFrame,
        SettingsFrame,
        WindowUpdateFrame,
    )

    settings_frame = SettingsFrame(0)
    settings_frame.settings = {1: 65536, 2: 0, 4: 6291456, 6: 262144}
    window = WindowUpdateFrame(0)
    window.window_increment = 15663105
    encoder = hpack.Encoder()
    out = PREFACE + settings_frame.serialize() + window.serialize()
    priority = PriorityFrame(3)
    priority.depends_on, priority.stream_weight, priority.exclusive = 0, 200, False
    out += priority.serialize()
    for stream_id, path in ((1, "/"), (5, "/style.css")):
        headers = [(":method", "GET"), (":authority", "h2.example"), (":scheme", "http"), (":path", path),
                   ("user-agent", "t/1"), ("accept-language", "en-US"), ("cookie", "a=1")]
        frame = HeadersFrame(stream_id)
        frame.data = encoder.encode(headers)
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        out += frame.serialize()
    return out


def test_http2_prior_knowledge(tmp_path: Path) -> None:
    result = only_tcp(analyze_capture(write_ether(
        tmp_path / "h2c.pcap", connection(_h2_client_bytes(), pieces=3, server=("10.0.0.2", 80)))))
    # SETTINGS in order | WINDOW_UPDATE | PRIORITY stream:exclusive:depends:weight(+1) | m,a,s,p
    assert result.akamai == "1:65536;2:0;4:6291456;6:262144|15663105|3:0:0:201|m,a,s,p"
    assert [r.headers[:5] for r in result.http] == [[":method", ":authority", ":scheme", ":path", "user-agent"]] * 2
    assert [r.version for r in result.http] == ["HTTP/2", "HTTP/2"]
    assert result.http[0].ja4h.startswith("ge20cn02enus")


@pytest.mark.parametrize(
    "prefix, kind",
    [
        (b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\nUser-Agent: t\r\n\r\n", "http-connect"),
        (b"\x04\x01\x01\xbb\xc0\x00\x02\x07user\x00", "socks4"),
        (b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00tunnel.example\x00", "socks4a"),
        (b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0etunnel.example\x01\xbb", "socks5"),
        (b"\x05\x02\x00\x02" + b"\x01\x04user\x04pass" + b"\x05\x01\x00\x01\xc0\x00\x02\x07\x01\xbb", "socks5"),
        (b"\x05\x01\x00" + b"\x05\x01\x00\x04" + bytes(16) + b"\x01\xbb", "socks5"),
    ],
    ids=["connect", "socks4", "socks4a", "socks5-domain", "socks5-auth", "socks5-ipv6"],
)
def test_hello_after_a_tunnel_handshake(tmp_path: Path, prefix: bytes, kind: str) -> None:
    stream = prefix + records(HELLO, [200])
    result = only_tcp(analyze_capture(write_ether(
        tmp_path / f"{kind}.pcap", connection(stream, pieces=4, server=("10.0.0.2", 1080)))))
    assert result.tunnel == kind
    assert result.hello.ja4 == EXPECTED_JA4
    assert [r.method for r in result.http] == (["CONNECT"] if kind == "http-connect" else [])


def test_second_hello_after_hello_retry_request(tmp_path: Path) -> None:
    second_hello = client_hello(sni=b"reassembly.example", alpn=b"h2", padding=10)
    stream = records(HELLO) + b"\x14\x03\x03\x00\x01\x01" + records(second_hello) + b"\x17\x03\x03\x00\x05" + bytes(5)
    result = only_tcp(analyze_capture(write_ether(tmp_path / "hrr.pcap", connection(stream, pieces=3))))
    assert [t.hello.raw for t in result.tls] == [HELLO, second_hello]


def test_invalid_stream_records_error_and_other_connections_survive(tmp_path: Path) -> None:
    bad = b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"  # a handshake record holding a ServerHello
    packets = connection(bad, client=("10.0.0.3", 40003)) + connection(records(HELLO))
    result = analyze_capture(write_ether(tmp_path / "bad.pcap", packets))
    first, second = result.connections
    assert first.tls == [] and first.errors and "tls" in first.errors[0]
    assert second.hello.ja4 == EXPECTED_JA4 and second.errors == []


def test_quic_initial_in_a_capture(tmp_path: Path) -> None:
    hello = client_hello(sni=b"quic.example", alpn=b"h3", padding=900)
    datagrams = [
        protect(crypto_frame(600, hello[600:]) + bytes(50), packet_number=1),
        protect(crypto_frame(0, hello[:600]), packet_number=0),
    ]
    packets = [IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=50000, dport=443) / d for d in datagrams]
    # DNS: not QUIC
    packets.append(IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=50001, dport=53) / b"\x12\x34\x01\x00")
    result = analyze_capture(write_ether(tmp_path / "quic.pcap", packets))
    (flow,) = result.connections
    assert flow.transport == "udp"
    assert (flow.src, flow.sport, flow.dst, flow.dport) == ("10.0.0.1", 50000, "10.0.0.2", 443)
    assert flow.hello.ja4 == tls_fp.ja4(parse_client_hello(hello), "q")
    assert flow.hello.ja4.startswith("q13d")
    assert flow.hello.sni == "quic.example"


def test_quic_damaged_initial_is_an_error_on_the_flow(tmp_path: Path) -> None:
    datagram = bytearray(protect(crypto_frame(0, client_hello())))
    datagram[-5] ^= 0xFF
    packets = [IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=50000, dport=443) / bytes(datagram)]
    (flow,) = analyze_capture(write_ether(tmp_path / "quic-bad.pcap", packets)).connections
    assert flow.tls == [] and "authentication" in flow.errors[0]


def _tls13_protect(secret: bytes, seq: int, content: bytes, content_type: int) -> bytes:
    key = quic.hkdf_expand_label(secret, "key", b"", 16)
    iv = quic.hkdf_expand_label(secret, "iv", b"", 12)
    inner = content + bytes([content_type]) + bytes(3)  # three bytes of padding
    header = b"\x17\x03\x03" + struct.pack("!H", len(inner) + 16)
    nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
    return header + AESGCM(key).encrypt(nonce, inner, header)


def test_tls13_application_data_decrypted_with_a_keylog(tmp_path: Path) -> None:
    """RFC 8446 record protection done here; the analysis must find the HTTP/1 request inside."""
    handshake_secret, traffic_secret = bytes(range(32)), bytes(range(32, 64))
    request = _request("GET", [("Host", "secret.example"), ("User-Agent", "t/1"), ("Accept", "*/*")])
    finished = b"\x14\x00\x00\x20" + bytes(32)
    stream = records(HELLO) + b"\x14\x03\x03\x00\x01\x01"
    stream += _tls13_protect(handshake_secret, 0, finished, 22)
    stream += _tls13_protect(traffic_secret, 0, request[:20], 23) + _tls13_protect(traffic_secret, 1, request[20:], 23)
    server_hello_body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00" + b"\x00\x00"
    server_hello = b"\x02" + len(server_hello_body).to_bytes(3, "big") + server_hello_body
    server_stream = b"\x16\x03\x03" + struct.pack("!H", len(server_hello)) + server_hello
    path = write_ether(tmp_path / "tls13.pcap", connection(stream, pieces=4, server_data=server_stream))
    random_hex = parse_client_hello(HELLO).random.hex()
    keylog = (
        f"# comment\nCLIENT_HANDSHAKE_TRAFFIC_SECRET {random_hex} {handshake_secret.hex()}\n"
        f"CLIENT_TRAFFIC_SECRET_0 {random_hex} {traffic_secret.hex()}\n"
    ).encode()
    plain = only_tcp(analyze_capture(path))
    assert plain.http == [] and not plain.decrypted
    result = only_tcp(analyze_capture(path, keylog=keylog))
    assert result.decrypted
    assert [r.headers for r in result.http] == [["Host", "User-Agent", "Accept"]]
    keylog_path = tmp_path / "keys.log"
    keylog_path.write_bytes(keylog)
    cli = CliRunner().invoke(cli_main, ["fingerprint", str(path), "--json", "--keylog", str(keylog_path)])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)[0]["http"] == [
        {"ja4h": result.http[0].ja4h, "headers": ["Host", "User-Agent", "Accept"]}]


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", VECTOR_NAMES or ["tls-alpn-h2.pcap"])
def test_cli_json_has_exactly_the_documented_keys(name: str) -> None:
    result = CliRunner().invoke(cli_main, ["fingerprint", str(vector(name)), "--json"])
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)
    assert entries, name
    for entry in entries:
        assert list(entry) == list(JSON_KEYS)
        assert set(entry) == {
            "src", "dst", "sport", "dport", "ja4t", "p0f", "sni", "alpn", "ja3", "ja3_full", "ja3n",
            "ja4", "ja4_r", "ja4_o", "ja4_ro", "http", "akamai",
        }
        assert entry["http"] is None or all(set(r) == {"ja4h", "headers"} for r in entry["http"])


def test_cli_json_values_for_a_known_capture() -> None:
    result = CliRunner().invoke(cli_main, ["fingerprint", str(vector("https-connect.pcap")), "--json"])
    (entry,) = json.loads(result.stdout)
    # FoxIO's published values for this capture (expected-rust/https-connect.pcap.snap)
    assert entry["ja4"] == "t12i860500_e18388e7f3a3_a1e935682795"
    assert entry["ja4t"] == "29200_2-1-1-4-1-3_1460_7"
    assert entry["http"] == [{"ja4h": "co10nn010000_b8bcd45ac095_000000000000_000000000000", "headers": ["User-Agent"]}]
    assert (entry["src"], entry["sport"], entry["dst"], entry["dport"]) == ("10.11.12.13", 54723, "10.9.8.7", 8080)
    assert entry["sni"] is None and entry["akamai"] is None


def test_cli_table_fits_100_columns() -> None:
    result = CliRunner().invoke(cli_main, ["fingerprint", str(vector("tls-alpn-h2.pcap"))], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.stderr
    assert "t12d4605h2_85626a9a5f7f_aaf95bb78ec9" in result.stdout
    assert "www.cloudflare.com" in result.stdout
    assert "65535_2-1-3-1-1-8-4-0-0_1346_6" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_cli_truncated_capture_prints_what_it_read_then_fails(tmp_path: Path, as_json: bool) -> None:
    data = vector("tls-handshake.pcapng").read_bytes()
    path = tmp_path / "truncated.pcapng"
    path.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(cli_main, ["fingerprint", str(path)] + (["--json"] if as_json else []))
    assert result.exit_code == 1
    if as_json:
        entries = json.loads(result.stdout)
        assert any(e["ja4"] == "t13d1516h2_8daaf6152771_e5627efa2ab1" for e in entries)
    else:
        assert "t13d1516h2_8daaf6152771_e5627efa2ab1" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and "truncated" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("content", [None, b"not a capture at all\n", b""], ids=["missing", "text", "empty"])
def test_cli_not_a_capture_exits_2(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli_main, ["fingerprint", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    assert "Traceback" not in result.output


def test_cli_as_a_real_process() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "mirror.cli", "fingerprint", str(vector("socks-https-example.pcap")), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    entries = json.loads(process.stdout)
    assert [e["sni"] for e in entries] == ["www.example.com"] * 3
    assert [e["dport"] for e in entries] == [1080] * 3
    missing = subprocess.run(
        [sys.executable, "-m", "mirror.cli", "fingerprint", "/nonexistent/capture.pcap"],
        capture_output=True, text=True, timeout=120, check=False
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_cli_notes_unsupported_link_types(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "radiotap.pcap", [b"\x00" * 40], linktype=127)
    result = CliRunner().invoke(cli_main, ["fingerprint", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert "unsupported link type 127" in result.stderr


@pytest.mark.root
def test_live_capture_of_real_clients_matches_tshark(tmp_path: Path) -> None:
    """curl_cffi (Chrome) over TCP and QUIC, captured by tcpdump on 'any' (Linux cooked v2):
    our ClientHellos, per client port, must be the ones tshark dissects (its JA3 strings)."""
    import contextlib
    import shutil
    import socket
    import threading
    import time

    if os.geteuid() != 0:
        pytest.skip("tcpdump needs root")
    if not shutil.which("tcpdump") or not shutil.which("tshark"):
        pytest.fail("tcpdump and tshark are needed (Debian packages tcpdump, tshark)")
    from curl_cffi import requests as curl_requests

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp_port, udp_port = listener.getsockname()[1], udp.getsockname()[1]
    capture_path = tmp_path / "live.pcap"
    capture = subprocess.Popen(
        ["tcpdump", "-i", "any", "-U", "--immediate-mode", "-s", "0", "-w", str(capture_path),
         f"tcp port {tcp_port} or udp port {udp_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(2)
            with conn, contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    acceptor = threading.Thread(target=accept, daemon=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "listening on" not in (capture.stderr.readline() or "listening on"):
            pass
        time.sleep(0.3)
        acceptor.start()
        for options in ({"url": f"https://localhost:{tcp_port}/"},
                        {"url": f"https://localhost:{udp_port}/", "http_version": "v3only"}):
            try:
                curl_requests.get(timeout=2, impersonate="chrome", **options)
            except Exception:  # noqa: BLE001, S110 -- nobody answers: the client gives up, as intended
                pass
        time.sleep(0.5)
    finally:
        stop.set()
        capture.terminate()
        capture.wait(10)
        listener.close()
        udp.close()
    tshark = subprocess.run(
        ["tshark", "-r", str(capture_path), "-d", f"tcp.port=={tcp_port},tls", "-d", f"udp.port=={udp_port},quic",
         "-Y", "tls.handshake.type == 1", "-T", "fields", "-E", "separator=|",
         "-e", "tcp.srcport", "-e", "udp.srcport", "-e", "tls.handshake.ja3_full",
         "-e", "tls.handshake.extensions_server_name"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    theirs = {}
    for line in tshark.stdout.splitlines():
        tcp_src, udp_src, ja3_full, sni = line.split("|")
        theirs.setdefault(("tcp", int(tcp_src)) if tcp_src else ("udp", int(udp_src)), (ja3_full, sni))
    result = analyze_capture(capture_path)
    ours = {(c.transport, c.sport): (c.hello.ja3_full, c.hello.sni) for c in result.connections if c.hello}
    assert {kind for kind, _ in theirs} == {"tcp", "udp"}, tshark.stdout
    assert ours == theirs
    assert all(c.hello.ja4.startswith("q") for c in result.connections if c.transport == "udp" and c.hello)
