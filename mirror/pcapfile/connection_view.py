"""One connection of a capture file as a fingerprint view (for ``mirror identify --pcap``).

:func:`view_from_pcap_connection` reads a :class:`mirror.pcapfile.analyze.ConnectionReport`
(its first ClientHello in full) or its ``mirror fingerprint --json`` object (fingerprint
strings and header names only) into a :class:`mirror.fingerprint.view.FingerprintView`.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirror.fingerprint.normalise import h2_fields, header_names, http_version, tls_fields
from mirror.fingerprint.report import tls_report
from mirror.fingerprint.view import FingerprintView, build_view

__all__ = ["view_from_pcap_connection"]


def view_from_pcap_connection(connection: Any, label: str | None = None) -> FingerprintView:
    """The view of one pcap connection: a ``mirror.pcapfile.analyze.ConnectionReport`` (its
    first ClientHello in full) or its ``mirror fingerprint --json`` object (fingerprint
    strings and header names only). The HTTP fields are those of the first request that is
    not a proxy's ``CONNECT`` (a tunnel's own request is not the client's fingerprint)."""
    fields: dict[str, Any] = {}
    stateless: dict[str, str] = {}
    if isinstance(connection, Mapping):
        for name in ("ja4", "ja4_o", "ja3", "ja3n", "alpn"):
            if connection.get(name) is not None:
                fields[name] = connection[name]
        akamai = connection.get("akamai")
        requests = connection.get("http") or []
        src = connection.get("src"), connection.get("sport")
        first = next((r for r in requests if isinstance(r, Mapping)
                      and not str(r.get("ja4h", "")).startswith("co")), None)  # not CONNECT
        names = first.get("headers") if first else None
        ja4h_value = first.get("ja4h") if first else None
        version = None
        if isinstance(ja4h_value, str) and len(ja4h_value) >= 4:
            version = {"10": "HTTP/1.0", "11": "HTTP/1.1", "20": "HTTP/2",
                       "30": "HTTP/3"}.get(ja4h_value[2:4])
    else:
        info = connection.tls[0] if getattr(connection, "tls", None) else None
        if info is not None:
            fields, stateless = tls_fields(tls_report(info.hello, info.transport))
        akamai = connection.akamai
        first = next((r for r in connection.http if r.method != "CONNECT"), None)
        src = connection.src, connection.sport
        names = list(first.headers) if first else None
        ja4h_value = first.ja4h if first else None
        version = http_version(first.version) if first else None
    if version is None and isinstance(akamai, str):
        version = "HTTP/2"
    if version is not None:
        fields["http_version"] = version
    fields.update(h2_fields(akamai))
    if names is not None and version is not None:
        order_field = "h2_header_order" if version == "HTTP/2" else "h1_header_order"
        fields[order_field] = header_names(names)
    if isinstance(ja4h_value, str):
        fields["ja4h"] = ja4h_value
    default = f"{src[0]}:{src[1]}" if src[0] is not None else "connection"
    return build_view(label or default, fields, stateless)
