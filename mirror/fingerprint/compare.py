"""Compare fingerprints field by field: which reference client a connection looks like.

One job: turn what was seen of a connection (a capture record, a ``mirror echo`` report, a
pcap connection) or a reference client (``fingerprints/NAME.json``) into one normalised
:class:`FingerprintView`, compare two views field by field (:func:`diff`), score how near
they are (:func:`score`) and name the reference a connection matches (:func:`identify`).
Pure functions: no I/O.

The view's fields (absent = not observed; ``None`` = observed absent, e.g. no WINDOW_UPDATE):

* TLS: ``ja4``, ``ja4_o``, ``ja3``, ``ja3n``, ``legacy_version``, ``supported_versions``,
  ``ciphers``, ``extension_order`` (wire order), ``extension_set`` (sorted), ``padding``
  (extension 21 present), ``resumption`` (pre_shared_key, 41, present),
  ``supported_groups``, ``ec_point_formats``,
  ``signature_algorithms``, ``key_share_groups``, ``alpn``, ``alps``, ``cert_compression``,
  ``record_size_limit``, ``delegated_credentials``, ``ech`` (extension 0xfe0d present).
  GREASE values are drawn at random per connection, so every list has them replaced by the
  string ``"GREASE"`` (their places are kept); ``extension_set`` lists the GREASE markers
  first. Extensions that depend on the connection's state rather than on the client --
  padding (21: BoringSSL pads only hellos of 256-511 bytes, and with GREASE ECH of random
  length one client's hello falls on either side), pre_shared_key (41) and early_data (42)
  (only when a session is resumed) -- are left out of ``extension_order``/``extension_set``,
  and JA4/JA4_o/JA3/JA3N that differ only by them compare equal (with a note). That needs
  the raw ClientHello of at least one side: its fingerprints are recomputed without those
  extensions (``FingerprintView.stateless``) and compared with the other side's recomputed
  ones, or with its plain string when the other side's raw hello is unknown.
* HTTP: ``http_version``; for HTTP/2 ``akamai`` and its parts ``h2_settings``,
  ``h2_window_update``, ``h2_priority_frames``, ``h2_pseudo_header_order`` (parsed from the
  Akamai string, so they always agree with it), ``h2_headers_priority`` (the first HEADERS
  frame's own priority, ``exclusive:depends_on:weight`` with the RFC weight 1-256) and
  ``h2_header_order``; for HTTP/1 ``h1_header_order`` (exact case); ``ja4h``. Header orders
  are those of the connection's first request, pseudo-headers left out.

Header order (a decision, since requests differ): the two lists are compared on the names
both have (HTTP/1: names matched case-insensitively, then compared with their case) -- equal
when those shared names come in the same order (and at least one is shared). Names only one
side sends are a separate field (``h2_header_names``/``h1_header_names``: A's extra names vs
B's): they are reported as a difference but do not decide exactness, because which headers
a client sends depends on the request (cookies, referer, cache-control on a reload...).

Differences explained by another difference: JA4, JA3, Akamai and JA4H are built from other
fields. A :class:`FieldDiff` of such a composite lists in ``explained_by`` the differing
fields it is built from; :attr:`Candidate.differing` (the "root" differences) leaves the
explained ones out, so dropping one cipher is reported as ``ciphers``, not as
``ciphers, ja4, ja4_o, ja3, ja3n``.

Scoring (:func:`score`): each field has a weight (:data:`FIELDS`); the score is
``100 * sum(weights of equal fields) / sum(weights of compared fields)``, a field being
compared when both sides show it. Heavy: JA4 and Akamai (20 each) and the header order (15);
medium: ``ja3n``, ``http_version``, ``h2_settings``, ``ja4h``, ``ciphers``, ``extension_set``,
``h2_pseudo_header_order`` (3-5); light: every other list or flag (0-3). Composites count
as well as their parts, so a different JA4 always costs more than any single list.

Exact identification (:func:`identify`): the key fields are ``ja4`` plus, when the connection
is HTTP/2, ``akamai`` and ``h2_header_order``, or, for HTTP/1, ``h1_header_order``. A
reference matches exactly when every key field the connection shows is equal (JA4_o is not
required: Chrome permutes its extensions per connection). Key fields the connection does not
show (HTTP inside TLS in a pcap without secrets) are listed in ``unobserved``; such a match
is "exact on what was seen" and :attr:`Identification.complete` is False. Several references
may match exactly (curl_cffi's Chrome and Debian's Chromium share JA4, Akamai and header
order): all are in ``tied``, nearest first; ``exact`` is the nearest of them.

Reference variants: a reference holds its HTTP/2 connection (main ClientHello) and an
HTTP/1.1 connection, of whose ClientHello only the JA4 and ALPN were kept
(``http1.tls_ja4``/``tls_alpn``). :func:`view_from_reference` picks the HTTP part matching
the other side's HTTP version and, when the other side offered exactly the HTTP/1.1-only
ALPN, the HTTP/1.1 connection's JA4 and ALPN (no other TLS field of that hello is known).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mirror.fingerprint.report import tls_report
from mirror.fingerprint.tls import ja3, ja3n, ja4, ja4_o
from mirror.wire.errors import WireError
from mirror.wire.tls import is_grease, parse_client_hello

__all__ = [
    "FIELDS",
    "GREASE",
    "Candidate",
    "FieldDiff",
    "FieldSpec",
    "FingerprintView",
    "Identification",
    "diff",
    "differing",
    "display_value",
    "identify",
    "key_fields",
    "parse_akamai",
    "score",
    "view_from_echo",
    "view_from_pcap_connection",
    "view_from_record",
    "view_from_reference",
]

GREASE = "GREASE"
EXT_PADDING = 21
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_ECH = 0xFE0D
STATE_EXTENSIONS = frozenset({EXT_PADDING, EXT_PRE_SHARED_KEY, EXT_EARLY_DATA})
_STATELESS_COMPOSITES = ("ja4", "ja4_o", "ja3", "ja3n")
_PSEUDO_NAMES = {"m": ":method", "a": ":authority", "s": ":scheme", "p": ":path"}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One compared field: its name, weight in :func:`score`, and the fields it is built from."""

    name: str
    weight: float
    depends: tuple[str, ...] = ()
    layer: str = "tls"


