"""A stored capture record, read typed: ``CaptureRecord.from_stored(record)``.

The store keeps each record as the JSON the proxy wrote (:mod:`mirror.record.shape`); this is
how the store's summary, render and export and ``mirror check`` read it, by attribute. A
record comes from a connection that may have failed anywhere, or from an older or damaged
store, so reading never raises: a part that is missing, ``null`` or not an object reads as
``None``; a value of the wrong type reads as ``None`` (``bool`` is never a number); a list
of numbers, strings or header pairs with one entry of the wrong type reads as ``None``;
an entry of a list of objects (requests, extensions) that is not an object reads as an empty
part. Every part has only defaults, so ``TlsPart()`` is an empty TLS part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AlpnPart",
    "ByteCounts",
    "CaptureRecord",
    "ClientPart",
    "DestinationPart",
    "EmittedPart",
    "EmittedTlsPart",
    "ErrorPart",
    "FieldVerdict",
    "H2Part",
    "H2Priority",
    "HttpPart",
    "HttpRequest",
    "HttpResponse",
    "KeyShare",
    "TcpPart",
    "TlsExtension",
    "TlsPart",
    "UpstreamPart",
]

Headers = tuple[tuple[str, str], ...]


# Exact types are tested first: a decoded record holds nothing else, and a record is read on
# the store's writer for every connection (its summary columns).

def _str(value: Any) -> str | None:
    return value if type(value) is str or isinstance(value, str) else None


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _int(value: Any) -> int | None:
    return value if _is_int(value) else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if _is_mapping(value) else None


def _ints(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(map(_is_int, value)):
        return tuple(value)
    return None


def _strs(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(type(v) is str or isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _headers(value: Any) -> Headers | None:
    """``[[name, value], ...]`` as pairs."""
    if not isinstance(value, list):
        return None
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2
                and isinstance(pair[0], str) and isinstance(pair[1], str)):
            return None
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _objects(value: Any) -> list[Mapping[str, Any]] | None:
    """A list of objects, an entry that is not one as an empty one."""
    if not isinstance(value, list):
        return None
    return [v if _is_mapping(v) else {} for v in value]


# ------------------------------------------------------------------------- connection parts
@dataclass(frozen=True, slots=True)
class ClientPart:
    """``client``: the client's address and port."""

    addr: str | None = None
    port: int | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> ClientPart:
        return cls(_str(part.get("addr")), _int(part.get("port")))


@dataclass(frozen=True, slots=True)
class DestinationPart:
    """``destination``: where the client was going, and how the proxy learnt it."""

    host: str | None = None
    port: int | None = None
    source: str | None = None     # connect, socks5, redirect, tproxy, reverse, ...

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> DestinationPart:
        return cls(_str(part.get("host")), _int(part.get("port")), _str(part.get("source")))


@dataclass(frozen=True, slots=True)
class AlpnPart:
    """``alpn``: the protocols the client offered, the server chose, the client was given."""

    offered: tuple[str, ...] | None = None
    upstream: str | None = None
    client: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> AlpnPart:
        return cls(_strs(part.get("offered")), _str(part.get("upstream")),
                   _str(part.get("client")))


@dataclass(frozen=True, slots=True)
class UpstreamPart:
    """``upstream``: the route taken (direct or via a proxy) and why it failed, if it did."""

    route: str | None = None
    error: str | None = None
    proxy_exchange: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> UpstreamPart:
        return cls(_str(part.get("route")), _str(part.get("error")),
                   _str(part.get("proxy_exchange")))


@dataclass(frozen=True, slots=True)
class ByteCounts:
    """``bytes``: what the client sent up and received down."""

    up: int | None = None
    down: int | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> ByteCounts:
        return cls(_int(part.get("up")), _int(part.get("down")))


@dataclass(frozen=True, slots=True)
class ErrorPart:
    """``error``: the stage that failed and what happened (a plain string is its message)."""

    stage: str | None = None
    message: str | None = None

    @classmethod
    def from_stored(cls, value: Any) -> ErrorPart | None:
        if isinstance(value, str):
            return cls(message=value)
        if _is_mapping(value):
            return cls(_str(value.get("stage")), _str(value.get("message")))
        return None


# ------------------------------------------------------------------------- fingerprints
@dataclass(frozen=True, slots=True)
class TcpPart:
    """``tcp`` (the client's SYN) or ``emitted.tcp.syn`` (ours): ``tcp_report``'s fields."""

    ja4t: str | None = None
    p0f: str | None = None
    ip_version: int | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    ttl: int | None = None
    df: bool | None = None
    window: int | None = None
    mss: int | None = None
    wscale: int | None = None
    option_kinds: tuple[int, ...] | None = None
    raw: str | None = None        # IP and TCP headers, hex
    error: str | None = None      # why there is no SYN

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> TcpPart:
        g = part.get
        return cls(_str(g("ja4t")), _str(g("p0f")), _int(g("ip_version")), _str(g("src")),
                   _str(g("dst")), _int(g("sport")), _int(g("dport")), _int(g("ttl")),
                   _bool(g("df")), _int(g("window")), _int(g("mss")), _int(g("wscale")),
                   _ints(g("option_kinds")), _str(g("raw")), _str(g("error")))


