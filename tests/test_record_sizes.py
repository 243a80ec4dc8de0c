"""RecordSizes: the client's record lengths follow the bytes the observer forwards."""

from __future__ import annotations

from mirror.proxy.observe import Http1Observer
from mirror.proxy.record_sizes import RecordSizes


def test_a_head_held_back_over_three_reads_keeps_its_three_record_lengths():
    observer, sizes = Http1Observer(), RecordSizes()
    sent = []
    for record in (b"GET / HTTP/1.1\r\n", b"Host: example.test\r\n", b"\r\n"):
        forward = observer.feed(record)
        sent.append((forward, sizes.forward([len(record)], len(forward))))
    assert sent[:2] == [(b"", []), (b"", [])]
    assert sent[2] == (b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", [16, 20, 2])


def test_a_record_forwarded_in_part_leaves_its_rest_for_the_next_forward():
    sizes = RecordSizes()
    assert sizes.forward([10, 10], 15) == [10, 5]
    assert sizes.forward([4], 9) == [5, 4]
    assert sizes.forward([7], 7) == [7]


def test_bytes_beyond_every_known_length_get_none():
    assert RecordSizes().forward([3], 8) == [3]
