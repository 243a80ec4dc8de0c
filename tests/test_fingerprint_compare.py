"""The comparison engine on its own: two views built from plain values in, field differences out.

No store, reference file, pcap or process: each view is written out field by field (or built
from a ClientHello assembled byte by byte), so each rule of mirror.fingerprint.compare is
checked alone -- one-sided fields, composites explained by their parts, header order on shared
names, the connection-state extensions, the weighted score. The end-to-end behaviour over real
clients and references is in test_identify.py.
"""

from __future__ import annotations

import struct

from conftest import alpn_ext, make_hello

from mirror.fingerprint.compare import diff, differing, score
from mirror.fingerprint.normalise import GREASE, parse_akamai, tls_fields
from mirror.fingerprint.report import tls_report
from mirror.fingerprint.view import FIELDS, FingerprintView, build_view
from mirror.wire.tls import parse_client_hello

WEIGHT = {spec.name: spec.weight for spec in FIELDS}


def by_name(a: FingerprintView, b: FingerprintView) -> dict:
    return {d.name: d for d in diff(a, b)}


def test_equal_views_compare_equal_on_every_field_with_full_score():
    fields = {"ja4": "t13d0202h2_aaaaaaaaaaaa_bbbbbbbbbbbb", "ciphers": [4865, 4866],
              "alpn": ["h2", "http/1.1"], "http_version": "HTTP/2"}
    diffs = diff(FingerprintView("A", fields), FingerprintView("B", dict(fields)))
    assert [d.name for d in diffs] == ["ja4", "ciphers", "alpn", "http_version"]  # FIELDS order
    assert all(d.equal is True for d in diffs)
    assert differing(diffs) == () and score(diffs) == 100.0


def test_a_field_only_one_side_shows_is_neither_equal_nor_scored():
    a = FingerprintView("A", {"ja4": "t13d0202h2_x_y", "alpn": ["h2"]})
    b = FingerprintView("B", {"ja4": "t13d0202h2_x_y"})
    diffs = by_name(a, b)
    assert diffs["alpn"].equal is None and diffs["alpn"].note == "only A shows it"
    assert differing(list(diffs.values())) == ()
    assert score(list(diffs.values())) == 100.0  # alpn not compared: it does not lower the score


def test_a_composite_that_differs_because_of_a_part_is_explained_by_it():
    a = FingerprintView("A", {"ja4": "t13d0302h2_one_same", "ja3n": "m1",
                              "ciphers": [4865, 4866, 4867], "alpn": ["h2"],
                              "supported_groups": [29, 23]})
    b = FingerprintView("B", {"ja4": "t13d0202h2_two_same", "ja3n": "m2",
                              "ciphers": [4865, 4866], "alpn": ["h2"],
                              "supported_groups": [29, 23]})
    diffs = diff(a, b)
    entries = {d.name: d for d in diffs}
    assert entries["ja4"].equal is False and entries["ja4"].explained_by == ("ciphers",)
    assert entries["ja3n"].explained_by == ("ciphers",)
    assert differing(diffs) == ("ciphers",)  # the root difference only
    assert set(differing(diffs, roots_only=False)) == {"ja4", "ja3n", "ciphers"}
    compared = ["ja4", "ja3n", "ciphers", "alpn", "supported_groups"]
    equal = ["alpn", "supported_groups"]
    expected = round(100 * sum(WEIGHT[n] for n in equal) / sum(WEIGHT[n] for n in compared), 1)
    assert score(diffs) == expected


def test_a_composite_that_differs_alone_is_a_root_difference():
    a = FingerprintView("A", {"ja4": "t13d0202h2_one_x", "ciphers": [4865, 4866]})
    b = FingerprintView("B", {"ja4": "t13d0202h2_two_x", "ciphers": [4865, 4866]})
    diffs = diff(a, b)
    assert differing(diffs) == ("ja4",)
    assert {d.name: d for d in diffs}["ja4"].explained_by == ()


def test_header_order_is_decided_on_the_shared_names_and_extra_names_are_their_own_field():
    a = FingerprintView("A", {"http_version": "HTTP/2", "h2_header_order": [
        "user-agent", "accept", "cookie", "accept-language"]})
    b = FingerprintView("B", {"http_version": "HTTP/2", "h2_header_order": [
        "user-agent", "referer", "accept", "accept-language"]})
    entries = by_name(a, b)
    assert entries["h2_header_order"].equal is True
    assert entries["h2_header_order"].note == "the 3 shared names in the same order"
    names = entries["h2_header_names"]
    assert (names.a, names.b, names.equal) == (["cookie"], ["referer"], False)
    assert names.note == "only in A: cookie; only in B: referer"


