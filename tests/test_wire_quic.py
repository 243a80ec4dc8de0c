"""mirror.wire.quic: Initial keys, packet protection, CRYPTO reassembly, and robustness.

Packets are protected here by a small independent implementation of RFC 9001 section 5
(written from the RFC, using ``cryptography`` directly); the key schedule is checked against
the RFCs' published test vectors, and decryption of real captures against FoxIO's reference
output in test_golden_vectors.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quic_packets import (
    ACK_FRAME,
    PING_FRAME,
    RFC_DCID,
    client_hello,
    crypto_frame,
    initial_flight,
    protect,
    varint,
)

from mirror.wire import quic
from mirror.wire.errors import WireError
from mirror.wire.tls import parse_client_hello

# --------------------------------------------------------------------------- key schedule


def test_initial_keys_match_rfc9001_appendix_a1() -> None:
    client = quic.initial_keys(RFC_DCID, quic.QUIC_V1)
    assert client.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert client.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert client.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    server = quic.initial_keys(RFC_DCID, quic.QUIC_V1, server=True)
    assert server.key.hex() == "cf3a5331653c364c88f0f379b6067e37"
    assert server.iv.hex() == "0ac1493ca1905853b0bba03e"
    assert server.hp.hex() == "c206b8d9b9f0f37644430b490eeaa314"


def test_initial_keys_match_rfc9369_appendix_a1() -> None:
    client = quic.initial_keys(RFC_DCID, quic.QUIC_V2)
    assert client.key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert client.iv.hex() == "91f73e2351d8fa91660e909f"
    assert client.hp.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"


def test_unknown_version_has_no_keys() -> None:
    with pytest.raises(WireError) as info:
        quic.initial_keys(RFC_DCID, 0x1A2A3A4A)
    assert info.value.layer == "quic"


@pytest.mark.parametrize(
    "encoded, value",
    [(b"\x25", 37), (b"\x7b\xbd", 15293), (b"\x9d\x7f\x3e\x7d", 494878333),
     (bytes.fromhex("c2197c5eff14e88c"), 151288809941952652)],
)
def test_varint_examples_from_rfc9000_appendix_a1(encoded: bytes, value: int) -> None:
    assert quic.read_varint(encoded, 0) == (value, len(encoded))


# --------------------------------------------------------------------------- decryption and reassembly


@pytest.mark.parametrize("version", [quic.QUIC_V1, quic.QUIC_V2])
def test_hello_over_several_initials_out_of_order(version: int) -> None:
    hello = client_hello()
    assembler = quic.ClientHelloAssembler()
    datagrams = initial_flight(hello, version=version, pieces=4, reverse=True)
    results = [assembler.feed(d) for d in datagrams]
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert results[-1] == hello
    assert assembler.version == version and assembler.dcid == RFC_DCID
    assert parse_client_hello(results[-1]).sni == "quic.example"


def test_coalesced_packets_and_overlapping_crypto_frames() -> None:
    hello = client_hello(padding=300)
    first = protect(ACK_FRAME + crypto_frame(0, hello[:200]) + PING_FRAME, packet_number=0)
    # A Handshake packet coalesced after it (its contents are not ours to read) ...
    handshake = protect(b"\x01" * 30, packet_type="handshake", packet_number=0)
    # ... and an Initial that repeats bytes 100..200 with different content (first copy wins).
    tampered = bytearray(hello[100:])
    tampered[:100] = bytes(100)
    second = protect(crypto_frame(100, bytes(tampered)), packet_number=1)
    assembler = quic.ClientHelloAssembler()
    assert assembler.feed(first + handshake) is None
    assert assembler.feed(second) == hello
    assert assembler.packets == 2


def test_short_header_datagrams_are_skipped() -> None:
    hello = client_hello()
    assembler = quic.ClientHelloAssembler()
    assert assembler.feed(b"\x40" + bytes(40)) is None
    assert assembler.feed(protect(crypto_frame(0, hello))) == hello


def test_keys_follow_a_new_destination_connection_id() -> None:
    """After a Retry the client's Initials use keys from the new DCID."""
    hello = client_hello()
    first = protect(crypto_frame(0, hello[:50]), dcid=RFC_DCID)
    new_dcid = bytes.fromhex("0011223344556677")
    second = protect(crypto_frame(50, hello[50:]), dcid=new_dcid, token=b"retry-token", packet_number=1)
    assembler = quic.ClientHelloAssembler()
    assert assembler.feed(first) is None
    assert assembler.feed(second) == hello


def test_later_initials_keep_the_original_keys() -> None:
    """RFC 9001 5.2: keys come from the first DCID even when the client switched DCIDs."""
    hello = client_hello()
    first = protect(crypto_frame(0, hello[:50]), dcid=RFC_DCID)
    second = protect(crypto_frame(50, hello[50:]), dcid=bytes.fromhex("aabbccdd"), key_dcid=RFC_DCID, packet_number=1)
    assembler = quic.ClientHelloAssembler()
    assert assembler.feed(first) is None
    assert assembler.feed(second) == hello