@dataclass(frozen=True, slots=True)
class TlsExtension:
    """One ClientHello extension: its type and name."""

    type: int | None = None
    name: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> TlsExtension:
        return cls(_int(part.get("type")), _str(part.get("name")))


@dataclass(frozen=True, slots=True)
class KeyShare:
    """One key share of the ClientHello: its group and the key's length."""

    group: int | None = None
    length: int | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> KeyShare:
        return cls(_int(part.get("group")), _int(part.get("length")))


@dataclass(frozen=True, slots=True)
class TlsPart:
    """``tls``: the client's ClientHello (``tls_report``): fingerprints, fields, raw bytes."""

    ja4: str | None = None
    ja4_o: str | None = None
    ja4_r: str | None = None
    ja4_ro: str | None = None
    ja3: str | None = None
    ja3n: str | None = None
    ja3_full: str | None = None
    sni: str | None = None
    alpn: tuple[str, ...] | None = None
    legacy_version: int | None = None
    supported_versions: tuple[int, ...] | None = None
    cipher_suites: tuple[int, ...] | None = None
    extensions: tuple[TlsExtension, ...] | None = None
    extension_types: tuple[int, ...] | None = None
    supported_groups: tuple[int, ...] | None = None
    signature_algorithms: tuple[int, ...] | None = None
    ec_point_formats: tuple[int, ...] | None = None
    key_shares: tuple[KeyShare, ...] | None = None
    compress_certificate: tuple[int, ...] | None = None
    delegated_credentials: tuple[int, ...] | None = None
    alps: tuple[str, ...] | None = None
    record_size_limit: int | None = None
    record_version: int | None = None
    record_lengths: tuple[int, ...] | None = None
    raw: str | None = None        # the handshake message, hex (without record headers)
    error: str | None = None      # the report could not be made

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> TlsPart:
        g = part.get
        extensions = _objects(g("extensions"))
        shares = _objects(g("key_shares"))
        return cls(
            _str(g("ja4")), _str(g("ja4_o")), _str(g("ja4_r")), _str(g("ja4_ro")), _str(g("ja3")),
            _str(g("ja3n")), _str(g("ja3_full")), _str(g("sni")), _strs(g("alpn")),
            _int(g("legacy_version")), _ints(g("supported_versions")), _ints(g("cipher_suites")),
            None if extensions is None else tuple(map(TlsExtension.from_stored, extensions)),
            _ints(g("extension_types")), _ints(g("supported_groups")),
            _ints(g("signature_algorithms")), _ints(g("ec_point_formats")),
            None if shares is None else tuple(map(KeyShare.from_stored, shares)),
            _ints(g("compress_certificate")), _ints(g("delegated_credentials")),
            _strs(g("alps")), _int(g("record_size_limit")), _int(g("record_version")),
            _ints(g("record_lengths")), _str(g("raw")), _str(g("error")))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A request's response as the proxy saw it (or made it: ``made_by``)."""

    status: int | None = None
    reason: str | None = None
    headers: Headers | None = None
    body_size: int | None = None  # body bytes without framing; None when not followed
    time: float | None = None
    made_by: str | None = None
    error: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> HttpResponse:
        g = part.get
        return cls(_int(g("status")), _str(g("reason")), _headers(g("headers")),
                   _int(g("body_size")), _number(g("time")), _str(g("made_by")),
                   _str(g("error")))


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: HTTP/1 (``target``, ``raw`` head) or HTTP/2 (``path``), headers in order."""

    method: str | None = None
    target: str | None = None
    path: str | None = None
    authority: str | None = None
    headers: Headers | None = None
    header_order: tuple[str, ...] | None = None    # names without pseudo-headers
    ja4h: str | None = None
    raw: str | None = None        # an HTTP/1 head as sent (latin-1)
    time: float | None = None
    status: int | None = None
    response: HttpResponse | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> HttpRequest:
        g = part.get
        response = _mapping(g("response"))
        return cls(_str(g("method")), _str(g("target")), _str(g("path")) or _str(g(":path")),
                   _str(g("authority")), _headers(g("headers")), _strs(g("header_order")),
                   _str(g("ja4h")),
                   _str(g("raw")), _number(g("time")), _int(g("status")),
                   None if response is None else HttpResponse.from_stored(response))


@dataclass(frozen=True, slots=True)
class H2Priority:
    """The priority a HEADERS frame carried."""

    exclusive: bool | None = None
    depends_on: int | None = None
    weight: int | None = None     # as on the wire (0-255)

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> H2Priority:
        return cls(_bool(part.get("exclusive")), _int(part.get("depends_on")),
                   _int(part.get("weight")))


@dataclass(frozen=True, slots=True)
class H2Part:
    """``http.h2``: the client's HTTP/2 connection start."""

    akamai: str | None = None
    pseudo_header_order: tuple[str, ...] | None = None
    headers_priority: H2Priority | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> H2Part:
        return cls(_str(part.get("akamai")), _strs(part.get("pseudo_header_order")),
                   _part(H2Priority, part.get("headers_priority")))


