"""Tests for mirror.wire.http2: the client side of an HTTP/2 connection, read from bytes."""

from __future__ import annotations

import itertools
import struct

import h2.config
import h2.connection
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.wire.errors import WireError
from mirror.wire.http2 import (
    PREFACE,
    Data,
    GoAway,
    H2ClientReader,
    Headers,
    Ping,
    Priority,
    RstStream,
    Settings,
    Unknown,
    WindowUpdate,
)

REQUEST = [
    (":method", "GET"),
    (":authority", "example.com"),
    (":scheme", "https"),
    (":path", "/index.html?q=1"),
    ("sec-ch-ua", '"Chromium";v="124"'),
    ("user-agent", "Mozilla/5.0 test"),
    ("accept", "*/*"),
    ("accept-language", "en-US,en;q=0.9"),
    ("cookie", "a=1"),
    ("cookie", "b=2"),
]


def b(headers):
    return [(n.encode(), v.encode()) for n, v in headers]


def h2_client(initial_values: dict[int, int] | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    if initial_values is not None:
        conn.local_settings = h2.settings.Settings(client=True, initial_values=initial_values)
    conn.initiate_connection()
    return conn


def feed_all(data: bytes, **kwargs) -> tuple[list, H2ClientReader]:
    reader = H2ClientReader(**kwargs)
    return reader.feed(data), reader


def feed_bytewise(data: bytes, **kwargs) -> tuple[list, H2ClientReader]:
    reader = H2ClientReader(**kwargs)
    events = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1])
    return events, reader


def settings_frame(entries: list[tuple[int, int]], *, ack: bool = False, stream: int = 0) -> bytes:
    payload = b"".join(struct.pack("!HL", ident, value) for ident, value in entries)
    return frame(0x4, 0x1 if ack else 0, stream, payload)


def frame(frame_type: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack("!L", len(payload))[1:]
        + bytes([frame_type, flags])
        + struct.pack("!L", stream)
        + payload
    )


def headers_block(headers, encoder: hpack.Encoder | None = None) -> bytes:
    return (encoder or hpack.Encoder()).encode(b(headers))


def headers_frame(stream: int, block: bytes, flags=("END_HEADERS", "END_STREAM"), **kw) -> bytes:
    f = HeadersFrame(stream, block, flags=list(flags), **kw)
    return f.serialize()


START = PREFACE + settings_frame([(1, 65536), (2, 0), (4, 6291456), (6, 262144)])


# ----------------------------------------------------------------------------- with h2


def test_h2_client_stream_is_recovered_exactly():
    chrome = {1: 65536, 2: 0, 4: 6291456, 6: 262144}
    conn = h2_client(chrome)
    conn.increment_flow_control_window(15663105)
    conn.send_headers(1, b(REQUEST), end_stream=True)
    data = conn.data_to_send()
    sent_settings = [(int(k), v) for k, v in conn.local_settings.items()]

    events, reader = feed_all(data)
    assert events == [
        Settings(sent_settings, ack=False),
        WindowUpdate(0, 15663105),
        Headers(1, REQUEST, end_stream=True, priority=None),
    ]
    fp = reader.fingerprint
    assert fp is not None
    assert fp.settings == sent_settings
    assert fp.window_update == 15663105
    assert fp.priority_frames == []
    assert fp.headers_priority is None
    assert fp.pseudo_header_order == [":method", ":authority", ":scheme", ":path"]
    assert fp.headers_stream_id == 1

    assert feed_bytewise(data)[0] == events