_HEADERS = ("h2_header_order", "h2_header_names", "h1_header_order", "h1_header_names")

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("ja4", 20, ("supported_versions", "ciphers", "extension_set", "signature_algorithms", "alpn")),
    FieldSpec("ja4_o", 2, ("supported_versions", "ciphers", "extension_order", "signature_algorithms", "alpn")),
    FieldSpec("ja3", 2, ("legacy_version", "ciphers", "extension_order", "supported_groups", "ec_point_formats")),
    FieldSpec("ja3n", 3, ("legacy_version", "ciphers", "extension_set", "supported_groups", "ec_point_formats")),
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
    FieldSpec("akamai", 20, ("h2_settings", "h2_window_update", "h2_priority_frames", "h2_pseudo_header_order"),
              layer="http2"),
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
_SPECS = {spec.name: spec for spec in FIELDS}
# View fields: every spec except the *_header_names ones, which diff() derives from the orders.
_VIEW_FIELDS = tuple(spec.name for spec in FIELDS if not spec.name.endswith("_header_names"))


@dataclass(frozen=True, slots=True)
class FingerprintView:
    """The normalised fingerprint of one connection or reference.

    ``fields`` holds only what was observed (see the module doc for names and values);
    ``stateless`` holds JA4/JA4_o/JA3/JA3N recomputed without the connection-state
    extensions (padding, pre_shared_key, early_data), when the raw ClientHello was known. ``label`` names the source for people ("capture 7", "ref:chrome").
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


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field of two views: ``equal`` True/False, or None when only one side shows it.

    ``note`` says why two different-looking values compare equal, or how they differ;
    ``explained_by`` lists the differing fields this composite field is built from.
    """

    name: str
    a: Any
    b: Any
    equal: bool | None
    note: str = ""
    explained_by: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.name, "a": self.a, "b": self.b, "equal": self.equal,
                "note": self.note, "explained_by": list(self.explained_by)}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One reference compared with the connection: its score and root differences."""

    name: str
    score: float
    differing: tuple[str, ...]
    diffs: tuple[FieldDiff, ...] = field(repr=False)
    reference: Any = field(repr=False, compare=False)
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Identification:
    """Which reference a view is: ``exact`` (or None), all exact ``tied`` ones, ``nearest`` all."""

    view: FingerprintView
    key_fields: tuple[str, ...]
    unobserved: tuple[str, ...]
    exact: Any | None
    tied: tuple[Any, ...]
    nearest: tuple[Candidate, ...]

    @property
    def complete(self) -> bool:
        """True when every key field was observed (an exact match is then a full one)."""
        return not self.unobserved


# --------------------------------------------------------------------------- normalising


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
    """JA4/JA4_o/JA3/JA3N without the connection-state extensions (if the raw hello matches ``tls``)."""
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
    bare = dataclasses.replace(hello, extensions=[e for e in hello.extensions if e.type not in STATE_EXTENSIONS])
    return {"ja4": ja4(bare, transport), "ja4_o": ja4_o(bare, transport), "ja3": ja3(bare),
            "ja3n": ja3n(bare)}


def _tls_fields(tls: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """View fields from a ``tls_report`` dict or a reference's ``tls`` section."""
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
    for source, name in (("supported_groups", "supported_groups"), ("ec_point_formats", "ec_point_formats"),
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
        settings = [[int(k), int(v)] for k, v in (item.split(":", 1) for item in settings_text.split(";") if item)]
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
        return f"{int(bool(priority['exclusive']))}:{priority['depends_on']}:{int(priority['weight']) + 1}"
    except (KeyError, TypeError, ValueError):
        return None


def _http_version(version: Any) -> str | None:
    if not isinstance(version, str):
        return None
    return {"HTTP/2.0": "HTTP/2", "HTTP/3.0": "HTTP/3"}.get(version, version)


def _h2_fields(akamai: Any, pseudo_order: Any = None, headers_priority: Any = ...) -> dict[str, Any]:
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


def _names(headers: Any) -> list[str] | None:
    """Header names (no pseudo-headers) from ``[[name, value], ...]`` or ``[name, ...]``."""
    if not isinstance(headers, list):
        return None
    names = []
    for item in headers:
        name = item[0] if isinstance(item, (list, tuple)) and item else item
        if isinstance(name, str) and not name.startswith(":"):
            names.append(name)
    return names


def _request_fields(version: str | None, request: Mapping[str, Any] | None) -> dict[str, Any]:
    if not isinstance(request, Mapping):
        return {}
    names = request.get("header_order")
    names = _names(names if isinstance(names, list) else request.get("headers"))
    out: dict[str, Any] = {}
    if names is not None and version is not None:
        out["h2_header_order" if version.startswith("HTTP/2") else "h1_header_order"] = names
    if isinstance(request.get("ja4h"), str):
        out["ja4h"] = request["ja4h"]
    return out


def _ordered(label: str, fields: dict[str, Any], stateless: dict[str, str]) -> FingerprintView:
    return FingerprintView(label, {name: fields[name] for name in _VIEW_FIELDS if name in fields}, stateless)


# --------------------------------------------------------------------------- views


def view_from_record(record: Mapping[str, Any], label: str | None = None) -> FingerprintView:
    """The view of a capture record (``CaptureStore.get``): its ``tls`` and ``http`` parts."""
    fields, stateless = _tls_fields(record.get("tls"))
    http = record.get("http")
    if isinstance(http, Mapping):
        version = _http_version(http.get("version"))
        if version is not None:
            fields["http_version"] = version
        h2 = http.get("h2")
        if isinstance(h2, Mapping):
            fields.update(_h2_fields(h2.get("akamai"), h2.get("pseudo_header_order"),
                                     h2.get("headers_priority")))
        requests = http.get("requests")
        if isinstance(requests, list) and requests:
            fields.update(_request_fields(version, requests[0]))
    name = label or (f"capture {record['id']}" if "id" in record else "capture")
    return _ordered(name, fields, stateless)


def view_from_echo(report: Mapping[str, Any], label: str = "echo") -> FingerprintView:
    """The view of a ``mirror echo`` JSON answer (``tls``, ``http_version``, ``http2``/``http1``)."""
    fields, stateless = _tls_fields(report.get("tls"))
    version = _http_version(report.get("http_version"))
    if version is not None:
        fields["http_version"] = version
    http2, http1 = report.get("http2"), report.get("http1")
    if version == "HTTP/2" and isinstance(http2, Mapping):
        fields.update(_h2_fields(http2.get("akamai"), http2.get("pseudo_header_order"),
                                 http2.get("headers_priority")))
        fields.update(_request_fields(version, http2.get("request")))
    elif isinstance(http1, Mapping):
        fields.update(_request_fields(version or _http_version(http1.get("version")), http1))
    return _ordered(label, fields, stateless)


def view_from_reference(reference: Any, like: FingerprintView | None = None) -> FingerprintView:
    """The view of a :class:`mirror.references.Reference`, in the variant matching ``like``.

    HTTP part: HTTP/2 when ``like`` is HTTP/2 (or when there is no ``like``), HTTP/1.1 when
    ``like`` is HTTP/1.x, none when ``like`` shows no HTTP; a reference lacking that part
    gives its other one. TLS part: the main ClientHello, or only the HTTP/1.1 connection's
    JA4 and ALPN when ``like`` offered exactly that connection's ALPN list.
    """
    data = reference.data
    http2, http1 = data.get("http2"), data.get("http1")
    tls_main = data.get("tls")
    want = like.http_version if like is not None else "HTTP/2"
    if like is not None and want is None and not any(like.has(n) for n in ("akamai", "ja4h")):
        section = None
    elif want is not None and want.startswith("HTTP/1"):
        section = "http1" if http1 else "http2"
    else:
        section = "http2" if http2 else "http1"

    alpn_h1 = http1.get("tls_alpn") if isinstance(http1, Mapping) else None
    h1_hello = (like is not None and like.get("alpn") is not None and alpn_h1 is not None
                and like.get("alpn") == alpn_h1 and tls_main.get("alpn") != alpn_h1
                and isinstance(http1.get("tls_ja4"), str))
    if h1_hello:
        fields: dict[str, Any] = {"ja4": http1["tls_ja4"], "alpn": list(alpn_h1)}
        stateless: dict[str, str] = {}
    else:
        fields, stateless = _tls_fields(tls_main)

    if section == "http2":
        fields["http_version"] = "HTTP/2"
        fields.update(_h2_fields(http2.get("akamai"), http2.get("pseudo_header_order"),
                                 http2.get("headers_priority")))
        fields.update(_request_fields("HTTP/2", http2))
    elif section == "http1":
        version = _http_version(http1.get("version")) or "HTTP/1.1"
        fields["http_version"] = version
        fields.update(_request_fields(version, http1))
    label = f"ref:{reference.name}"
    if h1_hello or (section == "http1" and http2):
        label += " (HTTP/1.1 connection)"
    return _ordered(label, fields, stateless)


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
            version = {"10": "HTTP/1.0", "11": "HTTP/1.1", "20": "HTTP/2", "30": "HTTP/3"}.get(ja4h_value[2:4])
    else:
        info = connection.tls[0] if getattr(connection, "tls", None) else None
        if info is not None:
            fields, stateless = _tls_fields(tls_report(info.hello, info.transport))
        akamai = connection.akamai
        first = next((r for r in connection.http if r.method != "CONNECT"), None)
        src = connection.src, connection.sport
        names = list(first.headers) if first else None
        ja4h_value = first.ja4h if first else None
        version = _http_version(first.version) if first else None
    if version is None and isinstance(akamai, str):
        version = "HTTP/2"
    if version is not None:
        fields["http_version"] = version
    fields.update(_h2_fields(akamai))
    if names is not None and version is not None:
        fields["h2_header_order" if version == "HTTP/2" else "h1_header_order"] = _names(names)
    if isinstance(ja4h_value, str):
        fields["ja4h"] = ja4h_value
    default = f"{src[0]}:{src[1]}" if src[0] is not None else "connection"
    return _ordered(label or default, fields, stateless)


# --------------------------------------------------------------------------- comparing


def _order_diff(name: str, a: list[str], b: list[str], fold_case: bool) -> tuple[FieldDiff, FieldDiff]:
    def key(header: str) -> str:
        return header.lower() if fold_case else header

    a_keys, b_keys = {key(n) for n in a}, {key(n) for n in b}
    shared = a_keys & b_keys
    a_shared = [n for n in a if key(n) in shared]
    b_shared = [n for n in b if key(n) in shared]
    only_a = [n for n in a if key(n) not in b_keys]
    only_b = [n for n in b if key(n) not in a_keys]
    if not shared and (a or b):
        order = FieldDiff(name, a, b, False, "no header name in common")
    elif a_shared == b_shared:
        note = f"the {len(shared)} shared names in the same order" if (only_a or only_b) else ""
        order = FieldDiff(name, a, b, True, note)
    elif [n.lower() for n in a_shared] == [n.lower() for n in b_shared]:
        cases = [f"{x}/{y}" for x, y in zip(a_shared, b_shared, strict=True) if x != y]
        order = FieldDiff(name, a, b, False, "same order, different case: " + ", ".join(cases))
    else:
        first = next(i for i, (x, y) in enumerate(zip(a_shared, b_shared, strict=True)) if x != y)
        order = FieldDiff(name, a, b, False,
                          f"shared names in another order from position {first + 1}: "
                          f"{a_shared[first]} vs {b_shared[first]}")
    names_field = name.replace("_order", "_names")
    notes = []
    if only_a:
        notes.append("only in A: " + ", ".join(only_a))
    if only_b:
        notes.append("only in B: " + ", ".join(only_b))
    names = FieldDiff(names_field, only_a, only_b, not only_a and not only_b, "; ".join(notes))
    return order, names


def _simple_diff(name: str, a: FingerprintView, b: FingerprintView) -> FieldDiff:
    va, vb = a.fields[name], b.fields[name]
    if va == vb:
        return FieldDiff(name, va, vb, True)
    # a side without a raw hello is taken as it is (reference hellos are fresh sessions)
    if (name in _STATELESS_COMPOSITES and (name in a.stateless or name in b.stateless)
            and a.stateless.get(name, va) == b.stateless.get(name, vb)):
        return FieldDiff(name, va, vb, True, "equal without padding / pre_shared_key / early_data "
                             "(extensions that depend on the hello's length and on resumption)")
    note = ""
    if name == "extension_order" and isinstance(va, list) and isinstance(vb, list) and sorted(
            map(str, va)) == sorted(map(str, vb)):
        note = "same extensions in another order (Chrome permutes them per connection)"
    return FieldDiff(name, va, vb, False, note)


def diff(a: FingerprintView, b: FingerprintView) -> list[FieldDiff]:
    """Every field either view shows, in :data:`FIELDS` order, compared (see the module doc)."""
    raw: dict[str, FieldDiff] = {}
    for name in _VIEW_FIELDS:
        in_a, in_b = a.has(name), b.has(name)
        if not in_a and not in_b:
            continue
        if name in ("h2_header_order", "h1_header_order"):
            names_field = name.replace("_order", "_names")
            if in_a and in_b and isinstance(a.fields[name], list) and isinstance(b.fields[name], list):
                raw[name], raw[names_field] = _order_diff(name, a.fields[name], b.fields[name],
                                                          fold_case=name.startswith("h1"))
            else:
                raw[name] = FieldDiff(name, a.get(name), b.get(name), None,
                                      "only " + ("A" if in_a else "B") + " shows it")
            continue
        if not (in_a and in_b):
            raw[name] = FieldDiff(name, a.get(name), b.get(name), None,
                                  "only " + ("A" if in_a else "B") + " shows it")
            continue
        raw[name] = _simple_diff(name, a, b)
    out = []
    for spec in FIELDS:
        entry = raw.get(spec.name)
        if entry is None:
            continue
        if entry.equal is False and spec.depends:
            causes = tuple(dep for dep in spec.depends if dep in raw and raw[dep].equal is False)
            if causes:
                entry = dataclasses.replace(entry, explained_by=causes)
        out.append(entry)
    return out


def differing(diffs: Sequence[FieldDiff], *, roots_only: bool = True) -> tuple[str, ...]:
    """Names of the fields that differ (by default without those explained by another)."""
    return tuple(d.name for d in diffs if d.equal is False and not (roots_only and d.explained_by))


def score(diffs: Sequence[FieldDiff]) -> float:
    """0-100: the weighted share of compared fields that are equal (see the module doc)."""
    total = equal = 0.0
    for entry in diffs:
        if entry.equal is None:
            continue
        weight = _SPECS[entry.name].weight
        total += weight
        if entry.equal:
            equal += weight
    return round(100.0 * equal / total, 1) if total else 0.0


def key_fields(view: FingerprintView) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(key fields the view shows, key parts it does not show) -- see :func:`identify`."""
    keys: list[str] = []
    missing: list[str] = []
    (keys if view.has("ja4") else missing).append("ja4")
    version = view.http_version
    if version == "HTTP/2":
        for name in ("akamai", "h2_header_order"):
            (keys if view.has(name) else missing).append(name)
    elif version is not None and version.startswith("HTTP/1"):
        (keys if view.has("h1_header_order") else missing).append("h1_header_order")
    else:
        missing.append("http")
    return tuple(keys), tuple(missing)


def identify(view: FingerprintView, references: Sequence[Any]) -> Identification:
    """Compare ``view`` with every reference: the exact match(es) and all, nearest first."""
    keys, unobserved = key_fields(view)
    candidates = []
    for reference in references:
        diffs = tuple(diff(view, view_from_reference(reference, like=view)))
        by_name = {d.name: d for d in diffs}
        exact = bool(keys) and all(name in by_name and by_name[name].equal is True for name in keys)
        candidates.append(Candidate(reference.name, score(diffs), differing(diffs), diffs, reference, exact))
    candidates.sort(key=lambda c: (not c.exact, -c.score, c.name))
    nearest = tuple(sorted(candidates, key=lambda c: (-c.score, not c.exact, c.name)))
    tied = tuple(c.reference for c in candidates if c.exact)
    return Identification(view, keys, unobserved, tied[0] if tied else None, tied, nearest)


# --------------------------------------------------------------------------- display

_HEX_LISTS = {"ciphers", "extension_order", "extension_set", "supported_groups", "signature_algorithms",
              "key_share_groups", "supported_versions", "cert_compression", "delegated_credentials"}


def display_value(name: str, value: Any) -> str:
    """A field value as people read it: code lists in hex, settings as ``id:value``..."""
    if value is None:
        return "none"
    if name in _HEX_LISTS and isinstance(value, list):
        return ",".join(f"{v:04x}" if type(v) is int and v >= 0 else str(v) for v in value) or "(empty)"
    if name == "legacy_version" and type(value) is int and value >= 0:
        return f"{value:04x}"
    if name == "h2_settings" and isinstance(value, list):
        return ";".join(":".join(map(str, pair)) if isinstance(pair, list) else str(pair)
                        for pair in value) or "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(empty)"
    return str(value)