@dataclass(frozen=True, slots=True)
class HttpPart:
    """``http``: the version spoken, the HTTP/2 start, each request recorded."""

    version: str | None = None
    h2: H2Part | None = None
    requests: tuple[HttpRequest, ...] | None = None
    count: int | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> HttpPart:
        h2 = _mapping(part.get("h2"))
        requests = _objects(part.get("requests"))
        return cls(_str(part.get("version")), None if h2 is None else H2Part.from_stored(h2),
                   None if requests is None else tuple(map(HttpRequest.from_stored, requests)),
                   _int(part.get("count")))


# ------------------------------------------------------------------------- what was emitted
@dataclass(frozen=True, slots=True)
class FieldVerdict:
    """How faithfully one field was mirrored: ``exact``, ``approximated`` or ``impossible``
    (``None``: the entry is damaged)."""

    status: str | None = None
    detail: str | None = None

    @classmethod
    def from_stored(cls, value: Any) -> FieldVerdict:
        if not _is_mapping(value):
            return _NO_VERDICT
        key = (_str(value.get("status")), _str(value.get("detail")))
        verdict = _VERDICTS.get(key)
        if verdict is None:           # records share their verdicts: one object per verdict
            if len(_VERDICTS) >= _MAX_VERDICTS:
                _VERDICTS.clear()
            verdict = _VERDICTS[key] = cls(*key)
        return verdict


_NO_VERDICT = FieldVerdict()
_VERDICTS: dict[tuple[str | None, str | None], FieldVerdict] = {}
_MAX_VERDICTS = 4096


@dataclass(frozen=True, slots=True)
class EmittedTlsPart:
    """``emitted.tls``: the fingerprint sent upstream."""

    fingerprint: Mapping[str, Any] | None = None   # curl_cffi's Fingerprint, as JSON
    ja4: str | None = None
    ja3: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> EmittedTlsPart:
        return cls(_mapping(part.get("fingerprint")), _str(part.get("ja4")), _str(part.get("ja3")))


@dataclass(frozen=True, slots=True)
class EmittedPart:
    """``emitted``: what went upstream (TLS, our SYN) and, per field, how faithful it was."""

    tls: EmittedTlsPart | None = None
    syn: TcpPart | None = None    # emitted.tcp.syn
    fidelity: Mapping[str, FieldVerdict] | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> EmittedPart:
        tls = _mapping(part.get("tls"))
        syn = _mapping((_mapping(part.get("tcp")) or {}).get("syn"))
        fidelity = _mapping(part.get("fidelity"))
        return cls(None if tls is None else EmittedTlsPart.from_stored(tls),
                   None if syn is None else TcpPart.from_stored(syn),
                   None if fidelity is None else {str(name): FieldVerdict.from_stored(v)
                                                  for name, v in fidelity.items()})

    def fidelity_share(self) -> float | None:
        """The share (0..1) of fields mirrored exactly; None without any verdicts."""
        if not self.fidelity:
            return None
        exact = sum(1 for verdict in self.fidelity.values() if verdict.status == "exact")
        return exact / len(self.fidelity)


# ------------------------------------------------------------------------- the record
def _part(cls, value: Any):
    return cls.from_stored(value) if _is_mapping(value) else None


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One connection's stored capture record, typed (see the module docstring)."""

    id: int | None = None
    started: float | None = None
    ended: float | None = None
    mode: str | None = None
    gateway: str | None = None
    client: ClientPart | None = None
    destination: DestinationPart | None = None
    sni: str | None = None
    protocol: str | None = None
    alpn: AlpnPart | None = None
    tcp: TcpPart | None = None
    tls: TlsPart | None = None
    http: HttpPart | None = None
    emitted: EmittedPart | None = None
    upstream: UpstreamPart | None = None
    error: ErrorPart | None = None
    bytes: ByteCounts | None = None
    store_error: str | None = None

    @classmethod
    def from_stored(cls, record: Any) -> CaptureRecord:
        """The record as stored (a dict decoded from its JSON; anything else reads empty)."""
        if not _is_mapping(record):
            return cls()
        g = record.get
        return cls(
            id=_int(g("id")), started=_number(g("started")), ended=_number(g("ended")),
            mode=_str(g("mode")), gateway=_str(g("gateway")),
            client=_part(ClientPart, g("client")),
            destination=_part(DestinationPart, g("destination")),
            sni=_str(g("sni")), protocol=_str(g("protocol")), alpn=_part(AlpnPart, g("alpn")),
            tcp=_part(TcpPart, g("tcp")), tls=_part(TlsPart, g("tls")),
            http=_part(HttpPart, g("http")), emitted=_part(EmittedPart, g("emitted")),
            upstream=_part(UpstreamPart, g("upstream")), error=ErrorPart.from_stored(g("error")),
            bytes=_part(ByteCounts, g("bytes")), store_error=_str(g("store_error")))
