"""A stored capture record, read typed: ``CaptureRecord.from_stored(record)``.

The store keeps each record as the JSON the proxy wrote (:mod:`mirror.record.shape`); this is
how the store's summary, render and export and ``mirror check`` read it, by attribute. A
record comes from a connection that may have failed anywhere, or from an older or damaged
store, so reading never raises: a part that is missing, ``null`` or not an object reads as
``None``; a value of the wrong type reads as ``None`` (``bool`` is never a number); a list
of numbers, strings or header pairs with one entry of the wrong type reads as ``None``;
an entry of a list of objects (requests, extensions: a :class:`PartList`, read on first use)
that is not an object reads as an empty part. Every part has only defaults, so ``TlsPart()``
is an empty TLS part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

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
    "HelloDifferencePart",
    "HttpPart",
    "HttpRequest",
    "HttpResponse",
    "KeyShare",
    "PartList",
    "SentHelloPart",
    "TcpPart",
    "TlsExtension",
    "TlsPart",
    "UpstreamPart",
    "Verdicts",
]

Headers = tuple[tuple[str, str], ...]
P = TypeVar("P")


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


class PartList(Sequence[P]):
    """The parts a stored list of objects holds (a connection's requests, a hello's
    extensions...), each read when the list is first used: the store's summary, which reads
    every record, never needs them. Immutable; equal to a tuple of the same parts."""

    __slots__ = ("_make", "_parts", "_stored")

    def __init__(self, stored: list[Any], make: Callable[[Mapping[str, Any]], P]) -> None:
        self._stored = tuple(stored)
        self._make = make
        self._parts: tuple[P, ...] | None = None

    def _all(self) -> tuple[P, ...]:
        if self._parts is None:
            self._parts = tuple(self._make(v if _is_mapping(v) else {}) for v in self._stored)
        return self._parts

    @overload
    def __getitem__(self, index: int) -> P: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[P, ...]: ...
    def __getitem__(self, index: int | slice) -> P | tuple[P, ...]:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._stored)

    def __iter__(self) -> Iterator[P]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PartList):
            return self._all() == other._all()
        if isinstance(other, tuple):
            return self._all() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


def _objects(value: Any, make: Callable[[Mapping[str, Any]], P]) -> PartList[P] | None:
    """A list of objects as parts; an entry that is not an object reads as an empty part."""
    return PartList(value, make) if isinstance(value, list) else None


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
    engine: str | None = None           # the TLS engine that made the connection
    engine_reason: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> UpstreamPart:
        return cls(_str(part.get("route")), _str(part.get("error")),
                   _str(part.get("proxy_exchange")), _str(part.get("engine")),
                   _str(part.get("engine_reason")))


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
    extensions: PartList[TlsExtension] | None = None
    extension_types: tuple[int, ...] | None = None
    supported_groups: tuple[int, ...] | None = None
    signature_algorithms: tuple[int, ...] | None = None
    ec_point_formats: tuple[int, ...] | None = None
    key_shares: PartList[KeyShare] | None = None
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
        return cls(
            _str(g("ja4")), _str(g("ja4_o")), _str(g("ja4_r")), _str(g("ja4_ro")), _str(g("ja3")),
            _str(g("ja3n")), _str(g("ja3_full")), _str(g("sni")), _strs(g("alpn")),
            _int(g("legacy_version")), _ints(g("supported_versions")), _ints(g("cipher_suites")),
            _objects(g("extensions"), TlsExtension.from_stored),
            _ints(g("extension_types")), _ints(g("supported_groups")),
            _ints(g("signature_algorithms")), _ints(g("ec_point_formats")),
            _objects(g("key_shares"), KeyShare.from_stored),
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
    requests: PartList[HttpRequest] | None = None
    count: int | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> HttpPart:
        return cls(_str(part.get("version")), _part(H2Part, part.get("h2")),
                   _objects(part.get("requests"), HttpRequest.from_stored),
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


class Verdicts(Mapping[str, FieldVerdict]):
    """``emitted.fidelity``: field name -> :class:`FieldVerdict`, each read on first use.
    :meth:`exact_share` counts from the stored entries (the store's summary, for every
    record). Immutable."""

    __slots__ = ("_stored", "_verdicts")

    def __init__(self, stored: Mapping[Any, Any]) -> None:
        self._stored = {str(name): entry for name, entry in stored.items()}
        self._verdicts: dict[str, FieldVerdict] | None = None

    def _all(self) -> dict[str, FieldVerdict]:
        if self._verdicts is None:
            self._verdicts = {name: FieldVerdict.from_stored(entry)
                              for name, entry in self._stored.items()}
        return self._verdicts

    def __getitem__(self, name: str) -> FieldVerdict:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def __repr__(self) -> str:
        return f"Verdicts({self._all()!r})"

    def exact_share(self) -> float | None:
        """The share (0..1) of fields whose status is ``exact``; None when there are none."""
        if not self._stored:
            return None
        exact = sum(1 for entry in self._stored.values()
                    if _is_mapping(entry) and entry.get("status") == "exact")
        return exact / len(self._stored)

@dataclass(frozen=True, slots=True)
class HelloDifferencePart:
    """One field in which the hello written upstream differs from the client's (masked)."""

    field: str | None = None
    client: str | None = None
    sent: str | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> HelloDifferencePart:
        return cls(_str(part.get("field")), _str(part.get("client")), _str(part.get("sent")))


