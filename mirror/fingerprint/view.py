"""The normalised fingerprint of one connection or reference, and the table of its fields.

A :class:`FingerprintView` is what :mod:`mirror.fingerprint.compare` compares: a label and
the fields that were observed, whatever the source (a capture record, a ``mirror echo``
answer, a pcap connection, a reference client). The adapters that build one from each source
live with the code that owns that shape; they share the normalising helpers of
:mod:`mirror.fingerprint.normalise`. Pure values: no I/O.

The fields (absent = not observed; ``None`` = observed absent, e.g. no WINDOW_UPDATE):

* TLS: ``ja4``, ``ja4_o``, ``ja3``, ``ja3n``, ``legacy_version``, ``supported_versions``,
  ``ciphers``, ``extension_order`` (wire order), ``extension_set`` (sorted), ``padding``
  (extension 21 present), ``resumption`` (pre_shared_key, 41, present),
  ``supported_groups``, ``ec_point_formats``,
  ``signature_algorithms``, ``key_share_groups``, ``alpn``, ``alps``, ``cert_compression``,
  ``record_size_limit``, ``delegated_credentials``, ``ech`` (extension 0xfe0d present).
  GREASE values are drawn at random per connection, so every list has them replaced by the
  string ``"GREASE"`` (their places are kept); ``extension_set`` lists the GREASE markers
  first. Extensions that depend on the connection's state rather than on the client --
  padding (21), pre_shared_key (41) and early_data (42) -- are left out of
  ``extension_order``/``extension_set``; JA4/JA4_o/JA3/JA3N recomputed without them are in
  ``FingerprintView.stateless`` when the raw ClientHello was known.
* HTTP: ``http_version``; for HTTP/2 ``akamai`` and its parts ``h2_settings``,
  ``h2_window_update``, ``h2_priority_frames``, ``h2_pseudo_header_order`` (parsed from the
  Akamai string, so they always agree with it), ``h2_headers_priority`` (the first HEADERS
  frame's own priority, ``exclusive:depends_on:weight`` with the RFC weight 1-256) and
  ``h2_header_order``; for HTTP/1 ``h1_header_order`` (exact case); ``ja4h``. Header orders
  are those of the connection's first request, pseudo-headers left out.

:data:`FIELDS` lists them in display order with their weight in
:func:`mirror.fingerprint.compare.score` and, for composites (JA4, JA3, Akamai, JA4H), the
fields they are built from. Heavy: JA4 and Akamai (20 each) and the header order (15);
medium: ``ja3n``, ``http_version``, ``h2_settings``, ``ja4h``, ``ciphers``, ``extension_set``,
``h2_pseudo_header_order`` (3-5); light: every other list or flag (0-3). Composites count
as well as their parts, so a different JA4 always costs more than any single list. The
``*_header_names`` fields are not view fields: the comparison derives them from the orders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIELDS", "VIEW_FIELDS", "FieldSpec", "FingerprintView", "build_view"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One compared field: its name, weight in scoring, and the fields it is built from."""

    name: str
    weight: float
    depends: tuple[str, ...] = ()
    layer: str = "tls"


_HEADERS = ("h2_header_order", "h2_header_names", "h1_header_order", "h1_header_names")

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("ja4", 20, ("supported_versions", "ciphers", "extension_set", "signature_algorithms",
                          "alpn")),
    FieldSpec("ja4_o", 2, ("supported_versions", "ciphers", "extension_order",
                           "signature_algorithms", "alpn")),
    FieldSpec("ja3", 2, ("legacy_version", "ciphers", "extension_order", "supported_groups",
                         "ec_point_formats")),
    FieldSpec("ja3n", 3, ("legacy_version", "ciphers", "extension_set", "supported_groups",
                          "ec_point_formats")),
    FieldSpec("legacy_version", 1),
    FieldSpec("supported_versions", 2),
    FieldSpec("ciphers", 4),
    FieldSpec("extension_order", 1),
    FieldSpec("extension_set", 4),
    FieldSpec("padding", 0),
    FieldSpec("resumption", 0),
    FieldSpec("supported_groups", 3),
    FieldSpec("ec_point_formats", 1),
    FieldSpec("signature_algorithms", 3),
    FieldSpec("key_share_groups", 2),
    FieldSpec("alpn", 3),
    FieldSpec("alps", 2),
    FieldSpec("cert_compression", 2),
    FieldSpec("record_size_limit", 1),
    FieldSpec("delegated_credentials", 1),
    FieldSpec("ech", 1),
    FieldSpec("http_version", 5, layer="http"),
    FieldSpec("akamai", 20, ("h2_settings", "h2_window_update", "h2_priority_frames",
                             "h2_pseudo_header_order"), layer="http2"),
    FieldSpec("h2_settings", 5, layer="http2"),
    FieldSpec("h2_window_update", 3, layer="http2"),
    FieldSpec("h2_priority_frames", 2, layer="http2"),
    FieldSpec("h2_pseudo_header_order", 4, layer="http2"),
    FieldSpec("h2_headers_priority", 2, layer="http2"),
    FieldSpec("h2_header_order", 15, layer="http2"),
    FieldSpec("h2_header_names", 2, layer="http2"),
    FieldSpec("h1_header_order", 15, layer="http1"),
    FieldSpec("h1_header_names", 2, layer="http1"),
    FieldSpec("ja4h", 4, ("http_version",) + _HEADERS, layer="http"),
)
# View fields: every spec but the *_header_names ones, which the comparison derives from the orders.
VIEW_FIELDS = tuple(spec.name for spec in FIELDS if not spec.name.endswith("_header_names"))


@dataclass(frozen=True, slots=True)
class FingerprintView:
    """The normalised fingerprint of one connection or reference.

    ``fields`` holds only what was observed (see the module doc for names and values);
    ``stateless`` holds JA4/JA4_o/JA3/JA3N recomputed without the connection-state
    extensions (padding, pre_shared_key, early_data), when the raw ClientHello was known.
    ``label`` names the source for people ("capture 7", "ref:chrome").
    """

    label: str
    fields: Mapping[str, Any]
    stateless: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.fields

    @property
    def http_version(self) -> str | None:
        return self.fields.get("http_version")

    def replace(self, **changes: Any) -> FingerprintView:
        """A copy with some fields set (a value of ``...`` removes the field)."""
        fields = dict(self.fields)
        for name, value in changes.items():
            if value is ...:
                fields.pop(name, None)
            else:
                fields[name] = value
        return dataclasses.replace(self, fields=fields)


def build_view(label: str, fields: Mapping[str, Any],
               stateless: Mapping[str, str]) -> FingerprintView:
    """A view of the known ``fields`` (others dropped), in :data:`FIELDS` order."""
    known = {name: fields[name] for name in VIEW_FIELDS if name in fields}
    return FingerprintView(label, known, stateless)
