"""Captures out of the store, in formats other tools read. Pure: records in, bytes out
(HAR and pcap-lite read them typed: :class:`mirror.record.capture.CaptureRecord`).

- ``json``: the records as stored (a JSON array, each with its ``id``).
- ``har``: HAR 1.2 as browsers and mitmproxy write it — one entry per request, with the
  response's status and headers where the proxy saw them, and the connection's fingerprints
  attached under ``_mirror`` (JA3, JA4, JA4_o, JA4H, JA4T, p0f, Akamai, fidelity, the TLS
  engine that made the upstream connection and the hello it measured going out).
- ``pcap-lite``: a classic pcap (raw IP) with, per connection, the client's SYN exactly as the
  kernel saved it and one segment carrying its ClientHello (the TLS records as the client framed
  them) — or, for plain HTTP, its request heads — so that tshark, p0f or `mirror fingerprint`
  compute the same JA3/JA4/JA4T/p0f from it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import struct
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

from mirror import __version__
from mirror.record.capture import (
    CaptureRecord,
    DestinationPart,
    FieldVerdict,
    H2Part,
    Headers,
    HttpRequest,
    HttpResponse,
    TcpPart,
    TlsPart,
)
from mirror.wire.checksum import internet_checksum, tcp_checksum
from mirror.wire.errors import WireError
from mirror.wire.tcp import parse_syn

FORMATS = ("json", "har", "pcap-lite")
LINKTYPE_RAW = 101


class ExportError(ValueError):
    """A format name that does not exist."""


def export(records: list[dict], fmt: str) -> bytes:
    """The stored records (dicts, as the store returns them) in format ``fmt``."""
    if fmt == "json":
        return json.dumps(records, indent=2).encode()
    typed = [CaptureRecord.from_stored(record) for record in records]
    if fmt == "har":
        return json.dumps(har(typed), indent=2).encode()
    if fmt == "pcap-lite":
        return pcap_lite(typed)
    raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------ HAR
def _iso(epoch: float | None) -> str:
    """An epoch as ISO 8601 UTC; a damaged one no calendar holds (year 10000 and on, NaN)
    is written like a missing one, as the epoch's start."""
    try:
        moment = dt.datetime.fromtimestamp(epoch or 0, dt.UTC)
    except (ValueError, OverflowError, OSError):
        moment = dt.datetime.fromtimestamp(0, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(pairs: Headers | None) -> list[dict]:
    return [{"name": n, "value": v} for n, v in pairs or () if not n.startswith(":")]


def _header(pairs: Headers | None, name: str) -> str | None:
    """The first value of header ``name`` (any case)."""
    return next((v for n, v in pairs or () if n.lower() == name), None)


def _fingerprints(record: CaptureRecord, request: HttpRequest) -> dict:
    tls = record.tls or TlsPart()
    tcp = record.tcp or TcpPart()
    h2 = (record.http and record.http.h2) or H2Part()
    fidelity: Mapping[str, FieldVerdict] = (record.emitted and record.emitted.fidelity) or {}
    return {
        "capture_id": record.id, "mode": record.mode,
        "ja3": tls.ja3, "ja3_full": tls.ja3_full, "ja4": tls.ja4,
        "ja4_o": tls.ja4_o, "ja4h": request.ja4h, "ja4t": tcp.ja4t,
        "p0f": tcp.p0f, "akamai": h2.akamai,
        "header_order": [n for n, _ in request.headers or ()],
        "not_exact": {name: {"status": verdict.status, "detail": verdict.detail}
                      for name, verdict in fidelity.items() if verdict.status != "exact"},
        "tls_engine": record.upstream.engine if record.upstream else None,
        "sent_hello": _sent_hello(record),
    }


def _sent_hello(record: CaptureRecord) -> dict | None:
    """The hello written upstream as measured on the wire, against the client's: None for a
    connection with no upstream TLS (or a record from before it was measured)."""
    hello = record.emitted and record.emitted.tls and record.emitted.tls.hello
    if not hello:
        return None
    return {"measured": hello.measured, "exact": hello.exact, "ja4": hello.ja4,
            "ja4_o": hello.ja4_o, "ja3": hello.ja3,
            "differences": [{"field": d.field, "client": d.client, "sent": d.sent}
                            for d in hello.differences or ()]}


def _url(record: CaptureRecord, request: HttpRequest) -> str:
    pseudo = {n: v for n, v in request.headers or () if n.startswith(":")}
    target = request.target or pseudo.get(":path") or "/"
    if "://" in target:
        return target
    scheme = pseudo.get(":scheme") or ("https" if record.protocol == "tls" else "http")
    host = pseudo.get(":authority") or _header(request.headers, "host")
    if not host:
        dst = record.destination or DestinationPart()
        host = f"{'unknown' if dst.host is None else dst.host}:{0 if dst.port is None else dst.port}"
    return f"{scheme}://{host}{target}"


def _entry(record: CaptureRecord, request: HttpRequest) -> dict:
    http_version = (record.http and record.http.version) or "HTTP/1.1"
    url = _url(record, request)
    response = request.response or HttpResponse()
    started = request.time or record.started
    answered = response.time
    wait = max(0.0, (answered - started) * 1000) if answered and started else -1
    entry = {
        "startedDateTime": _iso(started),
        "time": max(wait, 0),
        "request": {
            "method": request.method or "GET", "url": url, "httpVersion": http_version,
            "cookies": [], "headers": _headers(request.headers),
            "queryString": _query_string(url),
            "headersSize": len(request.raw) if request.raw else -1,
            "bodySize": -1,
        },
        "response": {
            "status": 0 if response.status is None else response.status,
            "statusText": response.reason or "",
            "httpVersion": http_version, "cookies": [],
            "headers": _headers(response.headers),
            "content": _content(response),
            "redirectURL": _header(response.headers, "location") or "",
            "headersSize": -1, "bodySize": _body_size(response),
        },
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": 0},
        "connection": "" if record.id is None else str(record.id),
        "_mirror": _fingerprints(record, request),
    }
    address = _ip_address(record.destination.host if record.destination else None)
    if address is not None:
        entry["serverIPAddress"] = address
    return entry


def _query_string(url: str) -> list[dict]:
    """The URL's query as HAR name/value pairs (none when the URL does not parse: a recorded
    host such as ``[`` is not a valid URL authority)."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return []
    return [{"name": k, "value": v} for k, v in parse_qsl(query, keep_blank_values=True)]


def _ip_address(host: str | None) -> str | None:
    """The destination when it is an IP address (HAR's serverIPAddress), else None."""
    try:
        return str(ipaddress.ip_address(str(host).strip("[]")))
    except ValueError:
        return None


def _body_size(response: HttpResponse) -> int:
    """Body bytes the server sent (without chunked framing), -1 when not followed."""
    size = response.body_size
    return size if size is not None and size >= 0 else -1


def _content(response: HttpResponse) -> dict:
    """HAR 1.2 ``content``: ``size`` is the body's length as the client received it. mirror
    relays bodies without decoding them, so for an encoded body (Content-Encoding) it is the
    encoded length, and the comment says so; a body not followed has size 0 and says that."""
    content = {"size": max(_body_size(response), 0),
               "mimeType": _header(response.headers, "content-type") or ""}
    encoding = _header(response.headers, "content-encoding")
    if _body_size(response) < 0:
        content["comment"] = "body size not known (the response was not followed)"
    elif encoding and encoding.lower() != "identity":
        content["comment"] = f"size as received, {encoding}-encoded (not decoded)"
    return content


def har(records: Iterable[CaptureRecord]) -> dict:
    """HAR 1.2: one entry per recorded request, oldest first."""
    entries = [_entry(record, request) for record in records
               for request in ((record.http and record.http.requests) or ())]
    entries.sort(key=lambda e: e["startedDateTime"])
    return {"log": {"version": "1.2", "creator": {"name": "mirror", "version": __version__},
                    "pages": [], "entries": entries}}


# ------------------------------------------------------------------------------ pcap-lite
def _ip_packet(src: str, dst: str, ttl: int, tcp_segment: bytes) -> bytes:
    a = ipaddress.ip_address(src)
    if a.version == 4:
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp_segment), 0, 0x4000,
                                       ttl, 6, 0, a.packed, ipaddress.ip_address(dst).packed))
        struct.pack_into("!H", header, 10, internet_checksum(bytes(header)))
        return bytes(header) + tcp_segment
    return (struct.pack("!IHBB", 6 << 28, len(tcp_segment), 6, ttl) + a.packed
            + ipaddress.ip_address(dst).packed + tcp_segment)