def test_large_packet_numbers_decode() -> None:
    hello = client_hello()
    packets = [
        protect(crypto_frame(0, hello[:60]), packet_number=0x1FFFE, pn_len=4),
        protect(crypto_frame(60, hello[60:]), packet_number=0x1FFFF, pn_len=1),
    ]
    assembler = quic.ClientHelloAssembler()
    assert assembler.feed(packets[0]) is None
    assert assembler.feed(packets[1]) == hello


def test_damaged_packet_fails_authentication() -> None:
    datagram = bytearray(protect(crypto_frame(0, client_hello())))
    datagram[-20] ^= 0x01
    with pytest.raises(WireError) as info:
        quic.ClientHelloAssembler().feed(bytes(datagram))
    assert info.value.layer == "quic"
    assert "authentication" in str(info.value)


def test_first_crypto_message_must_be_a_client_hello() -> None:
    server_hello = b"\x02\x00\x00\x04abcd"
    with pytest.raises(WireError, match="not a ClientHello"):
        quic.ClientHelloAssembler().feed(protect(crypto_frame(0, server_hello)))


def test_frames_not_allowed_in_initial() -> None:
    stream_frame = b"\x08" + varint(0) + b"data"
    with pytest.raises(WireError, match="not allowed"):
        quic.ClientHelloAssembler().feed(protect(stream_frame))


def test_crypto_beyond_limit_is_refused() -> None:
    with pytest.raises(WireError, match="exceeds"):
        quic.ClientHelloAssembler().feed(protect(crypto_frame(quic.MAX_CRYPTO_STREAM, b"x")))


def test_length_overrunning_the_datagram() -> None:
    datagram = protect(crypto_frame(0, client_hello()))
    with pytest.raises(WireError, match="overruns"):
        quic.ClientHelloAssembler().feed(datagram[:-30])


def test_incomplete_hello_returns_none() -> None:
    hello = client_hello()
    assert quic.client_hello_from_datagrams([protect(crypto_frame(0, hello[:-1]))]) is None
    assert quic.client_hello_from_datagrams([protect(crypto_frame(0, hello))]) == hello


def test_looks_like_initial() -> None:
    assert quic.looks_like_initial(protect(crypto_frame(0, b"\x01")))
    assert quic.looks_like_initial(protect(crypto_frame(0, b"\x01"), version=quic.QUIC_V2))
    assert not quic.looks_like_initial(protect(b"\x01", packet_type="handshake"))
    assert not quic.looks_like_initial(b"\x16\x03\x01\x00\x10")
    assert not quic.looks_like_initial(b"")


def test_parse_frames_kinds() -> None:
    payload = ACK_FRAME + b"\x03" + varint(5) + varint(1) + varint(1) + varint(0) + varint(1) + varint(2)
    payload += varint(1) + varint(2) + varint(3) + PING_FRAME + crypto_frame(3, b"abc") + bytes(3)
    payload += b"\x1c" + varint(0x0A) + varint(0) + varint(2) + b"no"
    frames = quic.parse_frames(payload)
    kinds = [type(f).__name__ for f in frames]
    assert kinds == ["AckFrame", "AckFrame", "PingFrame", "CryptoFrame", "PaddingFrame", "ConnectionCloseFrame"]
    assert frames[1].ranges == [(0, 0), (1, 2)] and frames[1].ecn == (1, 2, 3)
    assert frames[3] == quic.CryptoFrame(3, b"abc")
    assert frames[4] == quic.PaddingFrame(3)
    assert frames[5].reason == b"no"


# --------------------------------------------------------------------------- robustness


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=1500), max_size=4))
def test_random_datagrams_only_raise_wire_error(datagrams: list[bytes]) -> None:
    assembler = quic.ClientHelloAssembler()
    for datagram in datagrams:
        try:
            assembler.feed(datagram)
        except WireError as error:
            assert error.layer == "quic"


_VALID = initial_flight(client_hello(padding=40), pieces=2, reverse=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 1),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 2000),
    st.sampled_from(["flip", "truncate", "insert", "header"]),
)
def test_mutated_initials_only_raise_wire_error(which: int, edits, cut: int, mode: str) -> None:
    datagram = bytearray(_VALID[which])
    if mode == "flip":
        for position, value in edits:
            datagram[position % len(datagram)] ^= value or 1
    elif mode == "truncate":
        del datagram[cut % len(datagram) :]
    elif mode == "insert":
        for position, value in edits:
            datagram.insert(position % (len(datagram) + 1), value)
    else:  # mutate only the unprotected long header (lengths, connection IDs, version)
        for position, value in edits:
            datagram[position % 30] = value
    assembler = quic.ClientHelloAssembler()
    try:
        for datagram_bytes in (_VALID[1 - which], bytes(datagram)):
            assembler.feed(datagram_bytes)
    except WireError as error:
        assert error.layer == "quic"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.lists(st.integers(0, 400), max_size=5))
def test_random_plaintext_frames_only_raise_wire_error(payload: bytes, offsets: list[int]) -> None:
    """Garbage that does authenticate (we encrypt it ourselves): the frame parser's turn."""
    assembler = quic.ClientHelloAssembler()
    try:
        assembler.feed(protect(payload))
        for offset in offsets:
            assembler.feed(protect(crypto_frame(offset, payload[:50]), packet_number=1 + offset))
    except WireError as error:
        assert error.layer == "quic"
