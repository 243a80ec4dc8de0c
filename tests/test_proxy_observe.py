"""The proxy's HTTP/1 observer: it forwards the client's bytes unchanged (or rewritten for
absolute-form), records each request, refuses ambiguous framing, and stops parsing only after
the server accepted an upgrade."""

from __future__ import annotations

import pytest

from mirror.proxy.observe import Http1Observer
from mirror.wire.errors import WireError

PIPELINE = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
NEXT = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("split", range(1, len(PIPELINE)))
def test_any_split_forwards_the_same_bytes_and_records_every_request(split):
    observer = Http1Observer()
    out = observer.feed(PIPELINE[:split]) + observer.feed(PIPELINE[split:])
    assert out == PIPELINE
    assert [r["target"] for r in observer.requests] == ["/a", "/b", "/c"]


def test_ambiguous_framing_is_refused_before_anything_is_forwarded():
    with pytest.raises(WireError):
        Http1Observer().feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\nabc")


def test_after_a_101_the_bytes_are_not_parsed_any_more():
    observer = Http1Observer()
    observer.feed(UPGRADE)
    observer.server_bytes(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    frame = b"\x81\x85\x00\x00\x00\x00hello"
    assert observer.feed(frame) == frame and observer.count == 1


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
])
def test_a_declined_upgrade_keeps_the_connection_parsed(response):
    observer = Http1Observer()
    observer.feed(UPGRADE)
    for byte in range(len(response)):
        observer.server_bytes(response[byte:byte + 1])
    observer.feed(NEXT)
    assert [r["target"] for r in observer.requests] == ["/ws", "/after"]
    with pytest.raises(WireError):
        observer.feed(b"garbage\r\n\r\n")


def test_interim_responses_before_the_101_are_skipped():
    observer = Http1Observer()
    observer.feed(UPGRADE)
    observer.server_bytes(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert observer.passthrough