def test_header_order_differs_from_the_first_shared_name_out_of_place():
    a = FingerprintView("A", {"h2_header_order": ["user-agent", "accept", "accept-encoding"]})
    b = FingerprintView("B", {"h2_header_order": ["user-agent", "accept-encoding", "accept"]})
    order = by_name(a, b)["h2_header_order"]
    assert order.equal is False
    assert order.note == "shared names in another order from position 2: accept vs accept-encoding"


def test_http1_header_names_match_across_case_but_their_case_must_be_equal():
    a = FingerprintView("A", {"h1_header_order": ["Host", "User-Agent", "Accept"]})
    b = FingerprintView("B", {"h1_header_order": ["Host", "user-agent", "Accept"]})
    entries = by_name(a, b)
    assert entries["h1_header_order"].equal is False
    assert entries["h1_header_order"].note == "same order, different case: User-Agent/user-agent"
    assert entries["h1_header_names"].equal is True  # the same names, case aside


def test_no_shared_header_name_is_a_difference():
    a = FingerprintView("A", {"h2_header_order": ["x-one"]})
    b = FingerprintView("B", {"h2_header_order": ["x-two"]})
    order = by_name(a, b)["h2_header_order"]
    assert order.equal is False and order.note == "no header name in common"


def test_the_same_extensions_in_another_order_say_so():
    a = FingerprintView("A", {"extension_order": [GREASE, 0, 16, 43]})
    b = FingerprintView("B", {"extension_order": [GREASE, 43, 0, 16]})
    entry = by_name(a, b)["extension_order"]
    assert entry.equal is False and "same extensions in another order" in entry.note


def test_the_akamai_string_is_explained_by_the_settings_it_carries():
    a_text = "1:65536;2:0;4:6291456|15663105|0|m,a,s,p"
    b_text = "1:65536;4:6291456|15663105|0|m,a,s,p"  # SETTINGS 2 left out
    a = build_view("A", {"akamai": a_text, **parse_akamai(a_text)}, {})
    b = build_view("B", {"akamai": b_text, **parse_akamai(b_text)}, {})
    diffs = diff(a, b)
    assert differing(diffs) == ("h2_settings",)
    assert {d.name: d for d in diffs}["akamai"].explained_by == ("h2_settings",)


def test_parse_akamai_reads_each_part_and_refuses_what_is_not_one():
    parts = parse_akamai("1:65536;2:0|00|3:0:0:201,5:0:0:101|m,p,a,s")
    assert parts == {"h2_settings": [[1, 65536], [2, 0]], "h2_window_update": None,
                     "h2_priority_frames": ["3:0:0:201", "5:0:0:101"],
                     "h2_pseudo_header_order": [":method", ":path", ":authority", ":scheme"]}
    assert parse_akamai("1:65536|00|0") is None  # three parts
    assert parse_akamai("1:x|00|0|m,a,s,p") is None  # a value that is no number


def _view_of_hello(label: str, extensions) -> FingerprintView:
    hello = parse_client_hello(make_hello((0x1301, 0x1302), extensions))
    fields, stateless = tls_fields(tls_report(hello))
    return build_view(label, fields, stateless)


def test_hellos_that_differ_only_by_padding_compare_equal_with_a_note():
    common = [(0, b""), alpn_ext(b"h2"), (43, struct.pack("!BH", 2, 0x0304))]
    padded = _view_of_hello("padded", [*common, (21, bytes(40))])
    bare = _view_of_hello("bare", common)
    assert padded.get("ja4") != bare.get("ja4")  # the plain strings do differ
    entries = by_name(padded, bare)
    for name in ("ja4", "ja4_o", "ja3", "ja3n"):
        assert entries[name].equal is True, name
        assert "without padding" in entries[name].note
    assert entries["padding"].equal is False  # still shown, weighing nothing
    assert entries["extension_order"].equal is True and entries["extension_set"].equal is True
    assert differing(list(entries.values())) == ("padding",)


def test_hellos_that_differ_by_a_client_extension_still_differ():
    common = [(0, b""), alpn_ext(b"h2"), (43, struct.pack("!BH", 2, 0x0304))]
    entries = by_name(_view_of_hello("A", [*common, (23, b"")]), _view_of_hello("B", common))
    assert entries["ja4"].equal is False and entries["ja4"].explained_by == ("extension_set",)
    assert "extension_set" in differing(list(entries.values()))