def _data_segment(src: str, dst: str, sport: int, dport: int, seq: int, payload: bytes) -> bytes:
    segment = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, 0x18, 65535, 0, 0))
    segment += payload
    struct.pack_into("!H", segment, 16, tcp_checksum(src, dst, bytes(segment)))
    return bytes(segment)


def _tls_records(tls: TlsPart, handshake: bytes) -> bytes:
    version = tls.record_version if tls.record_version and tls.record_version <= 0xFFFF else 0x0301
    out, pos = bytearray(), 0
    for length in tls.record_lengths or [len(handshake)]:
        if length <= 0:
            continue
        chunk = handshake[pos:pos + length]
        out += struct.pack("!BHH", 22, version, len(chunk)) + chunk
        pos += length
    if pos < len(handshake):
        rest = handshake[pos:]
        out += struct.pack("!BHH", 22, version, len(rest)) + rest
    return bytes(out)


def _packets(record: CaptureRecord) -> list[bytes]:
    if record.tcp is None or not record.tcp.raw:
        return []
    tls = record.tls or TlsPart()
    try:
        syn = bytes.fromhex(record.tcp.raw)
        first = parse_syn(syn)
        hello = bytes.fromhex(tls.raw) if tls.raw else b""
    except (ValueError, WireError):       # not hex, or not a SYN: a damaged record is left out
        return []
    if hello:
        payload = _tls_records(tls, hello)
    else:
        requests = (record.http and record.http.requests) or ()
        heads = "".join(request.raw or "" for request in requests)
        payload = heads.encode("latin-1", "replace")   # recorded as latin-1: only damage replaced
    packets = [syn]
    if payload:
        segment = _data_segment(first.src, first.dst, first.sport, first.dport,
                                (first.seq + 1) & 0xFFFFFFFF, payload)
        packets.append(_ip_packet(first.src, first.dst, first.ttl, segment))
    return packets


def pcap_lite(records: Iterable[CaptureRecord]) -> bytes:
    """A classic pcap: per record, the client's SYN and its ClientHello (or HTTP heads)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
    for record in records:
        when = record.started if record.started is not None and 0 <= record.started < 2**32 else 0.0
        for i, packet in enumerate(_packets(record)):
            stamp = when + i * 1e-6
            out += struct.pack("<IIII", int(stamp), int((stamp % 1) * 1e6), len(packet), len(packet))
            out += packet
    return bytes(out)
