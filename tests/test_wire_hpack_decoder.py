"""Tests for mirror.wire.hpack_decoder: RFC 7541's examples, agreement with the ``hpack``
package's encoder on generated header lists, the limits, and the caches never changing a result."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.wire import hpack_decoder
from mirror.wire.errors import WireError
from mirror.wire.hpack_decoder import HpackDecoder, huffman_decode

# RFC 7541 Appendix C.4: three requests with Huffman coding, one decoder (dynamic table kept).
C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff",
     [(":method", "GET"), (":scheme", "http"), (":path", "/"),
      (":authority", "www.example.com")]),
    ("828684be5886a8eb10649cbf",
     [(":method", "GET"), (":scheme", "http"), (":path", "/"),
      (":authority", "www.example.com"), ("cache-control", "no-cache")]),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
     [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
      (":authority", "www.example.com"), ("custom-key", "custom-value")]),
]


def test_rfc7541_c4_requests_with_huffman():
    decoder = HpackDecoder()
    for block, headers in C4:
        assert decoder.decode(bytes.fromhex(block)) == headers
    assert decoder.dynamic_table == [("custom-key", "custom-value"),
                                     ("cache-control", "no-cache"),
                                     (":authority", "www.example.com")]


def test_rfc7541_c6_responses_evict_with_a_256_byte_table():
    # C.6 encodes with SETTINGS_HEADER_TABLE_SIZE 256: entries are evicted as new ones come
    encoder = hpack.Encoder()
    encoder.header_table_size = 256
    decoder = HpackDecoder(max_table_size=256)
    responses = [
        [(":status", "302"), ("cache-control", "private"),
         ("date", "Mon, 21 Oct 2013 20:13:21 GMT"), ("location", "https://www.example.com")],
        [(":status", "307"), ("cache-control", "private"),
         ("date", "Mon, 21 Oct 2013 20:13:21 GMT"), ("location", "https://www.example.com")],
        [(":status", "200"), ("cache-control", "private"),
         ("date", "Mon, 21 Oct 2013 20:13:22 GMT"), ("location", "https://www.example.com"),
         ("content-encoding", "gzip"),
         ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")],
    ]
    for headers in responses:
        block = encoder.encode([(n.encode(), v.encode()) for n, v in headers])
        assert decoder.decode(block) == headers
    assert sum(len(n) + len(v) + 32 for n, v in decoder.dynamic_table) <= 256
    assert decoder.dynamic_table[0][0] == "set-cookie"


FIELD = st.tuples(
    st.sampled_from([b":path", b"cookie", b"user-agent", b"x-custom", b"date", b"x" * 70, b""]),
    st.binary(max_size=80),
    st.sampled_from(["plain", "plain", "never"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.lists(FIELD, max_size=8), max_size=6),
       table_size=st.sampled_from([0, 100, 256, 4096]), huffman=st.booleans())
def test_agrees_with_the_hpack_encoder(blocks, table_size, huffman):
    """Whatever hpack's encoder makes (indexed, literal with and without indexing, never
    indexed, Huffman or not, a table size update, evictions), decodes to what it was given."""
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size          # sent as a size update in the next block
    decoder = HpackDecoder(max_header_list_size=1 << 20)
    for fields in blocks:
        tuples = [hpack.NeverIndexedHeaderTuple(n, v) if how == "never" else (n, v)
                  for n, v, how in fields]
        block = encoder.encode(tuples, huffman=huffman)
        assert decoder.decode(block) == [(n.decode("latin-1"), v.decode("latin-1"))
                                         for n, v, _ in fields]
        assert decoder.table_size == table_size


@given(st.binary(max_size=64))
def test_huffman_round_trip(data):
    encoded = hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES,
        hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(data)
    assert huffman_decode(encoded) == data


@pytest.mark.parametrize("encoded", [
    bytes.fromhex("ffffffff"),        # 30 one-bits then more: EOS
    bytes.fromhex("18"),              # "a" (00011) then 3 padding bits that are not all ones
    bytes.fromhex("1fff"),            # "a" then 11 one-bits: more than 7 bits of padding
])
def test_bad_huffman_is_refused(encoded):
    with pytest.raises(WireError, match="Huffman"):
        huffman_decode(encoded)


BAD_BLOCKS = {
    "index 0": b"\x80",
    "index past the tables": b"\xbe",
    "index far past the tables": b"\xbf\x00",
    "integer that never ends": b"\xff" + b"\xff" * 6,
    "integer cut short": b"\xff\x80",
    "string past the block": b"\x40\x05ab",
    "name string missing": b"\x40",
    "value string missing": b"\x44",
    "size update after a field": b"\x82\x20",
    "size update above ours": b"\x3f\xe2\x1f",
    "Huffman EOS in a value": b"\x04\x84\xff\xff\xff\xff",
}


@pytest.mark.parametrize("block", BAD_BLOCKS.values(), ids=BAD_BLOCKS.keys())
def test_bad_blocks_raise_wire_error(block):
    with pytest.raises(WireError, match="^http2: HPACK: "):
        HpackDecoder().decode(block)


def test_size_updates_at_the_start_evict_and_bound_later_entries():
    decoder = HpackDecoder()
    decoder.decode(b"\x40\x01a\x01b")                   # (a, b) indexed: 34 bytes
    assert decoder.dynamic_table == [("a", "b")]
    assert decoder.decode(b"\x20\x3f\x01") == []        # size 0, then back to 32
    assert decoder.dynamic_table == [] and decoder.table_size == 32
    decoder.decode(b"\x40\x01a\x01b")                   # 34 > 32: not kept (RFC 7541 §4.4)
    assert decoder.dynamic_table == []


@given(st.binary(max_size=200))
def test_random_blocks_only_raise_wire_error(block):
    try:
        HpackDecoder().decode(block)
    except WireError:
        pass


def test_header_list_limit_counts_fields_as_they_are_decoded():
    # the bomb: one 4000-byte entry indexed, then referenced 100 times in 100 bytes
    encoder = hpack.Encoder()
    block = encoder.encode([(b"x-bomb", b"v" * 4000)]) + bytes([0x80 | 62]) * 100
    with pytest.raises(WireError, match="header list larger than 65536"):
        HpackDecoder().decode(block)
    assert len(HpackDecoder(max_header_list_size=10**6).decode(block)) == 101


def test_a_cached_block_still_meets_each_decoders_limit():
    """A block that touches no dynamic table is decoded once and then looked up: the lookup
    applies the header list limit of the decoder that asks."""
    block = _literal(b"x-large", b"q" * 300, huffman=False) * 3    # 1 017 bytes decoded
    assert HpackDecoder().decode(block) == [("x-large", "q" * 300)] * 3
    assert block in hpack_decoder._block_cache
    with pytest.raises(WireError, match="header list larger than 1000"):
        HpackDecoder(max_header_list_size=1000).decode(block)


def test_a_cached_block_adds_its_entries_to_each_decoders_table():
    """nginx sends its response fields as literals with incremental indexing: such a block is
    cached with what it adds to the table, and a decoder that finds it in the cache adds the
    same entries as one that decoded it."""
    block = b"\x88" + _literal(b"x-served-by", b"origin-7", huffman=False)
    block = block[:1] + b"\x40" + block[2:]            # the literal: with incremental indexing
    first, second = HpackDecoder(), HpackDecoder()
    assert first.decode(block) == [(":status", "200"), ("x-served-by", "origin-7")]
    assert block in hpack_decoder._block_cache
    assert second.decode(block) == [(":status", "200"), ("x-served-by", "origin-7")]
    assert second.dynamic_table == first.dynamic_table == [("x-served-by", "origin-7")]
    assert second.decode(b"\xbe") == [("x-served-by", "origin-7")]


def test_blocks_that_read_the_dynamic_table_are_not_cached():
    decoder = HpackDecoder()
    decoder.decode(b"\x40\x01a\x01b")                   # (a, b) at index 62
    assert decoder.decode(b"\xbe") == [("a", "b")]
    assert b"\xbe" not in hpack_decoder._block_cache
    assert decoder.decode(b"\x7e\x01c") == [("a", "c")]  # its name from index 62
    assert b"\x7e\x01c" not in hpack_decoder._block_cache
    with pytest.raises(WireError):                      # another connection: empty table
        HpackDecoder().decode(b"\xbe")
    assert decoder.decode(b"\x3f\xe1\x1f") == []         # a size update (to 4096) is not cached
    assert b"\x3f\xe1\x1f" not in hpack_decoder._block_cache


def test_caches_stay_bounded():
    decoder = HpackDecoder()
    for i in range(hpack_decoder._BLOCKS_MAX_ENTRIES * 2 + 10):
        block = _literal(b"x", _huffman(str(i).encode()), huffman=True)
        assert decoder.decode(block) == [("x", str(i))]
    assert 0 < len(hpack_decoder._block_cache) <= hpack_decoder._BLOCKS_MAX_ENTRIES
    assert 0 < len(hpack_decoder._huffman_cache) <= hpack_decoder._CACHE_MAX_ENTRIES
    long_string = _huffman(b"z" * 600)                  # longer than a kept string
    long_block = _literal(b"y", long_string, huffman=True) * 2   # longer than a kept block
    assert decoder.decode(long_block) == [("y", "z" * 600)] * 2
    assert long_block not in hpack_decoder._block_cache
    assert long_string not in hpack_decoder._huffman_cache


def _huffman(data: bytes) -> bytes:
    return hpack.huffman.HuffmanEncoder(hpack.huffman_constants.REQUEST_CODES,
                                        hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(data)


def _literal(name: bytes, value: bytes, *, huffman: bool) -> bytes:
    """A literal field without indexing, its name and value given (RFC 7541 §6.2.2)."""
    return b"\x00" + _string(name, False) + _string(value, huffman)


def _string(data: bytes, huffman: bool) -> bytes:
    flag = 0x80 if huffman else 0
    if len(data) < 0x7F:
        return bytes([flag | len(data)]) + data
    return bytes([flag | 0x7F]) + _integer_tail(len(data) - 0x7F) + data


def _integer_tail(rest: int) -> bytes:
    """The continuation bytes of an HPACK integer whose prefix was full (RFC 7541 §5.1)."""
    out = bytearray()
    while rest >= 0x80:
        out.append((rest & 0x7F) | 0x80)
        rest >>= 7
    out.append(rest)
    return bytes(out)
