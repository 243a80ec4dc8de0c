"""A capture record as a fingerprint view: what ``mirror identify`` and ``captures diff`` compare.

:func:`view_from_record` reads a record as :meth:`CaptureStore.get` returns it (its ``tls``
report and its ``http`` part: version, HTTP/2 Akamai, pseudo-header order and first HEADERS
priority, the first request's header order and JA4H) into a
:class:`mirror.fingerprint.view.FingerprintView`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirror.fingerprint.normalise import h2_fields, http_version, request_fields, tls_fields
from mirror.fingerprint.view import FingerprintView, build_view

__all__ = ["view_from_record"]


def view_from_record(record: Mapping[str, Any], label: str | None = None) -> FingerprintView:
    """The view of a capture record (``CaptureStore.get``): its ``tls`` and ``http`` parts."""
    fields, stateless = tls_fields(record.get("tls"))
    http = record.get("http")
    if isinstance(http, Mapping):
        version = http_version(http.get("version"))
        if version is not None:
            fields["http_version"] = version
        h2 = http.get("h2")
        if isinstance(h2, Mapping):
            fields.update(h2_fields(h2.get("akamai"), h2.get("pseudo_header_order"),
                                     h2.get("headers_priority")))
        requests = http.get("requests")
        if isinstance(requests, list) and requests:
            fields.update(request_fields(version, requests[0]))
    name = label or (f"capture {record['id']}" if "id" in record else "capture")
    return build_view(name, fields, stateless)
