"""Tests for mirror.wire.http1: request heads, body framing, chunked decoding."""

from __future__ import annotations

import itertools

import pytest
from fuzzing import FUZZ_SETTINGS, edits, mutate
from hypothesis import given
from hypothesis import strategies as st

from mirror.wire.errors import WireError
from mirror.wire.http1 import (
    BodyFraming,
    ChunkedReader,
    RequestHead,
    body_framing,
    parse_request_head,
)

CURL_HEAD = (
    b"GET /get?x=1 HTTP/1.1\r\nHost: httpbin.org\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
)

# Chrome 124's plain-HTTP navigation request, as captured (header case and order as sent).
CHROME_HEAD = (
    b"GET / HTTP/1.1\r\n"
    b"Host: neverssl.com\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: a=1; b=2\r\n"
    b"\r\n"
)


def head(*lines: bytes, request_line: bytes = b"GET / HTTP/1.1") -> bytes:
    return b"\r\n".join([request_line, *lines]) + b"\r\n\r\n"


def parsed(data: bytes, **kwargs) -> RequestHead:
    result = parse_request_head(data, **kwargs)
    assert result is not None
    return result


# ----------------------------------------------------------------------------- valid heads


def test_curl_head():
    h = parsed(CURL_HEAD)
    assert (h.method, h.target, h.version) == ("GET", "/get?x=1", "HTTP/1.1")
    assert h.headers == [("Host", "httpbin.org"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*")]
    assert h.raw == CURL_HEAD
    assert h.length == len(CURL_HEAD)


def test_chrome_head_keeps_order_and_case_and_body_follows():
    body = b"GET /next HTTP/1.1\r\n"
    h = parsed(CHROME_HEAD + body)
    assert h.length == len(CHROME_HEAD)
    assert h.raw == CHROME_HEAD
    assert h.header_names == [
        "Host",
        "Connection",
        "Upgrade-Insecure-Requests",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Cookie",
    ]
    assert h.get("accept-language") == "en-US,en;q=0.9"
    assert h.get("cookie") == "a=1; b=2"
    assert h.get("missing") is None


def test_duplicates_and_case_are_kept():
    h = parsed(head(b"Host: a", b"X-Dup: 1", b"x-dup: 2", b"X-DUP: 3"))
    assert h.headers[1:] == [("X-Dup", "1"), ("x-dup", "2"), ("X-DUP", "3")]
    assert h.values("X-dup") == ["1", "2", "3"]


def test_values_strip_ows_at_both_ends_only():
    h = parsed(head(b"A:  \t inner  value \t ", b"B:", b"C: \t", b"D:x"))
    assert h.headers == [("A", "inner  value"), ("B", ""), ("C", ""), ("D", "x")]


def test_htab_and_obs_text_in_values_are_kept_exactly():
    raw_value = b"caf\xe9\tbar"
    h = parsed(head(b"X: " + raw_value))
    assert h.headers[0][1].encode("latin-1") == raw_value


def test_http10_and_absolute_and_asterisk_targets():
    assert parsed(head(request_line=b"GET http://a.example/x HTTP/1.0")).version == "HTTP/1.0"
    assert parsed(head(b"Host: a", request_line=b"OPTIONS * HTTP/1.1")).target == "*"
    h = parsed(head(b"Host: a:443", request_line=b"CONNECT a:443 HTTP/1.1"))
    assert (h.method, h.target) == ("CONNECT", "a:443")


def test_no_headers_at_all():
    h = parsed(b"GET / HTTP/1.0\r\n\r\n")
    assert h.headers == []
    assert h.length == 18


@pytest.mark.parametrize("sample", [CURL_HEAD, CHROME_HEAD])
def test_every_proper_prefix_needs_more(sample):
    for cut in range(len(sample)):
        assert parse_request_head(sample[:cut]) is None, cut


def test_input_types():
    assert parsed(bytearray(CURL_HEAD)).raw == CURL_HEAD
    assert parsed(memoryview(CURL_HEAD)).raw == CURL_HEAD


# ----------------------------------------------------------------------------- rejections

REJECTED_HEADS = {
    "bare LF ending a header": b"GET / HTTP/1.1\r\nHost: a\n\r\n\r\n",
    "bare LF ending the request line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "only bare LFs": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare CR in a value": b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    "bare CR in the request line": b"GET /\r HTTP/1.1\r\n\r\n",
    "obs-fold with SP": b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
    "obs-fold with HTAB": b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
    "whitespace line first": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "tab before colon": b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\n: a\r\n\r\n",
    "non-token name": b"GET / HTTP/1.1\r\nX(y): a\r\n\r\n",
    "non-ascii name": b"GET / HTTP/1.1\r\nX\xe9: a\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "control char in value": b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
    "vertical tab in value": b"GET / HTTP/1.1\r\nX: a\x0bb\r\n\r\n",
    "non-token method": b"G(T / HTTP/1.1\r\n\r\n",
    "double space": b"GET  / HTTP/1.1\r\n\r\n",
    "tab separator": b"GET\t/ HTTP/1.1\r\n\r\n",
    "trailing space": b"GET / HTTP/1.1 \r\n\r\n",
    "missing version": b"GET /\r\n\r\n",
    "extra field": b"GET / x HTTP/1.1\r\n\r\n",
    "empty target": b"GET  HTTP/1.1\r\n\r\n",
    "non-ascii target": b"GET /\xe9 HTTP/1.1\r\n\r\n",
    "lowercase version": b"GET / http/1.1\r\n\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\n\r\n",
    "HTTP/0.9 style": b"GET / HTTP/0.9\r\n\r\n",
    "leading empty line": b"\r\nGET / HTTP/1.1\r\n\r\n",
    "empty request": b"\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    "h2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("data", REJECTED_HEADS.values(), ids=REJECTED_HEADS.keys())
def test_rejected(data):
    with pytest.raises(WireError) as info:
        parse_request_head(data)
    assert info.value.layer == "http1"


EARLY_REJECTS = {
    "TLS ClientHello": bytes.fromhex("160301020001"),
    "binary": b"\x00\x01\x02",
    "bad method char": b"GE\x7f",
    "bare LF in the request line": b"GET / HTTP/1.1\nHost",
    "bare CR mid-line": b"GET /\r/x",
    "obs-fold in progress": b"GET / HTTP/1.1\r\nHost: a\r\n ",
    "space before colon in progress": b"GET / HTTP/1.1\r\nHost :",
    "bad version in progress": b"GET / HTTX",
    "bad request line complete": b"GET /\r\nHost: a\r\n",
    "CTL in value in progress": b"GET / HTTP/1.1\r\nX: \x01",
    "h2 preface start": b"PRI * HTTP/2.0\r\n",
}


@pytest.mark.parametrize("data", EARLY_REJECTS.values(), ids=EARLY_REJECTS.keys())
def test_rejected_before_the_head_ends(data):
    with pytest.raises(WireError):
        parse_request_head(data)


def test_head_size_limit_boundary():
    base = head(b"Host: a", b"X: ")
    size = len(base)
    assert parsed(base, max_head_size=size).length == size
    with pytest.raises(WireError):
        parse_request_head(base, max_head_size=size - 1)


def test_growing_head_without_end_is_refused_at_the_limit():
    prefix = b"GET / HTTP/1.1\r\nX: " + b"a" * 100
    assert parse_request_head(prefix, max_head_size=200) is None
    grown = prefix + b"a" * 200
    with pytest.raises(WireError):
        parse_request_head(grown, max_head_size=200)
    # Default limit too: 64 KiB of one header value and still no end.
    with pytest.raises(WireError):
        parse_request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)


def test_header_count_limit():
    lines = [b"X-%d: v" % i for i in range(10)]
    assert len(parsed(head(*lines), max_headers=10).headers) == 10
    with pytest.raises(WireError):
        parse_request_head(head(*lines), max_headers=9)
    # Before the end of the head arrives.
    unfinished = b"GET / HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines)
    assert parse_request_head(unfinished, max_headers=10) is None
    with pytest.raises(WireError):
        parse_request_head(unfinished, max_headers=9)


def test_default_header_count_limit_is_100():
    lines = [b"X: v"] * 100
    assert len(parsed(head(*lines)).headers) == 100
    with pytest.raises(WireError):
        parse_request_head(head(*lines, b"X: v"))


# ----------------------------------------------------------------------------- body framing


def framing(*lines: bytes, version: bytes = b"HTTP/1.1") -> BodyFraming:
    return body_framing(parsed(head(b"Host: a", *lines, request_line=b"POST / " + version)))


def test_framing_none_length_chunked():
    assert framing() == BodyFraming("none", 0)
    assert framing(b"Content-Length: 0") == BodyFraming("length", 0)
    assert framing(b"content-length: 42") == BodyFraming("length", 42)
    assert framing(b"Content-Length: 007") == BodyFraming("length", 7)
    assert framing(b"Content-Length: 999999999999999999") == BodyFraming("length", 10**18 - 1)
    assert framing(b"Transfer-Encoding: chunked") == BodyFraming("chunked", None)
    assert framing(b"Transfer-Encoding: Chunked") == BodyFraming("chunked", None)
    assert framing(b"Transfer-Encoding: gzip, chunked") == BodyFraming("chunked", None)
    assert framing(b"Transfer-Encoding: gzip", b"transfer-encoding: chunked").kind == "chunked"
    assert framing(b"Content-Length: 5", version=b"HTTP/1.0") == BodyFraming("length", 5)


SMUGGLING = {
    "CL and TE": [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    "TE and CL": [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    "CL and TE identity": [b"Content-Length: 5", b"Transfer-Encoding: identity"],
    "two different CLs": [b"Content-Length: 5", b"Content-Length: 6"],
    "two identical CLs": [b"Content-Length: 5", b"Content-Length: 5"],
    "CL list": [b"Content-Length: 5, 5"],
    "CL plus sign": [b"Content-Length: +5"],
    "CL negative": [b"Content-Length: -1"],
    "CL hex": [b"Content-Length: 0x5"],
    "CL trailing junk": [b"Content-Length: 5a"],
    "CL inner space": [b"Content-Length: 5 0"],
    "CL empty": [b"Content-Length:"],
    "CL unicode digit": [b"Content-Length: \xb2"],
    "CL huge": [b"Content-Length: 1000000000000000000"],
    "TE final not chunked": [b"Transfer-Encoding: chunked, gzip"],
    "TE unknown": [b"Transfer-Encoding: xchunked"],
    "TE chunked twice": [b"Transfer-Encoding: chunked, chunked"],
    "TE chunked twice over headers": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    "TE chunked with parameter": [b"Transfer-Encoding: chunked;q=1"],
    "TE empty": [b"Transfer-Encoding:"],
    "TE empty element": [b"Transfer-Encoding: ,chunked"],
    "TE quoted": [b'Transfer-Encoding: "chunked"'],
    "TE identity only": [b"Transfer-Encoding: identity"],
}


@pytest.mark.parametrize("lines", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_framing_rejects_ambiguous_requests(lines):
    with pytest.raises(WireError):
        framing(*lines)


def test_transfer_encoding_in_http10_is_faulty():
    with pytest.raises(WireError):
        framing(b"Transfer-Encoding: chunked", version=b"HTTP/1.0")


# ----------------------------------------------------------------------------- chunked bodies

CHUNKED = (
    b"5\r\nhello\r\n"
    b"1A;name=value;flag\r\n" + b"x" * 26 + b"\r\n"
    b"a \t;ext\r\n0123456789\r\n"
    b"0\r\n"
    b"Expires: never\r\n"
    b"x-checksum: abc\r\n"
    b"\r\n"
)
CHUNKED_BODY = b"hello" + b"x" * 26 + b"0123456789"
CHUNKED_TRAILERS = [("Expires", "never"), ("x-checksum", "abc")]


def decode_pieces(pieces: list[bytes]) -> tuple[bytes, ChunkedReader]:
    reader = ChunkedReader()
    out = b""
    for piece in pieces:
        chunks = reader.feed(piece)
        assert all(chunks), "feed never returns empty pieces"
        out += b"".join(chunks)
    return out, reader


def test_chunked_whole():
    body, reader = decode_pieces([CHUNKED + b"NEXT"])
    assert body == CHUNKED_BODY
    assert reader.done
    assert reader.trailers == CHUNKED_TRAILERS
    assert reader.remainder == b"NEXT"


def test_chunked_split_at_every_boundary():
    for cut in range(len(CHUNKED) + 1):
        body, reader = decode_pieces([CHUNKED[:cut], CHUNKED[cut:]])
        assert body == CHUNKED_BODY, cut
        assert reader.done and reader.trailers == CHUNKED_TRAILERS
        assert reader.remainder == b""


def test_chunked_byte_by_byte():
    data = CHUNKED + b"GET"
    body, reader = decode_pieces([data[i : i + 1] for i in range(len(data))])
    assert body == CHUNKED_BODY
    assert reader.done and reader.trailers == CHUNKED_TRAILERS
    assert reader.remainder == b"GET"


def test_chunked_not_done_until_final_crlf():
    reader = ChunkedReader()
    assert reader.feed(b"3\r\nabc\r\n0\r\n") == [b"abc"]
    assert not reader.done
    assert reader.feed(b"\r") == [] and not reader.done
    reader.feed(b"\n")
    assert reader.done


def test_chunked_size_forms_accepted():
    for size_line in (b"A", b"a", b"0000000000000010", b'10;x="q"', b"10 ;x", b"10\t;x"):
        size = int(size_line.split(b";")[0].strip(), 16)
        body, reader = decode_pieces([size_line + b"\r\n" + b"z" * size + b"\r\n0\r\n\r\n"])
        assert body == b"z" * size and reader.done


def test_chunked_large_chunk_is_streamed_not_buffered():
    reader = ChunkedReader()
    assert reader.feed(b"100000\r\n") == []
    total = 0
    for _ in range(16):
        chunks = reader.feed(b"y" * 65536)
        total += sum(len(c) for c in chunks)
    assert total == 0x100000
    reader.feed(b"\r\n0\r\n\r\n")
    assert reader.done


CHUNKED_REJECTS = {
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "plus": b"+5\r\nhello\r\n0\r\n\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "leading space": b" 5\r\nhello\r\n0\r\n\r\n",
    "trailing space only": b"5 \r\nhello\r\n0\r\n\r\n",
    "non-hex": b"g\r\n",
    "empty size line": b"\r\n",
    "17 digits": b"00000000000000005\r\nhello\r\n0\r\n\r\n",
    "bare LF after size": b"5\nhello\r\n0\r\n\r\n",
    "bare CR after size": b"5\rhello\r\n0\r\n\r\n",
    "data too long": b"5\r\nhello!\r\n0\r\n\r\n",
    "bare LF after data": b"5\r\nhello\n0\r\n\r\n",
    "junk after size": b"5x\r\nhello\r\n",
    "CTL in extension": b"5;a\x01b\r\nhello\r\n",
    "obs-fold in trailers": b"0\r\nX: a\r\n b\r\n\r\n",
    "bad trailer": b"0\r\nX a\r\n\r\n",
    "bare LF ending trailers": b"0\r\nX: a\r\n\n",
    "size line too long": b"5;" + b"e" * 5000 + b"\r\n",
    "too many trailers": b"0\r\n" + b"X: 1\r\n" * 101 + b"\r\n",
}


@pytest.mark.parametrize("data", CHUNKED_REJECTS.values(), ids=CHUNKED_REJECTS.keys())
def test_chunked_rejects(data):
    with pytest.raises(WireError):
        decode_pieces([data])
    # The same error however the bytes are split.
    with pytest.raises(WireError):
        decode_pieces([data[i : i + 1] for i in range(len(data))])


def test_chunked_reader_stays_failed():
    reader = ChunkedReader()
    with pytest.raises(WireError):
        reader.feed(b"zz\r\n")
    with pytest.raises(WireError):
        reader.feed(b"0\r\n\r\n")


def test_chunked_trailer_size_limit():
    reader = ChunkedReader(max_trailer_size=64)
    with pytest.raises(WireError):
        reader.feed(b"0\r\n" + b"X: " + b"v" * 40 + b"\r\nY: " + b"v" * 40 + b"\r\n\r\n")


def test_chunked_size_line_limit_before_newline():
    reader = ChunkedReader(max_line=32)
    reader.feed(b"5;" + b"e" * 20)
    with pytest.raises(WireError):
        reader.feed(b"e" * 20)


# ----------------------------------------------------------------------------- properties



_edits = edits(1 << 16)
_edits_interesting = edits(1 << 16, st.sampled_from(list(b"\r\n \t:;,\x00\x7f\x80\xffAz09-")))


def _only_wire_errors(call):
    try:
        return call()
    except WireError:
        return None


@FUZZ_SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_wire_error(data):
    result = _only_wire_errors(lambda: parse_request_head(data, max_head_size=512, max_headers=8))
    if result is not None:
        assert result.raw == data[: result.length]
        assert result.raw.endswith(b"\r\n\r\n")
        _only_wire_errors(lambda: body_framing(result))


@FUZZ_SETTINGS
@given(st.sampled_from([CURL_HEAD, CHROME_HEAD + b"hello"]), st.one_of(_edits, _edits_interesting))
def test_mutated_heads_only_raise_wire_error(sample, edits):
    data = mutate(sample, edits)
    result = _only_wire_errors(lambda: parse_request_head(data))
    if result is not None:
        assert result.raw == data[: result.length]
        _only_wire_errors(lambda: body_framing(result))


_token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=12,
)
_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=20,
).map(lambda v: v.strip(" \t"))


@FUZZ_SETTINGS
@given(
    _token,
    st.sampled_from(["/", "/a?b=c", "*", "http://x.example/p"]),
    st.sampled_from(["HTTP/1.0", "HTTP/1.1"]),
    st.lists(st.tuples(_token.filter(lambda n: n.lower() != "host"), _value), max_size=12),
    st.data(),
)
def test_generated_heads_round_trip(method, target, version, headers, data):
    wire = f"{method} {target} {version}\r\n".encode()
    for name, value in headers:
        ows = data.draw(st.sampled_from(["", " ", "\t ", "  "]))
        wire += f"{name}:{ows}{value}{ows[::-1]}\r\n".encode("latin-1")
    wire += b"\r\n"
    result = parsed(wire + b"rest")
    assert (result.method, result.target, result.version) == (method, target, version)
    assert result.headers == headers
    assert result.length == len(wire)


@FUZZ_SETTINGS
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_chunked_random_bytes_only_raise_wire_error(data, cuts):
    reader = ChunkedReader(max_line=64, max_trailer_size=128, max_trailers=4)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    try:
        for start, stop in itertools.pairwise(bounds):
            reader.feed(data[start:stop])
    except WireError:
        pass


@FUZZ_SETTINGS
@given(st.one_of(_edits, _edits_interesting), st.lists(st.integers(0, 200), max_size=5))
def test_chunked_mutations_only_raise_wire_error(edits, cuts):
    data = mutate(CHUNKED, edits)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    reader = ChunkedReader()
    out = b""
    try:
        for start, stop in itertools.pairwise(bounds):
            out += b"".join(reader.feed(data[start:stop]))
    except WireError:
        return
    # Whatever was accepted decodes the same way when fed whole.
    whole = ChunkedReader()
    assert b"".join(whole.feed(data)) == out
    assert whole.done == reader.done and whole.trailers == reader.trailers


@FUZZ_SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6), st.integers(1, 7))
def test_chunked_generated_bodies_round_trip(chunks, step):
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    reader = ChunkedReader()
    out = b""
    for i in range(0, len(wire), step):
        out += b"".join(reader.feed(wire[i : i + step]))
    assert out == b"".join(chunks)
    assert reader.done and reader.remainder == b""
