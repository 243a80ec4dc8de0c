"""A reference client as a fingerprint view, in the variant that matches the other side.

A reference (:class:`mirror.identify.references.Reference`) holds its HTTP/2 connection (main
ClientHello) and an HTTP/1.1 connection, of whose ClientHello only the JA4 and ALPN were kept
(``http1.tls_ja4``/``tls_alpn``). :func:`view_from_reference` picks the HTTP part matching
the other side's HTTP version and, when the other side offered exactly the HTTP/1.1-only
ALPN, the HTTP/1.1 connection's JA4 and ALPN (no other TLS field of that hello is known).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirror.fingerprint.normalise import h2_fields, http_version, request_fields, tls_fields
from mirror.fingerprint.view import FingerprintView, build_view
from mirror.identify.references import Reference

__all__ = ["view_from_reference"]


def view_from_reference(reference: Reference,
                        like: FingerprintView | None = None) -> FingerprintView:
    """The view of a reference, in the variant matching ``like``.

    HTTP part: HTTP/2 when ``like`` is HTTP/2 (or when there is no ``like``), HTTP/1.1 when
    ``like`` is HTTP/1.x, none when ``like`` shows no HTTP; a reference lacking that part
    gives its other one. TLS part: the main ClientHello, or only the HTTP/1.1 connection's
    JA4 and ALPN when ``like`` offered exactly that connection's ALPN list.
    """
    data = reference.data  # JSON checked by mirror.identify.references.validate
    http2: Any = data.get("http2")
    http1: Any = data.get("http1")
    tls_main: Any = data.get("tls")
    want = like.http_version if like is not None else "HTTP/2"
    if like is not None and want is None and not any(like.has(n) for n in ("akamai", "ja4h")):
        section = None
    elif want is not None and want.startswith("HTTP/1"):
        section = "http1" if http1 else "http2"
    else:
        section = "http2" if http2 else "http1"

    alpn_h1: Any = http1.get("tls_alpn") if isinstance(http1, Mapping) else None
    h1_hello = (like is not None and like.get("alpn") is not None and alpn_h1 is not None
                and like.get("alpn") == alpn_h1 and tls_main.get("alpn") != alpn_h1
                and isinstance(http1.get("tls_ja4"), str))
    if h1_hello:
        fields: dict[str, Any] = {"ja4": http1["tls_ja4"], "alpn": list(alpn_h1)}
        stateless: dict[str, str] = {}
    else:
        fields, stateless = tls_fields(tls_main)

    if section == "http2":
        fields["http_version"] = "HTTP/2"
        fields.update(h2_fields(http2.get("akamai"), http2.get("pseudo_header_order"),
                                 http2.get("headers_priority")))
        fields.update(request_fields("HTTP/2", http2))
    elif section == "http1":
        version = http_version(http1.get("version")) or "HTTP/1.1"
        fields["http_version"] = version
        fields.update(request_fields(version, http1))
    label = f"ref:{reference.name}"
    if h1_hello or (section == "http1" and http2):
        label += " (HTTP/1.1 connection)"
    return build_view(label, fields, stateless)
