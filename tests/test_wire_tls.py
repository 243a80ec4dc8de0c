"""ClientHello parser: real hellos from real TLS stacks, record/segment splitting, rejection, fuzzing.

The independent judge for field values is scapy's TLS dissector, fed the same bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.wire.errors import WireError
from mirror.wire.tls import (
    EXT_ENCRYPTED_CLIENT_HELLO,
    EXT_KEY_SHARE,
    ClientHello,
    is_grease,
    is_grease_u8,
    looks_like_tls,
    parse_client_hello,
    read_client_hello,
)

FAMILIES = ("chrome", "firefox", "safari", "tor")


def reframe(message: bytes, size: int, version: int = 0x0301) -> bytes:
    """Split one handshake message over records of at most ``size`` bytes."""
    out = bytearray()
    for start in range(0, len(message), size):
        fragment = message[start : start + size]
        out += struct.pack("!BHH", 22, version, len(fragment)) + fragment
    return bytes(out)


def hello_message(stream: bytes) -> bytes:
    hello = read_client_hello(stream)
    assert hello is not None
    return hello.raw


@pytest.mark.parametrize("family", FAMILIES)
def test_fields_agree_with_scapy(real_hellos, family):
    from scapy.layers.tls.all import TLS

    stream = real_hellos[family]
    hello = read_client_hello(stream)
    assert isinstance(hello, ClientHello)
    assert hello.consumed == len(stream)
    theirs = TLS(stream).msg[0]
    assert hello.cipher_suites == list(theirs.ciphers)
    assert hello.extension_types == [e.type for e in theirs.ext]
    assert [e.data for e in hello.extensions] == [bytes(e)[4:] for e in theirs.ext]
    assert hello.session_id == theirs.sid
    assert hello.random == struct.pack("!I", theirs.gmt_unix_time) + theirs.random_bytes
    by_type = {e.type: e for e in theirs.ext}
    assert hello.supported_groups == list(by_type[10].groups)
    assert hello.signature_algorithms == list(by_type[13].sig_algs)
    assert hello.supported_versions == list(by_type[43].versions)
    assert hello.sni == by_type[0].servernames[0].servername.decode()
    assert hello.alpn == [p.protocol.decode() for p in by_type[16].protocols]
    assert hello.key_shares == [(k.group, len(k.key_exchange)) for k in by_type[EXT_KEY_SHARE].client_shares]
    if 45 in by_type:
        assert hello.psk_key_exchange_modes == list(by_type[45].kxmodes)
    else:
        assert hello.psk_key_exchange_modes == []


def test_typed_values_of_a_browser_hello(real_hellos):
    chrome = read_client_hello(real_hellos["chrome"])
    assert chrome.sni == "example.test"
    assert chrome.alpn == ["h2", "http/1.1"]
    assert chrome.compress_certificate  # brotli in every current Chrome
    assert chrome.alps == ["h2"]
    assert chrome.ech is not None and chrome.ech.ech_type == 0 and chrome.ech.payload_length > 0
    assert any(is_grease(t) for t in chrome.extension_types)
    assert any(is_grease(g) for g in chrome.supported_groups)
    assert chrome.has(18) and chrome.has(23) and chrome.has(65281)
    firefox = read_client_hello(real_hellos["firefox"])
    assert firefox.record_size_limit == 0x4001
    assert firefox.delegated_credentials
    assert firefox.status_request.status_type == 1
    assert not any(is_grease(t) for t in firefox.extension_types)


def test_a_second_connections_identical_extensions_are_not_parsed_again(real_hellos):
    """The extensions a client sends alike on every connection are parsed once: the second
    hello's are the first one's (immutable) objects; its key shares (and ECH), which differ
    per connection, are its own, read from its bytes."""
    first = read_client_hello(real_hellos["chrome"])
    share = first.ext(EXT_KEY_SHARE)
    start = first.raw.index(share.data)
    other = bytes(first.raw[:start]) + share.data[:-4] + bytes(b ^ 0xFF for b in share.data[-4:]) \
        + first.raw[start + len(share.data):]         # another key, as a new connection has
    second = parse_client_hello(other)
    for a, b in zip(first.extensions, second.extensions, strict=True):
        if a.type == EXT_KEY_SHARE:
            assert b is not a and b.data != a.data
        elif a.type == EXT_ENCRYPTED_CLIENT_HELLO:        # a payload per connection: not kept
            assert b == a
        else:
            assert b is a
    assert second.sni == first.sni and second.supported_groups == first.supported_groups


@pytest.mark.parametrize("family", FAMILIES)
def test_every_prefix_is_incomplete_not_invalid(real_hellos, family):
    stream = real_hellos[family]
    for cut in range(len(stream)):
        assert read_client_hello(stream[:cut]) is None, cut
    assert read_client_hello(stream) is not None


@pytest.mark.parametrize("size", [1, 2, 7, 100, 511, 16384])
def test_hello_split_over_many_records(real_hellos, size):
    message = hello_message(real_hellos["chrome"])
    stream = reframe(message, size)
    hello = read_client_hello(stream)
    assert hello.raw == message
    assert hello.consumed == len(stream)
    assert len(hello.record_lengths) == -(-len(message) // size)
    # and in one-byte TCP segments: every prefix of the many-record stream is "need more"
    if size in (1, 511):
        for cut in range(0, len(stream), 97):
            assert read_client_hello(stream[:cut]) is None


def test_bytes_after_the_hello_are_left_alone(real_hellos):
    stream = real_hellos["safari"]
    hello = read_client_hello(stream + b"\x14\x03\x03\x00\x01\x01")
    assert hello.consumed == len(stream)


def test_grease_recognition():
    assert [v for v in range(0x10000) if is_grease(v)] == [0x0A0A + 0x1010 * i for i in range(16)]
    assert [v for v in range(256) if is_grease_u8(v)] == [0x0B + 0x1F * i for i in range(8)]


def test_looks_like_tls():
    assert looks_like_tls(b"\x16\x03") is None
    assert looks_like_tls(b"\x16\x03\x01\x02\x00") is True
    assert looks_like_tls(b"GET / HTTP/1.1\r\n") is False
    assert looks_like_tls(b"\x05\x01\x00") is False


def _mutate(message: bytes, offset: int, value: bytes) -> bytes:
    return message[:offset] + value + message[offset + len(value):]


@pytest.mark.parametrize(
    "stream, reason",
    [
        (b"\x17\x03\x03\x00\x10" + b"\x00" * 16, "record type 23"),
        (b"\x16\x02\x00\x00\x10", "record version major 2"),
        (b"\x16\x03\x01\x00\x00", "record length 0"),
        (b"\x16\x03\x01\x40\x01", "record length 16385"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x26", "handshake type 2"),
        (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "exceeds the limit"),
        (b"GET / HTTP/1.1\r\n", "record type 71"),
    ],
)
def test_invalid_streams_raise_wire_error(stream, reason):
    with pytest.raises(WireError) as info:
        read_client_hello(stream)
    assert info.value.layer == "tls"


def test_lies_inside_the_hello_are_invalid(real_hellos):
    message = hello_message(real_hellos["firefox"])
    # cipher_suites length pointing past the end of the body
    sid_len = message[38]
    suites_at = 39 + sid_len
    with pytest.raises(WireError, match="vector of 65534 bytes"):
        parse_client_hello(_mutate(message, suites_at, b"\xff\xfe"))
    # a duplicated extension
    hello = parse_client_hello(message)
    first = hello.extensions[0]
    dup = struct.pack("!HH", first.type, len(first.data)) + first.data
    body = message[4:]
    ext_len_at = len(body) - sum(4 + len(e.data) for e in hello.extensions) - 2
    exts = body[ext_len_at + 2 :] + dup
    new_body = body[:ext_len_at] + struct.pack("!H", len(exts)) + exts
    duplicated = b"\x01" + len(new_body).to_bytes(3, "big") + new_body
    with pytest.raises(WireError, match="appears twice"):
        parse_client_hello(duplicated)
    # another handshake message in the same records after the hello
    with pytest.raises(WireError, match="another handshake message"):
        read_client_hello(reframe(message + b"\x0b\x00\x00\x00", 16384))


def test_oversized_hello_is_refused_before_it_arrives(real_hellos):
    message = hello_message(real_hellos["chrome"])
    with pytest.raises(WireError, match="exceeds the limit"):
        read_client_hello(reframe(message, 100)[:150], max_size=1024)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_wire_error(data):
    for candidate in (data, b"\x16\x03\x01" + data, b"\x16\x03\x01" + struct.pack("!H", len(data)) + data):
        try:
            read_client_hello(candidate)
        except WireError:
            pass
    try:
        parse_client_hello(b"\x01" + len(data).to_bytes(3, "big") + data)
    except WireError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_hellos_raise_only_wire_error(real_hellos, data):
    family = data.draw(st.sampled_from(FAMILIES))
    stream = bytearray(real_hellos[family])
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(stream) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            stream[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del stream[at : at + data.draw(st.integers(1, 40))]
        else:
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        hello = read_client_hello(bytes(stream))
    except WireError:
        return
    if hello is not None:
        from mirror.fingerprint.tls import tls_fingerprints

        tls_fingerprints(hello)  # fingerprints never fail on a hello the parser accepted