@dataclass(frozen=True, slots=True)
class SentHelloPart:
    """``emitted.tls.hello``: the hello written upstream compared with the client's.
    ``measured`` False: the connection ended before a hello was seen going out (only the
    plan's prediction, ``predicted_exact``, is known)."""

    measured: bool | None = None
    exact: bool | None = None
    predicted_exact: bool | None = None
    ja4: str | None = None
    ja4_o: str | None = None
    ja3: str | None = None                  # the JA3 string
    differences: PartList[HelloDifferencePart] | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> SentHelloPart:
        return cls(_bool(part.get("measured")), _bool(part.get("exact")),
                   _bool(part.get("predicted_exact")), _str(part.get("ja4")),
                   _str(part.get("ja4_o")), _str(part.get("ja3")),
                   _objects(part.get("differences"), HelloDifferencePart.from_stored))


@dataclass(frozen=True, slots=True)
class EmittedTlsPart:
    """``emitted.tls``: what went upstream for TLS: curl_cffi's Fingerprint when BoringSSL
    made the hello (None for the replay engine), and the hello measured on the wire."""

    fingerprint: Mapping[str, Any] | None = None   # curl_cffi's Fingerprint, as JSON
    hello: SentHelloPart | None = None              # absent in records before it was measured

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> EmittedTlsPart:
        return cls(_mapping(part.get("fingerprint")), _part(SentHelloPart, part.get("hello")))


@dataclass(frozen=True, slots=True)
class EmittedPart:
    """``emitted``: what went upstream (TLS, our SYN) and, per field, how faithful it was."""

    tls: EmittedTlsPart | None = None
    syn: TcpPart | None = None    # emitted.tcp.syn
    fidelity: Verdicts | None = None

    @classmethod
    def from_stored(cls, part: Mapping[str, Any]) -> EmittedPart:
        tls = _mapping(part.get("tls"))
        syn = _mapping((_mapping(part.get("tcp")) or {}).get("syn"))
        fidelity = _mapping(part.get("fidelity"))
        return cls(None if tls is None else EmittedTlsPart.from_stored(tls),
                   None if syn is None else TcpPart.from_stored(syn),
                   None if fidelity is None else Verdicts(fidelity))

    def fidelity_share(self) -> float | None:
        """The share (0..1) of fields mirrored exactly; None without any verdicts."""
        return None if self.fidelity is None else self.fidelity.exact_share()


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
