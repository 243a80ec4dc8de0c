"""Normalising parsed values into fingerprint-view fields (see :mod:`mirror.fingerprint.view`).

The building blocks every view adapter shares: TLS fields from a
:func:`mirror.fingerprint.report.tls_report` dict (or a reference's ``tls`` section, the same
shape), HTTP/2 fields from an Akamai string, request fields from a header list. Pure functions:
no I/O.

GREASE values are drawn at random per connection, so every list has them replaced by
:data:`GREASE` (their places are kept). Extensions that depend on the connection's state rather
than on the client -- padding (21: BoringSSL pads only hellos of 256-511 bytes, and with GREASE
ECH of random length one client's hello falls on either side), pre_shared_key (41) and
early_data (42) (only when a session is resumed) -- are left out of the extension fields; when
the raw ClientHello is known, its JA4/JA4_o/JA3/JA3N are recomputed without them (the view's
``stateless`` part), so the comparison can tell a difference in those extensions only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mirror.fingerprint.tls import ja3, ja3n, ja4, ja4_o
from mirror.wire.errors import WireError
from mirror.wire.tls import is_grease, parse_client_hello

__all__ = [
    "GREASE",
    "STATE_EXTENSIONS",
    "h2_fields",
    "header_names",
    "http_version",
    "mark_grease",
    "parse_akamai",
    "request_fields",
    "tls_fields",
]

GREASE = "GREASE"
EXT_PADDING = 21
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_ECH = 0xFE0D
STATE_EXTENSIONS = frozenset({EXT_PADDING, EXT_PRE_SHARED_KEY, EXT_EARLY_DATA})
_PSEUDO_NAMES = {"m": ":method", "a": ":authority", "s": ":scheme", "p": ":path"}


def mark_grease(values: Any) -> list[Any] | None:
    """A list with its GREASE values replaced by "GREASE" (places kept); None if not a list."""
    if not isinstance(values, list):
        return None
    return [GREASE if _is_grease(v) else v for v in values]


def _is_grease(value: Any) -> bool:
    return type(value) is int and is_grease(value)


def _key_share_groups(shares: Any) -> list[Any] | None:
    if not isinstance(shares, list):
        return None
    groups = []
    for share in shares:
        if isinstance(share, Mapping):
            groups.append(share.get("group"))
        elif isinstance(share, (list, tuple)) and share:
            groups.append(share[0])
    return mark_grease(groups)


def _stateless(raw_hex: Any, tls: Mapping[str, Any]) -> dict[str, str]:
    """JA4/JA4_o/JA3/JA3N without the connection-state extensions (if the raw hello matches
    ``tls``)."""
    if not isinstance(raw_hex, str) or not raw_hex:
        return {}
    try:
        hello = parse_client_hello(bytes.fromhex(raw_hex))
    except (ValueError, WireError):
        return {}
    ja4_text = tls.get("ja4")
    transport = ja4_text[:1] if isinstance(ja4_text, str) and ja4_text else "t"
    if tls.get("ja4") != ja4(hello, transport):
        return {}  # the report was not computed from this hello: do not trust either
    bare = dataclasses.replace(
        hello, extensions=[e for e in hello.extensions if e.type not in STATE_EXTENSIONS])
    return {"ja4": ja4(bare, transport), "ja4_o": ja4_o(bare, transport), "ja3": ja3(bare),
            "ja3n": ja3n(bare)}


def tls_fields(tls: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """(view fields, stateless composites) from a ``tls_report`` dict or a reference's ``tls``
    section."""
    if not isinstance(tls, Mapping):
        return {}, {}
    out: dict[str, Any] = {}
    for name in ("ja4", "ja4_o", "ja3", "ja3n", "legacy_version"):
        if name in tls:
            out[name] = tls[name]
    if "supported_versions" in tls:
        out["supported_versions"] = mark_grease(tls["supported_versions"])
    if "cipher_suites" in tls:
        out["ciphers"] = mark_grease(tls["cipher_suites"])
    types = tls.get("extension_types")
    if isinstance(types, list):
        types = [t for t in types if type(t) is int]
        ordered = [t for t in types if t not in STATE_EXTENSIONS]
        out["extension_order"] = mark_grease(ordered)
        out["extension_set"] = [GREASE] * sum(map(_is_grease, ordered)) + sorted(
            t for t in ordered if not _is_grease(t))
        out["padding"] = EXT_PADDING in types
        out["resumption"] = EXT_PRE_SHARED_KEY in types
        out["ech"] = EXT_ECH in types
    for source, name in (("supported_groups", "supported_groups"),
                         ("ec_point_formats", "ec_point_formats"),
                         ("signature_algorithms", "signature_algorithms"),
                         ("compress_certificate", "cert_compression"),
                         ("delegated_credentials", "delegated_credentials")):
        if source in tls:
            out[name] = mark_grease(tls[source])
    if "key_shares" in tls:
        out["key_share_groups"] = _key_share_groups(tls["key_shares"])
    for name in ("alpn", "alps"):
        if name in tls:
            out[name] = list(tls[name]) if isinstance(tls[name], list) else tls[name]
    if "record_size_limit" in tls:
        out["record_size_limit"] = tls["record_size_limit"]
    raw = tls.get("raw", tls.get("raw_client_hello"))
    return out, _stateless(raw, tls)


def parse_akamai(text: str) -> dict[str, Any] | None:
    """The parts of an Akamai string ``S|WU|P|PS`` (None when it is not one).

    ``h2_settings``: ``[[id, value], ...]``; ``h2_window_update``: int or None (``00``);
    ``h2_priority_frames``: ``["stream:exclusive:depends_on:weight", ...]``;
    ``h2_pseudo_header_order``: full names (``m`` -> ``:method``...).
    """
    if not isinstance(text, str):
        return None
    parts = text.split("|")
    if len(parts) != 4:
        return None
    settings_text, window_text, priority_text, order_text = parts
    try:
        pairs = (item.split(":", 1) for item in settings_text.split(";") if item)
        settings = [[int(k), int(v)] for k, v in pairs]
        window = None if window_text in ("00", "") else int(window_text)
    except ValueError:
        return None
    priorities = [] if priority_text in ("0", "") else priority_text.split(",")
    order = [_PSEUDO_NAMES.get(letter, letter) for letter in order_text.split(",") if letter]
    return {"h2_settings": settings, "h2_window_update": window, "h2_priority_frames": priorities,
            "h2_pseudo_header_order": order}


def _headers_priority(priority: Any) -> str | None:
    if not isinstance(priority, Mapping):
        return None
    try:
        exclusive, weight = int(bool(priority["exclusive"])), int(priority["weight"]) + 1
        return f"{exclusive}:{priority['depends_on']}:{weight}"
    except (KeyError, TypeError, ValueError):
        return None


def http_version(version: Any) -> str | None:
    """The HTTP version as views name it (``HTTP/2.0`` -> ``HTTP/2``); None if not a string."""
    if not isinstance(version, str):
        return None
    return {"HTTP/2.0": "HTTP/2", "HTTP/3.0": "HTTP/3"}.get(version, version)


def h2_fields(akamai: Any, pseudo_order: Any = None, headers_priority: Any = ...) -> dict[str, Any]:
    """``akamai`` and its parts; the full pseudo-header order when known; the first HEADERS
    frame's priority when given (``...``: not known, the field is left out)."""
    out: dict[str, Any] = {}
    if not isinstance(akamai, str):
        return out
    out["akamai"] = akamai
    parts = parse_akamai(akamai)
    if parts:
        out.update(parts)
    if isinstance(pseudo_order, list) and pseudo_order:
        out["h2_pseudo_header_order"] = list(pseudo_order)
    if headers_priority is not ...:
        out["h2_headers_priority"] = _headers_priority(headers_priority)
    return out


def header_names(headers: Any) -> list[str] | None:
    """Header names (no pseudo-headers) from ``[[name, value], ...]`` or ``[name, ...]``."""
    if not isinstance(headers, list):
        return None
    names = []
    for item in headers:
        name = item[0] if isinstance(item, (list, tuple)) and item else item
        if isinstance(name, str) and not name.startswith(":"):
            names.append(name)
    return names


def request_fields(version: str | None, request: Mapping[str, Any] | None) -> dict[str, Any]:
    """Header order (``header_order`` or ``headers``) and JA4H of one request."""
    if not isinstance(request, Mapping):
        return {}
    names = request.get("header_order")
    names = header_names(names if isinstance(names, list) else request.get("headers"))
    out: dict[str, Any] = {}
    if names is not None and version is not None:
        out["h2_header_order" if version.startswith("HTTP/2") else "h1_header_order"] = names
    if isinstance(request.get("ja4h"), str):
        out["ja4h"] = request["ja4h"]
    return out
