"""A ``mirror echo`` answer as a fingerprint view, to compare what a server saw with references.

:func:`view_from_echo` reads the JSON answer of :mod:`mirror.echo.server` (``tls``,
``http_version``, ``http2``/``http1``) into a :class:`mirror.fingerprint.view.FingerprintView`.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirror.fingerprint.normalise import h2_fields, http_version, request_fields, tls_fields
from mirror.fingerprint.view import FingerprintView, build_view

__all__ = ["view_from_echo"]


def view_from_echo(report: Mapping[str, Any], label: str = "echo") -> FingerprintView:
    """The view of a ``mirror echo`` JSON answer (``tls``, ``http_version``, ``http2``,
    ``http1``)."""
    fields, stateless = tls_fields(report.get("tls"))
    version = http_version(report.get("http_version"))
    if version is not None:
        fields["http_version"] = version
    http2, http1 = report.get("http2"), report.get("http1")
    if version == "HTTP/2" and isinstance(http2, Mapping):
        fields.update(h2_fields(http2.get("akamai"), http2.get("pseudo_header_order"),
                                 http2.get("headers_priority")))
        fields.update(request_fields(version, http2.get("request")))
    elif isinstance(http1, Mapping):
        fields.update(request_fields(version or http_version(http1.get("version")), http1))
    return build_view(label, fields, stateless)
