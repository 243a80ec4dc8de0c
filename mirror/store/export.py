"""Captures out of the store, in formats other tools read. Pure: records in, bytes out.

- ``json``: the records as stored (a JSON array, each with its ``id``).
- ``har``: HAR 1.2 as browsers and mitmproxy write it — one entry per request, with the
  response's status and headers where the proxy saw them, and the connection's fingerprints
  attached under ``_mirror`` (JA3, JA4, JA4_o, JA4H, JA4T, p0f, Akamai, fidelity).
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
from urllib.parse import parse_qsl, urlsplit

from mirror import __version__
from mirror.wire.checksum import internet_checksum, tcp_checksum
from mirror.wire.errors import WireError
from mirror.wire.tcp import parse_syn

FORMATS = ("json", "har", "pcap-lite")
LINKTYPE_RAW = 101


class ExportError(ValueError):
    """A format name that does not exist."""


def export(records: list[dict], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(records, indent=2).encode()
    if fmt == "har":
        return json.dumps(har(records), indent=2).encode()
    if fmt == "pcap-lite":
        return pcap_lite(records)
    raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------ HAR
def _iso(epoch: float | None) -> str:
    moment = dt.datetime.fromtimestamp(epoch or 0, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(pairs) -> list[dict]:
    return [{"name": n, "value": v} for n, v in pairs if not n.startswith(":")]


def _fingerprints(record: dict, request: dict) -> dict:
    tls = record.get("tls") or {}
    tcp = record.get("tcp") or {}
    h2 = (record.get("http") or {}).get("h2") or {}
    fidelity = (record.get("emitted") or {}).get("fidelity") or {}
    return {
        "capture_id": record.get("id"), "mode": record.get("mode"),
        "ja3": tls.get("ja3"), "ja3_full": tls.get("ja3_full"), "ja4": tls.get("ja4"),
        "ja4_o": tls.get("ja4_o"), "ja4h": request.get("ja4h"), "ja4t": tcp.get("ja4t"),
        "p0f": tcp.get("p0f"), "akamai": h2.get("akamai"),
        "header_order": [n for n, _ in request.get("headers", [])],
        "not_exact": {k: v for k, v in fidelity.items() if v.get("status") != "exact"},
    }


def _url(record: dict, request: dict) -> str:
    pseudo = {n: v for n, v in request.get("headers", []) if n.startswith(":")}
    target = request.get("target") or pseudo.get(":path") or "/"
    if "://" in target:
        return target
    scheme = pseudo.get(":scheme") or ("https" if record.get("protocol") == "tls" else "http")
    host = pseudo.get(":authority") or next(
        (v for n, v in request.get("headers", []) if n.lower() == "host"), None)
    if not host:
        dst = record.get("destination") or {}
        host = f"{dst.get('host', 'unknown')}:{dst.get('port', 0)}"
    return f"{scheme}://{host}{target}"


def _entry(record: dict, request: dict) -> dict:
    http_version = (record.get("http") or {}).get("version") or "HTTP/1.1"
    url = _url(record, request)
    response = request.get("response") or {}
    started = request.get("time") or record.get("started")
    answered = response.get("time")
    wait = max(0.0, (answered - started) * 1000) if answered and started else -1
    entry = {
        "startedDateTime": _iso(started),
        "time": max(wait, 0),
        "request": {
            "method": request.get("method") or "GET", "url": url, "httpVersion": http_version,
            "cookies": [], "headers": _headers(request.get("headers", [])),
            "queryString": [{"name": k, "value": v}
                            for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)],
            "headersSize": len(request["raw"]) if request.get("raw") else -1,
            "bodySize": -1,
        },
        "response": {
            "status": response.get("status", 0), "statusText": response.get("reason", ""),
            "httpVersion": http_version, "cookies": [],
            "headers": _headers(response.get("headers", [])),
            "content": _content(response),
            "redirectURL": next((v for n, v in response.get("headers", [])
                                 if n.lower() == "location"), ""),
            "headersSize": -1, "bodySize": _body_size(response),
        },
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": 0},
        "connection": str(record.get("id", "")),
        "_mirror": _fingerprints(record, request),
    }
    address = _ip_address((record.get("destination") or {}).get("host"))
    if address is not None:
        entry["serverIPAddress"] = address
    return entry


def _ip_address(host) -> str | None:
    """The destination when it is an IP address (HAR's serverIPAddress), else None."""
    try:
        return str(ipaddress.ip_address(str(host).strip("[]")))
    except ValueError:
        return None


def _body_size(response: dict) -> int:
    """Body bytes the server sent (without chunked framing), -1 when not followed."""
    size = response.get("body_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else -1


def _content(response: dict) -> dict:
    """HAR 1.2 ``content``: ``size`` is the body's length as the client received it. mirror
    relays bodies without decoding them, so for an encoded body (Content-Encoding) it is the
    encoded length, and the comment says so; a body not followed has size 0 and says that."""
    headers = response.get("headers", [])
    content = {"size": max(_body_size(response), 0), "mimeType": next(
        (v for n, v in headers if n.lower() == "content-type"), "")}
    encoding = next((v for n, v in headers if n.lower() == "content-encoding"), None)
    if _body_size(response) < 0:
        content["comment"] = "body size not known (the response was not followed)"
    elif encoding and encoding.lower() != "identity":
        content["comment"] = f"size as received, {encoding}-encoded (not decoded)"
    return content


def har(records: list[dict]) -> dict:
    entries = [_entry(record, request) for record in records
               for request in ((record.get("http") or {}).get("requests") or [])]
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


def _tls_records(tls: dict) -> bytes:
    handshake = bytes.fromhex(tls["raw"])
    version = tls.get("record_version") or 0x0301
    out, pos = bytearray(), 0
    for length in tls.get("record_lengths") or [len(handshake)]:
        chunk = handshake[pos:pos + length]
        out += struct.pack("!BHH", 22, version, len(chunk)) + chunk
        pos += length
    if pos < len(handshake):
        rest = handshake[pos:]
        out += struct.pack("!BHH", 22, version, len(rest)) + rest
    return bytes(out)


def _packets(record: dict) -> list[bytes]:
    tcp = record.get("tcp") or {}
    if not tcp.get("raw"):
        return []
    syn = bytes.fromhex(tcp["raw"])
    try:
        first = parse_syn(syn)
    except WireError:
        return []
    if record.get("tls") and record["tls"].get("raw"):
        payload = _tls_records(record["tls"])
    else:
        heads = [r.get("raw", "") for r in ((record.get("http") or {}).get("requests") or [])]
        payload = "".join(heads).encode("latin-1")
    packets = [syn]
    if payload:
        segment = _data_segment(first.src, first.dst, first.sport, first.dport,
                                (first.seq + 1) & 0xFFFFFFFF, payload)
        packets.append(_ip_packet(first.src, first.dst, first.ttl, segment))
    return packets


def pcap_lite(records: list[dict]) -> bytes:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
    for record in records:
        when = record.get("started") or 0.0
        for i, packet in enumerate(_packets(record)):
            stamp = when + i * 1e-6
            out += struct.pack("<IIII", int(stamp), int((stamp % 1) * 1e6), len(packet), len(packet))
            out += packet
    return bytes(out)
