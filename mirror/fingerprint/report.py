"""JSON-ready views of what was seen on each layer, with every fingerprint computed.

The echo server answers with these, the capture store keeps them, the CLI prints them. Pure
functions over parsed values: the same input always gives the same dict, nothing is
normalised away (header case, order, duplicates and GREASE values are all kept).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mirror.fingerprint.http import akamai, ja4h_all
from mirror.fingerprint.tcp import ja4t, p0f_signature
from mirror.fingerprint.tls import tls_fingerprints
from mirror.wire.tcp import TcpSyn
from mirror.wire.tls import ClientHello, is_grease

if TYPE_CHECKING:
    from mirror.wire.http1 import RequestHead
    from mirror.wire.http2 import H2Fingerprint, Priority

_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return names


def jsonable(value: Any) -> Any:
    """bytes -> hex, dataclasses -> dicts, tuples -> lists, recursively."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if dataclasses.is_dataclass(kind):
        return {name: jsonable(getattr(value, name)) for name in _field_names(kind)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def tcp_report(syn: TcpSyn | None, error: str | None = None) -> dict[str, Any]:
    """The client's SYN: IP and TCP header fields, options in order, JA4T and p0f signature."""
    if syn is None:
        return {"error": error or "no SYN"}
    return {
        "ip_version": syn.ip_version,
        "src": syn.src,
        "dst": syn.dst,
        "sport": syn.sport,
        "dport": syn.dport,
        "ttl": syn.ttl,
        "df": syn.df,
        "ip_id": syn.ip_id,
        "tos": syn.tos,
        "ecn": syn.ecn,
        "flow_label": syn.flow_label,
        "ip_options": syn.ip_options.hex(),
        "flags": syn.flags,
        "window": syn.window,
        "options": [{"kind": o.kind, "data": o.data.hex()} for o in syn.options],
        "option_kinds": syn.option_kinds,
        "mss": syn.mss,
        "wscale": syn.wscale,
        "sack_permitted": syn.sack_permitted,
        "timestamps": list(syn.timestamps) if syn.timestamps else None,
        "raw": syn.raw.hex(),
        "ja4t": ja4t(syn),
        "p0f": p0f_signature(syn),
    }


def tls_report(hello: ClientHello, transport: str = "t") -> dict[str, Any]:
    """Every ClientHello field in wire order (raw and typed) plus JA3, JA3N and JA4 variants."""
    ech = hello.ech
    report: dict[str, Any] = {
        "record_version": hello.record_version,
        "record_lengths": hello.record_lengths,
        "legacy_version": hello.legacy_version,
        "session_id": hello.session_id.hex(),
        "cipher_suites": hello.cipher_suites,
        "compression_methods": hello.compression_methods,
        "extensions": [
            {"type": e.type, "name": e.name, "data": e.data.hex(), "value": jsonable(e.value)}
            for e in hello.extensions
        ],
        "extension_types": hello.extension_types,
        "sni": hello.sni,
        "alpn": hello.alpn,
        "supported_groups": hello.supported_groups,
        "ec_point_formats": hello.ec_point_formats,
        "signature_algorithms": hello.signature_algorithms,
        "supported_versions": hello.supported_versions,
        "key_shares": [{"group": g, "length": n} for g, n in hello.key_shares],
        "psk_key_exchange_modes": hello.psk_key_exchange_modes,
        "compress_certificate": hello.compress_certificate,
        "record_size_limit": hello.record_size_limit,
        "delegated_credentials": hello.delegated_credentials,
        "alps": hello.alps,
        "ech": jsonable(ech) if ech else None,
        "padding": hello.padding_length,
        "grease": {
            "cipher_suites": [c for c in hello.cipher_suites if is_grease(c)],
            "extensions": [t for t in hello.extension_types if is_grease(t)],
            "supported_groups": [g for g in hello.supported_groups if is_grease(g)],
        },
        "raw": hello.raw.hex(),
    }
    report.update(tls_fingerprints(hello, transport))
    return report


def http1_report(head: RequestHead) -> dict[str, Any]:
    """One HTTP/1.x request head: request line, headers as sent, header order and JA4H."""
    report = http1_request_fields(head)
    report.update(ja4h_all(head.method, head.version, report["headers"]))
    return report


def http1_request_fields(head: RequestHead) -> dict[str, Any]:
    """``http1_report`` without the JA4H strings (``ja4h_all`` of its method, version and
    headers makes them)."""
    headers = [[n, v] for n, v in head.headers]
    return {
        "method": head.method,
        "target": head.target,
        "version": head.version,
        "headers": headers,
        "header_order": [n for n, _ in headers],
        "raw": head.raw.decode("latin-1"),
    }


def http2_request_report(
    headers: list[tuple[str, str]], priority: Priority | None = None
) -> dict[str, Any]:
    """One HTTP/2 request: its header block in order (pseudo-headers included) and JA4H."""
    report = http2_request_fields(headers, priority)
    report.update(ja4h_all(report["method"], "HTTP/2", headers))
    return report


def http2_request_fields(
    headers: list[tuple[str, str]], priority: Priority | None = None
) -> dict[str, Any]:
    """``http2_request_report`` without the JA4H strings (``ja4h_all`` of its method,
    "HTTP/2" and headers makes them)."""
    method = next((v for n, v in headers if n == ":method"), "")
    return {
        "method": method,
        "path": next((v for n, v in headers if n == ":path"), None),
        "headers": [[n, v] for n, v in headers],
        "pseudo_header_order": [n for n, _ in headers if n.startswith(":")],
        "header_order": [n for n, _ in headers if not n.startswith(":")],
        "priority": jsonable(priority) if priority else None,
    }


def http2_connection_report(
    fingerprint: H2Fingerprint | None, frames: list[dict[str, Any]]
) -> dict[str, Any]:
    """The client's HTTP/2 connection start: SETTINGS, WINDOW_UPDATE, PRIORITY, Akamai string."""
    if fingerprint is None:
        return {"frames": frames}
    return {
        "settings": [[k, v] for k, v in fingerprint.settings],
        "window_update": fingerprint.window_update,
        "priority_frames": jsonable(fingerprint.priority_frames),
        "headers_priority": jsonable(fingerprint.headers_priority),
        "pseudo_header_order": fingerprint.pseudo_header_order,
        "akamai": akamai(fingerprint),
        "frames": frames,
    }
