"""Fingerprint every connection of a capture: JA4T / p0f, JA3 / JA4, JA4H, Akamai h2, QUIC JA4.

``analyze_capture(path)`` reads the file, reassembles it (:mod:`mirror.pcapfile.streams`) and
returns a :class:`CaptureAnalysis` with one :class:`ConnectionReport` per TCP connection and
per QUIC flow, in order of first appearance. A damaged capture is analysed as far as it could
be read and the :class:`~mirror.pcapfile.reader.CorruptCaptureError` is kept in
``CaptureAnalysis.error``; a file that is not a capture raises ``NotACaptureError``.

Per TCP connection:

* the client's SYN -> ``TcpSyn`` -> JA4T and p0f signature;
* the client's byte stream is walked from its first byte:

  - an HTTP ``CONNECT`` request, a SOCKS4 / SOCKS4a request or a SOCKS5 greeting (+ RFC 1929
    username/password sub-negotiation) + request is a tunnel prefix: it is stepped over and
    the walk goes on with the tunnelled bytes (the CONNECT request itself is also reported as
    an HTTP request, as FoxIO's tools do);
  - a TLS handshake record -> the ClientHello -> SNI, ALPN, JA3 (+ full string), JA3N, JA4,
    JA4_r, JA4_o, JA4_ro. Later plaintext handshake records of the same stream holding another
    ClientHello (the second hello after a HelloRetryRequest) are reported too, in order; the
    scan stops at the first application-data record;
  - the HTTP/2 prior-knowledge preface -> the Akamai fingerprint and, per request, JA4H and the
    header order;
  - HTTP/1 requests, one after another: JA4H and the header names in order (exact case);
    request bodies are skipped using Content-Length or the chunked framing.

* A parser's ``WireError`` is recorded in ``ConnectionReport.errors`` and the walk of that
  stream stops there; the other connections are unaffected. A stream that ends in the middle
  of a hello or request head (capture cut short, a lost segment) records that too.

Per UDP flow whose datagrams start with a QUIC Initial packet: the ClientHello is recovered
by :mod:`mirror.wire.quic` and fingerprinted with transport ``q``. Other UDP flows are not
reported.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mirror.fingerprint import http as http_fp
from mirror.fingerprint import tcp as tcp_fp
from mirror.fingerprint import tls as tls_fp
from mirror.pcapfile.lenient_http import lenient_request_head
from mirror.pcapfile.reader import CaptureReader, CorruptCaptureError
from mirror.pcapfile.streams import StreamCollector, Streams, TcpConnection, UdpFlow
from mirror.pcapfile.tlsdecrypt import (
    KeyLog,
    decrypt_client_records,
    parse_keylog,
    server_cipher_suite,
)
from mirror.pcapfile.tunnels import tunnel_prefix_length
from mirror.wire import http1, http2, quic
from mirror.wire import tcp as tcp_wire
from mirror.wire import tls as tls_wire
from mirror.wire.errors import WireError

__all__ = [
    "CaptureAnalysis",
    "ConnectionReport",
    "HttpRequestInfo",
    "TlsInfo",
    "analyze_capture",
    "analyze_streams",
    "analyze_tcp",
    "analyze_udp",
    "iter_reports",
    "open_capture",
    "walk_client_stream",
]

_MAX_REQUESTS = 1000  # HTTP requests reported per connection
_MAX_EXTRA_RECORDS = 64  # TLS records scanned after the first ClientHello for another one
_H2_FEED_CHUNK = 4096
_WINDOW = 64 * 1024 + 4  # the HTTP/1 parser's maximum head size, CRLFCRLF included

_TLS_CCS, _TLS_ALERT, _TLS_HANDSHAKE, _TLS_APPDATA = 20, 21, 22, 23


@dataclass(slots=True)
class TlsInfo:
    """One ClientHello and its fingerprints. ``transport``: "t" (TCP) or "q" (QUIC)."""

    hello: tls_wire.ClientHello
    transport: str
    sni: str | None
    alpn: list[str]
    ja3: str
    ja3_full: str
    ja3n: str
    ja3n_full: str
    ja4: str
    ja4_r: str
    ja4_o: str
    ja4_ro: str

    @classmethod
    def from_hello(cls, hello: tls_wire.ClientHello, transport: str) -> TlsInfo:
        return cls(
            hello=hello,
            transport=transport,
            sni=hello.sni,
            alpn=hello.alpn,
            ja3=tls_fp.ja3(hello),
            ja3_full=tls_fp.ja3_string(hello),
            ja3n=tls_fp.ja3n(hello),
            ja3n_full=tls_fp.ja3n_string(hello),
            ja4=tls_fp.ja4(hello, transport),
            ja4_r=tls_fp.ja4_r(hello, transport),
            ja4_o=tls_fp.ja4_o(hello, transport),
            ja4_ro=tls_fp.ja4_ro(hello, transport),
        )


@dataclass(slots=True)
class HttpRequestInfo:
    """One HTTP request: JA4H and the header names in wire order, exact case.

    For HTTP/2, ``headers`` lists the pseudo-headers first, as sent (JA4H itself ignores them).
    """

    method: str
    target: str
    version: str  # "HTTP/1.0", "HTTP/1.1", "HTTP/2"
    headers: list[str]
    ja4h: str
    ja4h_r: str
    ja4h_ro: str
    stream_id: int | None = None  # HTTP/2 stream


@dataclass(slots=True)
class ConnectionReport:
    """Everything fingerprinted on one connection (``transport`` "tcp" or "udp")."""

    transport: str
    src: str
    sport: int
    dst: str
    dport: int
    ip_version: int
    first_seen: float
    index: int
    client_by: str = "syn"
    syn: tcp_wire.TcpSyn | None = None
    ja4t: str | None = None
    p0f: str | None = None
    tunnel: str | None = None  # "http-connect", "socks4", "socks4a", "socks5"
    tls: list[TlsInfo] = field(default_factory=list)
    http: list[HttpRequestInfo] = field(default_factory=list)
    akamai: str | None = None
    decrypted: bool = False  # TLS application data was decrypted with key-log secrets
    errors: list[str] = field(default_factory=list)

    @property
    def hello(self) -> TlsInfo | None:
        """The first ClientHello of the connection, if any."""
        return self.tls[0] if self.tls else None

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.transport, self.src, self.sport, self.dst, self.dport)


@dataclass(slots=True)
class CaptureAnalysis:
    path: str
    format: str
    connections: list[ConnectionReport]
    frames: int
    error: CorruptCaptureError | None = None
    unsupported_linktypes: frozenset[int] = frozenset()  # frames of these link types were skipped


# --------------------------------------------------------------------------- TCP streams


def _is_h2_preface(data: bytes) -> bool:
    prefix = data[: len(http2.PREFACE)]
    return len(prefix) >= 4 and http2.PREFACE.startswith(prefix)


def _looks_like_http1(data: bytes) -> bool:
    space = data.find(b" ", 0, 24)
    return space > 0 and data[:space].isalpha() and data[:space].isupper()


def _tls_hellos(data: bytes, report: ConnectionReport, server_data: bytes, keylog: KeyLog | None) -> None:
    hello = tls_wire.read_client_hello(data)
    if hello is None:
        report.errors.append("tls: ClientHello incomplete (stream ends or has a gap)")
        return
    report.tls.append(TlsInfo.from_hello(hello, "t"))
    if keylog:
        plaintext = decrypt_client_records(data, hello.consumed, hello.random, server_cipher_suite(server_data), keylog)
        if plaintext is not None:
            report.decrypted = True
            _scan_further_hellos(data, hello.consumed, report)
            walk_client_stream(plaintext, report)
            return
    _scan_further_hellos(data, hello.consumed, report)


def _scan_further_hellos(data: bytes, position: int, report: ConnectionReport) -> None:
    """Another plaintext ClientHello later in the stream (after a HelloRetryRequest)."""
    for _ in range(_MAX_EXTRA_RECORDS):
        if position + 5 > len(data):
            return
        content_type, major = data[position], data[position + 1]
        if content_type not in (_TLS_CCS, _TLS_ALERT, _TLS_HANDSHAKE) or major != 3:
            return  # application data (or not TLS any more): nothing plaintext follows
        length = struct.unpack_from("!H", data, position + 3)[0]
        if content_type == _TLS_HANDSHAKE and position + 5 < len(data) and data[position + 5] == 1:
            try:
                again = tls_wire.read_client_hello(data[position:])
            except WireError:
                again = None  # an encrypted handshake record that happens to start with 0x01
            if again is not None:
                report.tls.append(TlsInfo.from_hello(again, "t"))
                position += again.consumed
                continue
        position += 5 + length


def _http2_requests(data: bytes, report: ConnectionReport) -> None:
    reader = http2.H2ClientReader()
    seen_streams: set[int] = set()
    try:
        for start in range(0, len(data), _H2_FEED_CHUNK):
            for event in reader.feed(data[start : start + _H2_FEED_CHUNK]):
                if not isinstance(event, http2.Headers) or event.stream_id in seen_streams:
                    continue
                seen_streams.add(event.stream_id)
                headers = event.headers
                pseudo = dict(h for h in headers if h[0].startswith(":"))
                method = pseudo.get(":method")
                if method is None or len(report.http) >= _MAX_REQUESTS:
                    continue
                report.http.append(
                    HttpRequestInfo(
                        method=method,
                        target=pseudo.get(":path", pseudo.get(":authority", "")),
                        version="HTTP/2",
                        headers=[name for name, _ in headers],
                        ja4h=http_fp.ja4h(method, "HTTP/2", headers),
                        ja4h_r=http_fp.ja4h_r(method, "HTTP/2", headers),
                        ja4h_ro=http_fp.ja4h_ro(method, "HTTP/2", headers),
                        stream_id=event.stream_id,
                    )
                )
    except WireError as error:
        report.errors.append(str(error))
    finally:
        if reader.fingerprint is not None:
            report.akamai = http_fp.akamai(reader.fingerprint)


def _skip_body(head: http1.RequestHead, data: bytes, start: int) -> int | None:
    """Offset in ``data`` just after the body that starts at ``start``; None if not all captured."""
    framing = http1.body_framing(head)
    if framing.kind == "none":
        return start
    if framing.kind == "length":
        assert framing.length is not None
        end = start + framing.length
        return end if end <= len(data) else None
    reader = http1.ChunkedReader()
    position = start
    while not reader.done and position < len(data):
        chunk = data[position : position + _WINDOW]
        reader.feed(chunk)
        position += len(chunk)
    if not reader.done:
        return None
    return position - len(reader.remainder)


def _http1_request(window: bytes, report: ConnectionReport) -> http1.RequestHead | None:
    """The request head at the start of ``window`` (strict parser, lenient fallback)."""
    try:
        head = http1.parse_request_head(window)
    except WireError as strict_error:
        head = lenient_request_head(window)
        if head is None:
            raise
        report.errors.append(f"{strict_error} (request read leniently)")
    if head is None:
        report.errors.append("http1: request head incomplete (stream ends or has a gap)")
        return None
    if len(report.http) < _MAX_REQUESTS:
        report.http.append(
            HttpRequestInfo(
                method=head.method,
                target=head.target,
                version=head.version,
                headers=head.header_names,
                ja4h=http_fp.ja4h(head.method, head.version, head.headers),
                ja4h_r=http_fp.ja4h_r(head.method, head.version, head.headers),
                ja4h_ro=http_fp.ja4h_ro(head.method, head.version, head.headers),
            )
        )
    return head


def walk_client_stream(
    data: bytes, report: ConnectionReport, *, server_data: bytes = b"", keylog: KeyLog | None = None
) -> None:
    """Fingerprint what the client sent (see the module doc); results and errors go to ``report``.

    With ``keylog`` (TLS 1.3 secrets) and the server's bytes (for the chosen cipher suite),
    the application data after a ClientHello is decrypted and walked too.
    """
    position = 0
    while position < len(data):
        # Look at a bounded window: a long keep-alive stream must not be copied per request.
        window = data[position : position + _WINDOW]
        try:
            if _is_h2_preface(window):
                _http2_requests(data[position:], report)
                return
            if tls_wire.looks_like_tls(window):
                _tls_hellos(data[position:], report, server_data, keylog)
                return
            if window[0] in (4, 5):
                prefix = tunnel_prefix_length(window)
                if prefix is None:
                    report.errors.append("socks: handshake incomplete")
                    return
                length, kind = prefix
                report.tunnel = report.tunnel or kind
                position += length
                continue
            if not _looks_like_http1(window):
                return  # a protocol we do not fingerprint (SSH, encrypted data, ...)
            head = _http1_request(window, report)
            if head is None:
                return
            if head.method == "CONNECT":
                report.tunnel = report.tunnel or "http-connect"
                position += head.length
                continue
            end = _skip_body(head, data, position + head.length)
            if end is None:
                return  # the body runs past what was captured
            position = end
        except WireError as error:
            report.errors.append(str(error))
            return


def analyze_tcp(connection: TcpConnection, keylog: KeyLog | None = None) -> ConnectionReport:
    report = ConnectionReport(
        transport="tcp",
        src=connection.client.ip,
        sport=connection.client.port,
        dst=connection.server.ip,
        dport=connection.server.port,
        ip_version=connection.ip_version,
        first_seen=connection.first_seen,
        index=connection.index,
        client_by=connection.client_by,
    )
    if connection.syn is not None:
        try:
            syn = tcp_wire.parse_syn(connection.syn)
        except WireError as error:
            report.errors.append(str(error))
        else:
            report.syn = syn
            report.ja4t = tcp_fp.ja4t(syn)
            report.p0f = tcp_fp.p0f_signature(syn)
    walk_client_stream(connection.client_data, report, server_data=connection.server_data, keylog=keylog)
    return report


def analyze_udp(flow: UdpFlow) -> ConnectionReport | None:
    """The QUIC ClientHello of a UDP flow; None when the flow does not look like QUIC."""
    sides = [True, False]
    candidates = [s for s in sides if any(quic.looks_like_initial(p) for p in flow.payloads(from_client=s))]
    if not candidates:
        return None
    report: ConnectionReport | None = None
    for from_client in candidates:
        client, server = (flow.client, flow.server) if from_client else (flow.server, flow.client)
        attempt = ConnectionReport(
            transport="udp",
            src=client.ip,
            sport=client.port,
            dst=server.ip,
            dport=server.port,
            ip_version=flow.ip_version,
            first_seen=flow.first_seen,
            index=flow.index,
            client_by="first-datagram" if from_client else "quic-initial",
        )
        assembler = quic.ClientHelloAssembler()
        raw_hello = None
        for payload in flow.payloads(from_client=from_client):
            try:
                raw_hello = assembler.feed(payload)
            except WireError as error:
                if not attempt.errors:
                    attempt.errors.append(str(error))
                continue
            if raw_hello is not None:
                break
        if raw_hello is not None:
            attempt.errors.clear()
            try:
                attempt.tls.append(TlsInfo.from_hello(tls_wire.parse_client_hello(raw_hello), "q"))
            except WireError as error:
                attempt.errors.append(str(error))
            return attempt
        if assembler.packets and not attempt.errors:
            attempt.errors.append("quic: ClientHello incomplete (Initial packets missing)")
        if report is None:
            report = attempt
    return report


def analyze_streams(streams: Streams, keylog: KeyLog | None = None) -> list[ConnectionReport]:
    """A report per TCP connection and per QUIC flow, in order of first appearance."""
    reports = [analyze_tcp(connection, keylog) for connection in streams.tcp]
    for flow in streams.udp:
        report = analyze_udp(flow)
        if report is not None:
            reports.append(report)
    reports.sort(key=lambda r: r.index)
    return reports


def iter_reports(streams: Streams, keylog: KeyLog | None = None) -> Iterator[ConnectionReport]:
    """The reports of :func:`analyze_streams`, one at a time, in the same order: a caller
    that prints each as it comes holds one report, not all of them."""
    tcp = (analyze_tcp(connection, keylog) for connection in streams.tcp)
    udp = (report for report in map(analyze_udp, streams.udp) if report is not None)
    return heapq.merge(tcp, udp, key=lambda report: report.index)


def open_capture(
    path: str | os.PathLike[str], *, keylog: bytes | None = None,
    progress: Callable[[int, int], None] | None = None, **caps: int
) -> tuple[CaptureAnalysis, Iterator[ConnectionReport]]:
    """Read and reassemble a capture; its analysis (``connections`` left empty) and the
    connection reports, made one by one as they are taken (see :func:`analyze_capture`).
    ``progress(bytes_read, file_size)`` is called now and then while the file is read."""
    collector = StreamCollector(**caps)
    error: CorruptCaptureError | None = None
    with CaptureReader(path) as reader:
        size = max(1, os.path.getsize(path))
        try:
            for count, (timestamp, packet) in enumerate(reader.ip_packets()):
                collector.feed(timestamp, packet)
                if progress is not None and count % 4096 == 0:
                    progress(reader.position(), size)
        except CorruptCaptureError as exc:
            error = exc
        frames, fmt = reader.frames_read, reader.format
        unsupported = frozenset(reader.unsupported_linktypes)
        secrets = list(reader.secrets)
    if keylog:
        secrets.append(keylog)
    analysis = CaptureAnalysis(os.fspath(path), fmt, [], frames, error, unsupported)
    return analysis, iter_reports(collector.finish(), parse_keylog(secrets) if secrets else None)


def analyze_capture(
    path: str | os.PathLike[str], *, keylog: bytes | None = None, **caps: int
) -> CaptureAnalysis:
    """Read, reassemble and fingerprint a capture file.

    TLS 1.3 secrets from the capture's Decryption Secrets Blocks and from ``keylog`` (the
    text of an ``SSLKEYLOGFILE``) are used to decrypt client application data, so HTTP inside
    TLS is fingerprinted too. Raises ``NotACaptureError`` if the file cannot be read as a
    capture at all. A file damaged further in is analysed up to the damage; the error is in
    ``.error``.
    """
    analysis, reports = open_capture(path, keylog=keylog, progress=None, **caps)
    analysis.connections = list(reports)
    return analysis
