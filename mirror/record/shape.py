"""The capture record as the proxy writes it: ``RecordDict``, a ``TypedDict`` of its keys.

The proxy fills one plain dict per connection while it runs and hands it to the store when the
connection ends (``mirror.proxy.connection``); its keys are the stored JSON's, and the store's
schemas index some of them. The parts that cost time to make (``tcp``, ``tls``, the emitted
fingerprint and fidelity) may be :class:`mirror.record.deferred.Deferred` values until the
store's writer makes them (:mod:`mirror.record.values`); the reports they become are described
by the reading side, :mod:`mirror.record.capture`.
"""

# no ``from __future__ import annotations``: TypedDict reads NotRequired[...] from live annotations
from typing import Any, NotRequired, TypedDict

from mirror.record.deferred import Deferred

Report = dict[str, Any]            # a tcp_report, tls_report, fidelity report... (JSON)
Made = Report | Deferred           # such a report, or what the store's writer makes it from


class ClientDict(TypedDict):
    addr: str
    port: int


class DestinationDict(TypedDict):
    host: str
    port: int
    source: str                    # connect, socks5, http, redirect, tproxy, reverse...


class AlpnDict(TypedDict):
    offered: list[str]             # the client's hello
    upstream: str | None           # what the server chose
    client: str | None             # what the client was given


class UpstreamDict(TypedDict):
    route: str                     # "direct" or "via <proxy>"
    error: str | None
    proxy_exchange: NotRequired[str]
    engine: NotRequired[str | None]         # "replay" or "boringssl" (None: none was opened)
    engine_reason: NotRequired[str | None]  # why that engine (--tls-engine, auto, a retry)


class ErrorDict(TypedDict):
    stage: str
    message: str


class ByteCountsDict(TypedDict):
    up: int
    down: int


class EmittedTcpDict(TypedDict):
    syn: Made | None               # our SYN's tcp_report (None: the rewriter did not see it)


class EmittedDict(TypedDict):
    tls: dict[str, Made] | None    # {"fingerprint": curl_cffi Fingerprint as JSON (None
                                   #  for the replay engine), "hello": the hello sent
                                   #  upstream vs the client's, measured}
    fidelity: Made                 # per field: {"status": ..., "detail": ...}, TLS ones
                                   # measured once the hello sent is (measured_fidelity)
    tcp: NotRequired[EmittedTcpDict]


class RecordDict(TypedDict):
    """One connection's capture record, as the proxy writes it."""

    started: float
    ended: float | None
    mode: str                      # http, socks5, transparent, reverse
    client: ClientDict
    destination: DestinationDict | None
    sni: str | None
    protocol: str | None           # tls, http, passthrough, raw
    alpn: AlpnDict | None
    tcp: Made                      # the client's SYN (tcp_report)
    tls: Made | None               # the client's ClientHello (tls_report)
    http: Report | None            # the HTTP observer's report: version, h2, requests
    emitted: EmittedDict | None
    upstream: UpstreamDict
    error: ErrorDict | None
    bytes: ByteCountsDict
    gateway: NotRequired[str]      # added by the store process of a gateway
