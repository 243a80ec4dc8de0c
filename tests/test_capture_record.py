"""The capture record, typed: records a real proxy stored, read back as ``CaptureRecord``, and
what `mirror captures show / export` make of them; damaged records read as absent parts."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
import typing
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from real_captures import real_capture_records
from rich.console import Console

from mirror.record.capture import (
    CaptureRecord,
    EmittedPart,
    ErrorPart,
    FieldVerdict,
    HttpRequest,
    PartList,
    TlsExtension,
    TlsPart,
)
from mirror.record.shape import RecordDict
from mirror.store.export import export, har, pcap_lite
from mirror.store.render import render_record
from mirror.store.summary import summarize
from mirror.wire.tcp import parse_syn
from mirror.wire.tls import read_client_hello


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> list[dict]:
    """Chrome over h2, Firefox over HTTP/1.1, plain HTTP, and a failed upstream connect."""
    return real_capture_records(tmp_path_factory.mktemp("records"))


# -- the stored key each typed field is read from, where it is not the field's own name
RENAMED = {(EmittedPart, "syn"): ("tcp", "syn")}


def _stored_value(part: Mapping, cls: type, name: str):
    if (cls, name) in RENAMED:
        value = part
        for key in RENAMED[cls, name]:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value
    if cls is HttpRequest and name == "path":
        return part.get("path") or part.get(":path")
    return part.get(name)


def assert_read_as_stored(typed, part: Mapping) -> int:
    """Every field of ``typed`` equals what ``part`` (the stored JSON) holds under its key;
    returns how many fields held a value."""
    held = 0
    for field in dataclasses.fields(typed):
        value = getattr(typed, field.name)
        raw = _stored_value(part, type(typed), field.name)
        if value is None:
            assert raw is None, (type(typed).__name__, field.name, raw)
            continue
        held += 1
        if dataclasses.is_dataclass(value):
            held += assert_read_as_stored(value, raw)
        elif isinstance(value, (tuple, PartList)):
            assert len(value) == len(raw), field.name
            for item, raw_item in zip(value, raw, strict=True):
                if dataclasses.is_dataclass(item):
                    held += assert_read_as_stored(item, raw_item)
                else:
                    assert list(item) == raw_item if isinstance(item, tuple) else item == raw_item
        elif field.name == "fidelity":
            assert set(value) == set(raw)
            for name, verdict in value.items():
                assert verdict == FieldVerdict(raw[name]["status"], raw[name]["detail"])
        else:
            assert value == raw, (type(typed).__name__, field.name)
    return held


def test_real_records_read_typed_field_for_field(stored):
    chrome, firefox, plain, failed = (CaptureRecord.from_stored(r) for r in stored)
    for typed, record in zip((chrome, firefox, plain, failed), stored, strict=True):
        assert assert_read_as_stored(typed, record) > 40
        assert typed.tcp is not None and typed.tcp.ja4t == record["tcp"]["ja4t"]
        assert typed.emitted is not None and typed.emitted.syn is not None
        assert typed.emitted.syn.raw == record["emitted"]["tcp"]["syn"]["raw"]
    for typed in (chrome, firefox):
        assert typed.protocol == "tls" and typed.tls is not None and typed.tls.raw is not None
        assert len(typed.tls.extensions) == len(typed.tls.extension_types) > 5
        assert typed.emitted.fidelity and typed.emitted.tls.hello.measured
        # curl_cffi's Fingerprint only where BoringSSL made the hello (replay uses none of it)
        assert (typed.emitted.tls.fingerprint is not None) == (typed.upstream.engine
                                                               == "boringssl")
        assert typed.http.requests[0].response.status == 200
    assert chrome.http.version == "HTTP/2" and chrome.http.h2.akamai
    assert chrome.http.requests[0].path == "/record?family=chrome"
    assert firefox.http.version == "HTTP/1.1" and firefox.http.requests[0].raw.startswith("GET ")
    assert plain.protocol == "http" and plain.tls is None
    assert failed.error == ErrorPart("upstream-connect", stored[3]["error"]["message"])
    assert failed.upstream.error == stored[3]["upstream"]["error"]


def test_the_writing_side_names_every_key_the_proxy_writes(stored):
    hints = typing.get_type_hints(RecordDict)
    required, optional = RecordDict.__required_keys__, RecordDict.__optional_keys__
    assert set(hints) == required | optional
    for record in stored:
        keys = set(record) - {"id"}                  # the store's, not the proxy's
        assert required <= keys <= required | optional, keys ^ required
        for name in ("client", "destination", "alpn", "upstream", "bytes"):
            kinds = typing.get_args(hints[name]) or (hints[name],)    # X, or X | None
            if record[name] is None:
                assert type(None) in kinds, name
                continue
            keys = set(record[name])
            assert kinds[0].__required_keys__ <= keys <= (
                kinds[0].__required_keys__ | kinds[0].__optional_keys__), name
        assert set(record["emitted"]) == {"tls", "fidelity", "tcp"}


def _rendered(record: CaptureRecord) -> list[list[str]]:
    out = io.StringIO()
    render_record(record, Console(file=out, width=400, color_system=None))
    return [line.split() for line in out.getvalue().splitlines()]


def test_show_prints_the_stored_values(stored):
    for record in stored:
        lines = _rendered(CaptureRecord.from_stored(record))
        assert ["ja4t", record["tcp"]["ja4t"]] in lines
        assert ["mode", record["mode"]] in lines
        if record["tls"]:
            tls = record["tls"]
            assert ["ja4", tls["ja4"]] in lines and ["ja3", tls["ja3"]] in lines
            ciphers = next(line for line in lines if line[:2] == ["cipher", "suites"])
            assert " ".join(ciphers[2:]) == ", ".join(f"0x{c:04x}" for c in tls["cipher_suites"])
            fidelity = record["emitted"]["fidelity"]
            exact = sum(v["status"] == "exact" for v in fidelity.values())
            assert any(line[:3] == ["fields", str(exact), "exact"] for line in lines)
        request = record["http"]["requests"][0]
        line = next(line for line in lines if line[:2] == ["request", "1"])
        assert line[2:4] == [request["method"], request.get("target") or request["path"]]
    failed = _rendered(CaptureRecord.from_stored(stored[3]))
    assert ["upstream-connect", *stored[3]["error"]["message"].split()] in failed


def test_har_and_pcap_lite_carry_the_stored_values(stored):
    typed = [CaptureRecord.from_stored(r) for r in stored]
    entries = har(typed)["log"]["entries"]
    assert json.loads(export(stored, "har")) == har(typed)
    assert len(entries) == 4
    by_connection = {e["connection"]: e for e in entries}
    for record in stored:
        entry = by_connection[str(record["id"])]
        request = record["http"]["requests"][0]
        tls = record["tls"] or {}
        mirror = entry["_mirror"]
        assert mirror["ja4"] == tls.get("ja4") and mirror["ja3_full"] == tls.get("ja3_full")
        assert mirror["ja4t"] == record["tcp"]["ja4t"] and mirror["p0f"] == record["tcp"]["p0f"]
        assert mirror["ja4h"] == request["ja4h"]
        assert mirror["header_order"] == [n for n, _ in request["headers"]]
        assert mirror["not_exact"] == {k: v for k, v in record["emitted"]["fidelity"].items()
                                       if v["status"] != "exact"}
        assert entry["response"]["status"] == (request.get("response") or {}).get("status", 0)
    assert export(stored, "pcap-lite") == pcap_lite(typed)
    packets = _pcap_packets(pcap_lite(typed[:3]))
    assert len(packets) == 6                      # per connection: its SYN, its first data
    for record, (syn, data) in zip(stored[:3], zip(packets[::2], packets[1::2], strict=True), strict=True):
        assert syn.hex() == record["tcp"]["raw"] and parse_syn(syn).ttl == record["tcp"]["ttl"]
        if record["tls"]:
            hello = read_client_hello(data[40:])      # the TLS records as framed
            assert hello.raw.hex() == record["tls"]["raw"]
        else:
            assert data[40:].decode("latin-1") == record["http"]["requests"][0]["raw"]


def _pcap_packets(data: bytes) -> list[bytes]:
    packets, pos = [], 24
    while pos < len(data):
        length = struct.unpack_from("<I", data, pos + 8)[0]
        packets.append(data[pos + 16:pos + 16 + length])
        pos += 16 + length
    return packets


def test_damaged_parts_read_as_absent():
    typed = CaptureRecord.from_stored({
        "id": True, "started": "yesterday", "ended": math.inf, "mode": 7, "client": "x:1",
        "destination": {"host": ["a"], "port": "443", "source": "connect"},
        "tls": {"ja4": 4, "cipher_suites": [1, "2"], "extensions": [None, {"type": 0}],
                "alpn": ["h2", None]},
        "http": {"requests": [None, 3, {"headers": [["a", "b"], ["c"]], "method": "GET"}],
                 "h2": []},
        "emitted": {"fidelity": {"a": None, "b": {"status": "exact"}}, "tcp": {"syn": "x"}},
        "error": {"stage": "relay", "message": 5}})
    assert (typed.id, typed.started, typed.ended, typed.mode, typed.client) == (
        None, None, math.inf, None, None)
    assert (typed.destination.host, typed.destination.port) == (None, None)
    assert typed.tls == TlsPart(extensions=(TlsExtension(), TlsExtension(type=0)))
    assert [r.method for r in typed.http.requests] == [None, None, "GET"]
    assert typed.http.requests[2].headers is None and typed.http.h2 is None
    assert typed.emitted.fidelity == {"a": FieldVerdict(), "b": FieldVerdict("exact")}
    assert typed.emitted.fidelity_share() == 0.5 and typed.emitted.syn is None
    assert typed.error == ErrorPart("relay", None)
    assert CaptureRecord.from_stored([1, 2]) == CaptureRecord.from_stored({}) == CaptureRecord()
    assert CaptureRecord.from_stored({"error": "plain text"}).error == ErrorPart(None, "plain text")


# -- any record: reading, show, summary and export never raise ---------------------------------

TEXT = st.text(max_size=8)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40)
                       | st.floats(allow_nan=False) | TEXT,
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)


def part(**fields):
    """A part shaped as the proxy writes it (any key left out), or anything else."""
    return JSONISH | st.fixed_dictionaries({}, optional=fields)


HEX = st.binary(max_size=60).map(bytes.hex)
LOOPBACK_SYN = ("4500003c587740003f06e5427f0000017f000001a5309563c6b4336e00000000a002ffd753990000"
                "0204ffd70402080a5bc96be5000000000103030a")      # as a Linux client sent it
HEADERS = st.lists(st.lists(TEXT, min_size=2, max_size=2), max_size=3) | JSONISH
REQUEST = part(method=TEXT, target=TEXT, path=TEXT, headers=HEADERS, raw=TEXT, ja4h=TEXT,
               time=st.floats(0, 2e9) | JSONISH,
               response=part(status=st.integers(0, 999), headers=HEADERS,
                             body_size=st.integers(-5, 10**6), time=st.floats(0, 2e9)))
ANY_RECORD = st.fixed_dictionaries({}, optional={
    "id": st.integers(1, 2**40) | JSONISH, "started": st.floats(0, 2e9) | JSONISH,
    "ended": JSONISH, "mode": JSONISH,
    "client": part(addr=TEXT, port=st.integers(0, 70000)),
    "destination": part(host=TEXT, port=st.integers(0, 70000), source=TEXT),
    "tcp": part(ja4t=TEXT, raw=st.just(LOOPBACK_SYN) | HEX | TEXT, ttl=st.integers(0, 300)),
    "tls": part(ja4=TEXT, raw=HEX | TEXT, record_version=st.integers(-1, 2**17),
                record_lengths=st.lists(st.integers(-3, 100), max_size=3),
                cipher_suites=st.lists(st.integers(0, 2**16), max_size=3),
                extensions=st.lists(part(type=st.integers(0, 70000), name=TEXT), max_size=2)),
    "http": part(version=TEXT, h2=part(akamai=TEXT), requests=st.lists(REQUEST, max_size=2)),
    "emitted": part(tls=part(ja4=TEXT), fidelity=st.dictionaries(
        TEXT, part(status=st.sampled_from(["exact", "approximated", "impossible"]),
                   detail=TEXT), max_size=3), tcp=part(syn=part(raw=HEX))),
    "error": JSONISH | part(stage=TEXT, message=TEXT),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=ANY_RECORD)
@example(record={"started": 253402300800.0,               # year 10000: no datetime holds it
                 "http": {"requests": [{"method": "GET", "time": 253402300800.0}]}})
def test_any_record_reads_shows_and_exports_without_raising(record):
    typed = CaptureRecord.from_stored(record)
    assert CaptureRecord.from_stored(record) == typed            # a pure reading
    _rendered(typed)
    summarize(record)
    har([typed])
    pcap_lite([typed])