def test_h2_body_padding_priority_and_more_streams():
    conn = h2_client()
    conn.send_headers(1, b(REQUEST[:4]) + [(b"content-type", b"text/plain")], end_stream=False)
    conn.send_data(1, b"hello ", pad_length=7)
    conn.send_data(1, b"world", end_stream=True)
    conn.prioritize(3, weight=201, depends_on=0, exclusive=False)
    conn.send_headers(
        3,
        b(REQUEST[:4]),
        end_stream=True,
        priority_weight=42,
        priority_depends_on=1,
        priority_exclusive=True,
    )
    conn.ping(b"12345678")
    conn.reset_stream(1, error_code=8)
    data = conn.data_to_send()

    events, reader = feed_all(data)
    kinds = [type(e) for e in events]
    assert kinds == [Settings, Headers, Data, Data, Priority, Headers, Ping, RstStream]
    assert events[2] == Data(1, length=len(b"hello ") + 7 + 1, end_stream=False, data=b"hello ")
    assert events[3] == Data(1, length=5, end_stream=True, data=b"world")
    assert events[4] == Priority(3, depends_on=0, weight=200, exclusive=False)
    assert events[5].priority == Priority(3, depends_on=1, weight=41, exclusive=True)
    assert events[6] == Ping(b"12345678", ack=False)
    assert events[7] == RstStream(1, 8)
    # The fingerprint is fixed by the first request: the later PRIORITY frame is not in it.
    assert reader.fingerprint.priority_frames == []
    assert reader.fingerprint.window_update is None
    assert feed_bytewise(data)[0] == events


def test_h2_hpack_dynamic_table_across_requests():
    conn = h2_client()
    for stream in (1, 3, 5):
        conn.send_headers(stream, b(REQUEST), end_stream=True)
    events, _ = feed_all(conn.data_to_send())
    assert [e.headers for e in events if isinstance(e, Headers)] == [REQUEST] * 3


def test_h2_settings_ack_and_goaway():
    conn = h2_client()
    conn.send_headers(1, b(REQUEST), end_stream=True)
    data = conn.data_to_send() + settings_frame([], ack=True)
    data += GoAwayFrame(0, last_stream_id=0, error_code=0, additional_data=b"bye").serialize()
    events, _ = feed_all(data)
    assert events[-2:] == [Settings([], ack=True), GoAway(0, 0, b"bye")]


# ----------------------------------------------------------------------------- handcrafted


def test_grease_and_duplicate_settings_kept_in_wire_order():
    entries = [(0x0A0A, 7), (1, 65536), (2, 0), (1, 4096), (0xFAFA, 0xFFFFFFFF), (9, 1), (0x33, 5)]
    data = PREFACE + settings_frame(entries) + headers_frame(1, headers_block(REQUEST[:4]))
    events, reader = feed_all(data)
    assert events[0] == Settings(entries, ack=False)
    assert reader.fingerprint.settings == entries


def test_empty_settings_frame():
    data = PREFACE + settings_frame([]) + headers_frame(1, headers_block(REQUEST[:4]))
    events, reader = feed_all(data)
    assert events[0] == Settings([], ack=False)
    assert reader.fingerprint.settings == []


FIREFOX_PRIORITIES = [(3, 0, 200), (5, 0, 100), (7, 0, 0), (9, 7, 0), (11, 3, 0), (13, 0, 240)]


def firefox_like_stream() -> bytes:
    data = PREFACE + settings_frame([(1, 65536), (4, 131072), (5, 16384)])
    data += WindowUpdateFrame(0, window_increment=12517377).serialize()
    for stream, depends_on, weight in FIREFOX_PRIORITIES:
        data += PriorityFrame(stream, depends_on=depends_on, stream_weight=weight).serialize()
    block = headers_block(
        [(":method", "GET"), (":path", "/"), (":authority", "a.example"), (":scheme", "https")]
        + [("user-agent", "Mozilla/5.0 Firefox"), ("accept", "*/*")]
    )
    head = HeadersFrame(
        15,
        block[:5],
        flags=["PRIORITY", "PADDED", "END_STREAM"],
        depends_on=13,
        stream_weight=41,
        exclusive=False,
        pad_length=9,
    ).serialize()
    middle = ContinuationFrame(15, block[5:10]).serialize()
    last = ContinuationFrame(15, block[10:], flags=["END_HEADERS"]).serialize()
    data += head + middle + last
    # Frames after the first request do not change the fingerprint.
    data += WindowUpdateFrame(0, window_increment=5).serialize()
    data += PriorityFrame(17, depends_on=0, stream_weight=9).serialize()
    return data


