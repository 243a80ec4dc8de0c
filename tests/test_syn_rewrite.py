"""The SYN rewriter on crafted packets: the client's layout lands on our SYN, checksums stay
valid (scapy recomputes them), and what the kernel relies on is kept."""

from __future__ import annotations

import pytest
from conftest import LINUX_OPTS, MACOS_OPTS, WINDOWS_OPTS
from fuzzing import FUZZ_SETTINGS
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import IP, TCP, IPv6, raw

from mirror.emit.syn_rewrite import rewrite_syn
from mirror.fingerprint.tcp import ja4t, p0f_signature
from mirror.wire.errors import WireError
from mirror.wire.http1_response import parse_response_head
from mirror.wire.tcp import parse_syn

OURS4 = raw(IP(src="198.19.2.1", dst="198.19.2.2", ttl=64, flags="DF", id=0)
            / TCP(sport=40000, dport=443, flags="S", seq=123456, window=64240, options=LINUX_OPTS))


def client4(options, ttl=64, window=64240, ip_id=4321):
    return parse_syn(raw(IP(src="198.18.1.2", dst="198.19.2.2", ttl=ttl, flags="DF", id=ip_id)
                         / TCP(sport=5555, dport=443, flags="S", window=window, options=options)))


def checksums_ok(packet: bytes) -> bool:
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    fresh = parsed.copy()
    del fresh[TCP].chksum
    if IP in fresh:
        del fresh[IP].chksum
    again = type(parsed)(raw(fresh))
    ok = again[TCP].chksum == parsed[TCP].chksum
    return ok and (IP not in parsed or again[IP].chksum == parsed[IP].chksum)


@pytest.mark.parametrize(("options", "ttl", "window"), [
    (MACOS_OPTS, 64, 65535), (LINUX_OPTS, 64, 64240), (WINDOWS_OPTS, 128, 64240)])
def test_the_clients_layout_lands_on_our_syn(options, ttl, window):
    client = client4(options, ttl, window)
    result = rewrite_syn(OURS4, client)
    ours, rewritten = parse_syn(OURS4), parse_syn(result.packet)
    assert checksums_ok(result.packet)
    assert rewritten.option_kinds == client.option_kinds
    assert rewritten.window == window and rewritten.ttl == ttl - 1
    assert rewritten.ip_id == client.ip_id and rewritten.df == client.df
    # what the kernel relies on: its sequence number, ports, timestamps and window scale
    assert (rewritten.seq, rewritten.sport) == (ours.seq, ours.sport)
    assert rewritten.wscale == ours.wscale
    if client.timestamps:
        assert rewritten.timestamps == ours.timestamps
    if client.wscale == ours.wscale:
        assert ja4t(rewritten) == ja4t(client)
        # olen, mss, window and scale, option layout (quirks differ: the seq is the kernel's)
        assert p0f_signature(rewritten).split(":")[2:6] == p0f_signature(client).split(":")[2:6]
    else:
        assert result.fidelity["wscale"].status == "approximated"


def test_options_the_kernel_did_not_send_are_never_added():
    ours = raw(IP(src="198.19.2.1", dst="198.19.2.2") / TCP(
        sport=40000, dport=443, flags="S", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]))
    result = rewrite_syn(ours, client4(MACOS_OPTS))
    rewritten = parse_syn(result.packet)
    assert rewritten.timestamps is None and not rewritten.sack_permitted
    assert result.fidelity["option_layout"].status == "approximated"
    assert "[8, 4]" in result.fidelity["option_layout"].detail
    assert checksums_ok(result.packet) and len(rewritten.options_raw) % 4 == 0


def test_ipv6_hop_limit_and_flow_label():
    ours = raw(IPv6(src="fd00:19:2::1", dst="fd00:19:2::2", hlim=64) / TCP(
        sport=40000, dport=443, flags="S", options=LINUX_OPTS))
    client = parse_syn(raw(IPv6(src="fd00:18:1::2", dst="fd00:19:2::2", hlim=50, fl=0xBEEF)
                           / TCP(sport=5555, dport=443, flags="S", options=WINDOWS_OPTS)))
    rewritten = parse_syn(rewrite_syn(ours, client).packet)
    assert (rewritten.ttl, rewritten.flow_label) == (49, 0xBEEF)
    assert rewritten.option_kinds == client.option_kinds


@FUZZ_SETTINGS
@given(st.lists(st.sampled_from(["MSS", "NOP", "WScale", "SAckOK", "Timestamp", "EOL"]),
                max_size=8), st.integers(1, 255), st.integers(0, 65535))
def test_any_client_layout_gives_a_valid_syn_or_a_wire_error(kinds, ttl, window):
    values = {"MSS": 1400, "NOP": None, "WScale": 5, "SAckOK": b"", "Timestamp": (7, 0),
              "EOL": None}
    try:
        client = client4([(k, values[k]) for k in kinds], ttl, window)
        result = rewrite_syn(OURS4, client)
    except WireError:
        return
    assert checksums_ok(result.packet)
    assert parse_syn(result.packet).window == window


@FUZZ_SETTINGS
@given(st.binary(max_size=200))
def test_response_heads_only_raise_wire_error(data):
    try:
        parse_response_head(b"HTTP/1.1 " + data)
        parse_response_head(data)
    except WireError:
        pass