def test_priority_frames_headers_priority_padding_and_continuation():
    data = firefox_like_stream()
    events, reader = feed_all(data)
    priorities = [e for e in events if isinstance(e, Priority)]
    assert priorities[:6] == [Priority(s, d, w, False) for s, d, w in FIREFOX_PRIORITIES]
    headers = [e for e in events if isinstance(e, Headers)]
    assert len(headers) == 1
    assert headers[0].stream_id == 15 and headers[0].end_stream
    assert headers[0].priority == Priority(15, 13, 41, False)
    assert [n for n, _ in headers[0].headers] == [
        ":method",
        ":path",
        ":authority",
        ":scheme",
        "user-agent",
        "accept",
    ]
    fp = reader.fingerprint
    assert fp.settings == [(1, 65536), (4, 131072), (5, 16384)]
    assert fp.window_update == 12517377
    assert fp.priority_frames == priorities[:6]
    assert fp.headers_priority == Priority(15, 13, 41, False)
    assert fp.pseudo_header_order == [":method", ":path", ":authority", ":scheme"]
    assert feed_bytewise(data)[0] == events


def test_fingerprint_needs_the_whole_first_header_block():
    data = firefox_like_stream()
    reader = H2ClientReader()
    cut = data.index(b"\x09\x04\x00\x00\x00\x0f")  # header of the last CONTINUATION
    reader.feed(data[:cut])
    assert reader.fingerprint is None
    reader.feed(data[cut:])
    assert reader.fingerprint is not None


def test_unknown_frame_types_are_reported():
    grease = frame(0xB, 0xFF, 0, b"\x01\x02")
    origin = frame(0xC, 0, 0, b"")
    data = START + grease + headers_frame(1, headers_block(REQUEST)) + origin
    events, reader = feed_all(data)
    assert events[1] == Unknown(0xB, 0xFF, 0, 2, b"\x01\x02")
    assert events[3] == Unknown(0xC, 0, 0, 0, b"")
    assert reader.fingerprint.pseudo_header_order[0] == ":method"


def test_trailers_and_connect():
    enc = hpack.Encoder()
    data = START + headers_frame(1, headers_block(REQUEST[:4], enc), flags=["END_HEADERS"])
    data += DataFrame(1, b"body").serialize()
    data += headers_frame(1, headers_block([("x-checksum", "1")], enc))
    data += headers_frame(
        3,
        headers_block([(":method", "CONNECT"), (":authority", "a.example:443")], enc),
        flags=["END_HEADERS"],
    )
    events, _ = feed_all(data)
    assert events[3] == Headers(1, [("x-checksum", "1")], True, None)
    assert events[4].headers[0] == (":method", "CONNECT")


def test_obs_text_values_round_trip_as_latin1():
    raw = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"x-v", b"caf\xe9")]
    data = START + headers_frame(1, hpack.Encoder().encode(raw))
    events, _ = feed_all(data)
    assert events[1].headers[3][1].encode("latin-1") == b"caf\xe9"


# ----------------------------------------------------------------------------- rejections


def rejected(data: bytes, **kwargs) -> None:
    with pytest.raises(WireError) as info:
        H2ClientReader(**kwargs).feed(data)
    assert info.value.layer == "http2"
    with pytest.raises(WireError):
        feed_bytewise(data, **kwargs)


def test_wrong_preface_rejected_at_the_first_differing_byte():
    with pytest.raises(WireError):
        H2ClientReader().feed(b"G")
    reader = H2ClientReader()
    assert reader.feed(PREFACE[:10]) == []
    with pytest.raises(WireError):
        reader.feed(b"X")
    rejected(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rejected(bytes.fromhex("160301020001"))


REQ = headers_block(REQUEST)

REJECTS = {
    "first frame not SETTINGS": PREFACE + WindowUpdateFrame(0, window_increment=1).serialize(),
    "first SETTINGS is an ACK": PREFACE + settings_frame([], ack=True),
    "SETTINGS not multiple of 6": PREFACE + frame(0x4, 0, 0, b"\x00\x01\x00\x00\x00"),
    "SETTINGS on a stream": PREFACE + settings_frame([(1, 1)], stream=1),
    "SETTINGS ACK with payload": START + settings_frame([(1, 1)], ack=True),
    "ENABLE_PUSH 2": PREFACE + settings_frame([(2, 2)]),
    "NO_RFC7540_PRIORITIES 2": PREFACE + settings_frame([(9, 2)]),
    "INITIAL_WINDOW_SIZE too big": PREFACE + settings_frame([(4, 1 << 31)]),
    "MAX_FRAME_SIZE too small": PREFACE + settings_frame([(5, 16383)]),
    "MAX_FRAME_SIZE too big": PREFACE + settings_frame([(5, 1 << 24)]),
    "CONTINUATION without HEADERS": START
    + ContinuationFrame(1, REQ, flags=["END_HEADERS"]).serialize(),
    "frame inside a header block": START
    + headers_frame(1, REQ[:4], flags=["END_STREAM"])
    + PingFrame(0, b"12345678").serialize(),
    "CONTINUATION on another stream": START
    + headers_frame(1, REQ[:4], flags=["END_STREAM"])
    + ContinuationFrame(3, REQ[4:], flags=["END_HEADERS"]).serialize(),
    "unknown frame inside a header block": START
    + headers_frame(1, REQ[:4], flags=["END_STREAM"])
    + frame(0xB, 0, 0, b""),
    "HPACK garbage": START + headers_frame(1, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
    "HPACK bad index": START + headers_frame(1, b"\xbf\x7f"),
    "HPACK table size update after a field": START + headers_frame(1, b"\x82\x3f\xe1\x1f"),
    "HPACK table size above ours": START + headers_frame(1, b"\x3f\xe1\x3f" + REQ),
    "HEADERS on an even stream": START + headers_frame(2, REQ),
    "HEADERS on stream 0": START + frame(0x1, 0x5, 0, REQ),
    "HEADERS padding too long": START + frame(0x1, 0x4 | 0x8, 1, b"\x05" + REQ[:4]),
    "HEADERS padding eats the priority": START
    + frame(0x1, 0x4 | 0x8 | 0x20, 1, b"\x03" + b"\x00\x00\x00\x00\x10" + b"\x00\x00"),
    "HEADERS priority too short": START + frame(0x1, 0x4 | 0x20, 1, b"\x00\x00"),
    "HEADERS depends on itself": START + frame(0x1, 0x5 | 0x20, 1, b"\x00\x00\x00\x01\x10" + REQ),
    "reused stream without END_STREAM": START
    + headers_frame(3, REQ)
    + headers_frame(1, headers_block(REQUEST), flags=["END_HEADERS"]),
    "PRIORITY depends on itself": START + frame(0x2, 0, 3, b"\x00\x00\x00\x03\x10"),
    "PRIORITY too long": START + frame(0x2, 0, 3, b"\x00\x00\x00\x00\x10\x00"),
    "PRIORITY too short": START + frame(0x2, 0, 3, b"\x00\x00\x00"),
    "PRIORITY on stream 0": START + frame(0x2, 0, 0, b"\x00\x00\x00\x01\x10"),
    "WINDOW_UPDATE of 0": START + frame(0x8, 0, 0, b"\x00\x00\x00\x00"),
    "WINDOW_UPDATE too short": START + frame(0x8, 0, 0, b"\x00\x00\x01"),
    "WINDOW_UPDATE on an idle stream": START + WindowUpdateFrame(1, window_increment=1).serialize(),
    "PUSH_PROMISE": START + frame(0x5, 0x4, 1, b"\x00\x00\x00\x02" + REQ),
    "DATA on an idle stream": START + DataFrame(1, b"x").serialize(),
    "DATA on stream 0": START + frame(0x0, 0, 0, b"x"),
    "DATA padding too long": START
    + headers_frame(1, REQ, flags=["END_HEADERS"])
    + frame(0x0, 0x8, 1, b"\x05abcd"),
    "RST_STREAM on an idle stream": START + RstStreamFrame(1, 0).serialize(),
    "PING wrong size": START + frame(0x6, 0, 0, b"1234"),
    "PING on a stream": START + frame(0x6, 0, 1, b"12345678"),
    "GOAWAY too short": START + frame(0x7, 0, 0, b"\x00\x00"),
    "uppercase field name": START
    + headers_frame(1, headers_block(REQUEST[:4] + [("User-Agent", "x")])),
    "space in field name": START
    + headers_frame(1, headers_block(REQUEST[:4] + [("user agent", "x")])),
    "empty field name": START + headers_frame(1, headers_block(REQUEST[:4] + [("", "x")])),
    "CR in value": START + headers_frame(1, headers_block(REQUEST[:4] + [("x", "a\rb")])),
    "LF in value": START + headers_frame(1, headers_block(REQUEST[:4] + [("x", "a\nb")])),
    "NUL in value": START + headers_frame(1, headers_block(REQUEST[:4] + [("x", "a\x00b")])),
    "pseudo after regular": START
    + headers_frame(1, headers_block(REQUEST[:3] + [("accept", "*/*"), (":path", "/")])),
    "unknown pseudo": START + headers_frame(1, headers_block(REQUEST[:4] + [(":status", "200")])),
    "repeated pseudo": START + headers_frame(1, headers_block(REQUEST[:4] + [(":path", "/x")])),
    "connection header": START
    + headers_frame(1, headers_block(REQUEST[:4] + [("connection", "close")])),
    "transfer-encoding": START
    + headers_frame(1, headers_block(REQUEST[:4] + [("transfer-encoding", "chunked")])),
    "te other than trailers": START
    + headers_frame(1, headers_block(REQUEST[:4] + [("te", "gzip")])),
    "no :method": START + headers_frame(1, headers_block(REQUEST[1:4])),
    "no :path": START + headers_frame(1, headers_block(REQUEST[:3])),
    "CONNECT with :path": START
    + headers_frame(
        1, headers_block([(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")])
    ),
    "pseudo in trailers": START
    + headers_frame(1, REQ, flags=["END_HEADERS"])
    + headers_frame(1, headers_block([(":path", "/")])),
}


@pytest.mark.parametrize("data", REJECTS.values(), ids=REJECTS.keys())
def test_rejected(data):
    rejected(data)


def test_te_trailers_is_allowed():
    events, _ = feed_all(
        START + headers_frame(1, headers_block(REQUEST[:4] + [("te", "trailers")]))
    )
    assert events[1].headers[-1] == ("te", "trailers")


def test_frame_larger_than_max_frame_size_rejected_from_its_header():
    header = struct.pack("!L", 16385)[1:] + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(WireError):
        H2ClientReader().feed(START + header)  # no body needed to refuse it
    ok = (
        START
        + headers_frame(1, REQ, flags=["END_HEADERS"])
        + DataFrame(1, b"x" * 16384).serialize()
    )
    assert feed_all(ok)[0][-1].length == 16384
    with pytest.raises(WireError):
        H2ClientReader(max_frame_size=16383).feed(ok)


def test_header_block_size_limit():
    big = REQUEST[:4] + [("x-big", "v" * 3000)]
    block = hpack.Encoder().encode(b(big), huffman=False)
    assert len(block) > 3000
    data = START + headers_frame(1, block[:2000], flags=["END_STREAM"])
    data += ContinuationFrame(1, block[2000:], flags=["END_HEADERS"]).serialize()
    assert feed_all(data)[0][1].headers == big
    rejected(data, max_header_block_size=2500)


def test_continuation_flood_limit():
    data = START + headers_frame(1, REQ, flags=["END_STREAM"])
    data += ContinuationFrame(1, b"").serialize() * 32
    data += ContinuationFrame(1, b"", flags=["END_HEADERS"]).serialize()
    # 33 CONTINUATION frames for one block: one too many.
    rejected(data)
    assert feed_all(data, max_continuation_frames=33)[0][1].headers == REQUEST


def test_hpack_bomb_is_bounded():
    # One 4000-byte field goes into the dynamic table, then is referenced again and again:
    # a few bytes on the wire, megabytes decoded.
    encoder = hpack.Encoder()
    first = encoder.encode([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")])
    first += encoder.encode([(b"x-bomb", b"v" * 4000)])
    # The newest dynamic-table entry has index 62 (RFC 7541 §2.3.3); 0x80 | 62 is an
    # indexed field referring to it.
    assert encoder.header_table.dynamic_entries[0] == (b"x-bomb", b"v" * 4000)
    block = first + bytes([0x80 | 62]) * 100
    assert len(block) < 5000
    data = START + headers_frame(1, block)
    rejected(data)
    assert len(feed_all(data, max_header_list_size=10**6)[0][1].headers) == 104


def test_priority_frames_before_the_first_request_are_bounded():
    priorities = b"".join(
        PriorityFrame(2 * i + 3, depends_on=0, stream_weight=1).serialize() for i in range(101)
    )
    rejected(START + priorities + headers_frame(1, REQ))
    events, reader = feed_all(START + priorities[:-14] + headers_frame(1, REQ))
    assert len(reader.fingerprint.priority_frames) == 100
    # After the first request they are not kept, so not limited.
    events, _ = feed_all(START + headers_frame(1, REQ) + priorities * 3)
    assert len(events) == 2 + 303


def test_many_frames_in_one_feed():
    pings = PingFrame(0, b"12345678").serialize() * 5000
    events, _ = feed_all(START + pings + headers_frame(1, REQ))
    assert len(events) == 5002 and isinstance(events[-1], Headers)


def test_reader_stays_failed():
    reader = H2ClientReader()
    with pytest.raises(WireError):
        reader.feed(b"nope")
    with pytest.raises(WireError):
        reader.feed(PREFACE)


# ----------------------------------------------------------------------------- properties

_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_stream() -> bytes:
    conn = h2_client({1: 65536, 2: 0, 4: 6291456, 6: 262144})
    conn.increment_flow_control_window(15663105)
    conn.send_headers(1, b(REQUEST), end_stream=False)
    conn.send_data(1, b"payload", pad_length=3, end_stream=True)
    conn.send_headers(3, b(REQUEST), end_stream=True, priority_weight=16)
    return conn.data_to_send() + firefox_like_stream()[len(PREFACE) :]


VALID = _valid_stream()


def test_valid_property_sample_is_valid():
    events, _ = feed_all(VALID)
    assert sum(isinstance(e, Headers) for e in events) == 3


def _feed_split(data: bytes, cuts: list[int]) -> None:
    reader = H2ClientReader()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    try:
        for start, stop in itertools.pairwise(bounds):
            reader.feed(data[start:stop])
    except WireError:
        pass


@_SETTINGS
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_after_preface_only_raise_wire_error(data, cuts):
    _feed_split(PREFACE + data, cuts)


@_SETTINGS
@given(st.binary(max_size=100))
def test_random_bytes_only_raise_wire_error(data):
    _feed_split(data, [])


@_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6
    ),
    st.lists(st.integers(0, 2000), max_size=4),
)
def test_mutated_streams_only_raise_wire_error(edits, cuts):
    out = bytearray(VALID)
    for kind, position, value in edits:
        position = len(PREFACE) + position % (len(out) - len(PREFACE))
        if kind == 0:
            out[position] = value
        elif kind == 1:
            out.insert(position, value)
        else:
            del out[position]
    _feed_split(bytes(out), cuts)


@_SETTINGS
@given(st.lists(st.integers(0, len(VALID)), max_size=8))
def test_any_split_gives_the_same_events(cuts):
    whole, reader = feed_all(VALID)
    bounds = sorted({0, len(VALID), *cuts})
    split_reader = H2ClientReader()
    events = []
    for start, stop in itertools.pairwise(bounds):
        events += split_reader.feed(VALID[start:stop])
    assert events == whole
    assert split_reader.fingerprint == reader.fingerprint


@_SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)), max_size=12),
    st.lists(
        st.tuples(
            st.integers(1, 50).map(lambda s: 2 * s + 1),
            st.integers(0, 0x7FFFFFFF),
            st.integers(0, 255),
            st.booleans(),
        ),
        max_size=5,
    ),
)
def test_generated_settings_and_priorities_round_trip(entries, priorities):
    entries = [
        (i, v)
        for i, v in entries
        if not (i in (2, 8, 9) and v > 1)
        and not (i == 4 and v > 0x7FFFFFFF)
        and not (i == 5 and not 16384 <= v <= 0xFFFFFF)
    ]
    priorities = [p for p in priorities if p[0] != p[1]]
    data = PREFACE + settings_frame(entries)
    for stream, depends_on, weight, exclusive in priorities:
        data += PriorityFrame(
            stream, depends_on=depends_on, stream_weight=weight, exclusive=exclusive
        ).serialize()
    data += headers_frame(201, REQ)
    _events, reader = feed_all(data)
    assert reader.fingerprint.settings == entries
    assert reader.fingerprint.priority_frames == [Priority(*p) for p in priorities]


# ------------------------------------------------------------------ data_events=False
def _outcome(data: bytes, cuts: list[int], **kwargs):
    """(non-DATA events, error text or None, buffered bytes) feeding ``data`` cut at ``cuts``."""
    reader = H2ClientReader(**kwargs)
    events, error = [], None
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            events += reader.feed(data[start:end])
    except WireError as exc:
        error = str(exc)
    return [e for e in events if not isinstance(e, Data)], error, len(reader._buffer)


_DATA_FRAMES = st.lists(st.tuples(
    st.sampled_from([1, 1, 1, 3, 2, 0]),                 # stream (3: not opened, 2 / 0: invalid)
    st.binary(max_size=3000),
    st.sampled_from([None, 0, 5, 255]),                  # padding
    st.booleans(),                                       # END_STREAM
), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=_DATA_FRAMES, cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=6),
       tail=st.sampled_from([b"", PingFrame(0, b"12345678").serialize(), b"\x00\x00\x05\x00"]),
       bad_padding=st.booleans())
def test_skipping_data_payloads_changes_nothing_else(frames, cuts, tail, bad_padding):
    """A reader that skips DATA payloads returns the same other events and refuses the same
    input with the same message as one that returns them, however the bytes are split (it may
    refuse a bad DATA frame a feed sooner); it buffers no body bytes."""
    data = START + headers_frame(1, REQ)
    for stream, body, padding, end in frames:
        flags = 0x1 if end else 0
        payload = body
        if padding is not None:
            flags |= 0x8
            payload = bytes([padding]) + body + bytes(padding)
        data += frame(0x0, flags, stream, payload)
    if bad_padding:                                        # pad length past the payload
        data += frame(0x0, 0x8, 1, b"\x09abc")
    data += tail
    keep = _outcome(data, cuts, max_frame_size=16777215)
    skip = _outcome(data, cuts, max_frame_size=16777215, data_events=False)
    assert skip[1] == keep[1]
    # a bad DATA frame is refused as soon as its header is in, not once its payload is: the
    # events of the feed that raised are lost, so the skipping reader may return fewer
    assert skip[0] == keep[0] if skip[1] is None else skip[0] == keep[0][:len(skip[0])]
    if skip[1] is None:
        assert skip[2] <= 8 + len(tail)                    # at most a partial frame header
