"""One client connection through the proxy, from accept to the capture record: the asyncio
I/O glue (bytes in, bytes out, flow control, the close) and the dispatch of the client's
bytes by ``Stage`` to the part that owns that stage; what they decide is acted on elsewhere.

1. Accept (``accept``): a front to feed, explicit HTTP (``http_front``: a CONNECT or an
   absolute-form request) or SOCKS5 (``socks_front``: its CONNECT); or the destination known
   at once, a reverse listener's origin or a transparent connection's original destination.
2. First bytes (``sniff``): a whole TLS ClientHello, plain HTTP, or anything else (raw). A
   hello is mirrored, refused or passed through untouched (``tls_start``, ``tls_decision``).
   ``front_actions`` acts on these decisions: the destination, the stage, the relay.
3. Relay: TLS upstream first (``tls_relay``), or over TCP (``plain_relay``), by the route of
   ``upstream_route``; the observer records and checks the client's bytes, which go upstream
   unchanged, as the server's come back. Failures reach the client as 502 / 504 with the
   reason (``response_watch`` times responses, ``client_timers`` the client's start and
   idleness); refused input as a 400 or a GOAWAY (``refusals``, ``bad_input``).
4. The end: one capture record (``capture_record``) goes to the store.
"""

from __future__ import annotations

import asyncio
import ssl

from mirror.net.listen import unmapped
from mirror.net.reset import abort_with_reset
from mirror.net.saved_syn import client_syn
from mirror.proxy import capture_record
from mirror.proxy.accept import start_for
from mirror.proxy.client_timers import ClientTimers
from mirror.proxy.front_actions import after_first_bytes, after_front
from mirror.proxy.front_events import Destination, FrontStep
from mirror.proxy.http_front import HttpFront
from mirror.proxy.observe import Http1Observer, Http2Observer
from mirror.proxy.plain_relay import PlainRelay
from mirror.proxy.refusals import client_tls_failed, fail, refuse
from mirror.proxy.response_watch import ResponseWatch
from mirror.proxy.sniff import FirstBytes
from mirror.proxy.socks_front import SocksFront
from mirror.proxy.stage import CONNECTING, ERROR, FIRST, FRONT, PLAIN, RAW, TLS, Stage
from mirror.proxy.tls_relay import TlsRelay
from mirror.wire.errors import WireError
from mirror.wire.tls import DEFAULT_MAX_HELLO

CLIENT_WRITE_HIGH = 1 << 18  # bytes queued towards the client before the upstream is paused
MAX_FIRST_BYTES = DEFAULT_MAX_HELLO   # a larger ClientHello is refused


class ProxyConnection(asyncio.Protocol):
    """The client side of one proxied connection (an asyncio Protocol)."""

    def __init__(self, proxy, mode: str, target: tuple[str, str, int] | None = None) -> None:
        self.proxy = proxy
        self.mode = mode
        self.target = target          # reverse mode: the one origin (scheme, host, port)
        self.loop = proxy.loop
        self.transport: asyncio.Transport | None = None
        self.stage = Stage.FRONT if mode in ("http", "socks5") else Stage.FIRST
        self.front: HttpFront | SocksFront | None = None
        scheme, origin = (target[0], f"{target[1]}:{target[2]}") if target else (None, "")
        self.first = FirstBytes(MAX_FIRST_BYTES, scheme, origin)
        self.dst: Destination | None = None
        self.syn = None
        self.tcp_fidelity: dict = {}  # what our SYN carried, per field (filled once connected)
        self.tls_relay: TlsRelay | None = None
        self.plain: PlainRelay | None = None
        self.observer: Http1Observer | Http2Observer | None = None
        self.watch: ResponseWatch | None = None    # --upstream-response-timeout
        self.timers: ClientTimers | None = None
        self.client_paused = False
        self.record: dict = {}
        self.bytes_up = self.bytes_down = 0
        self.peer = ("?", 0)
        self.client_eof = self.admitted = False
        self.last_activity = 0.0

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = (unmapped(host), port)
        sock = transport.get_extra_info("socket")
        self.syn, syn_report = client_syn(sock, report=False)
        self.record = capture_record.new_record(self.mode, self.peer, self.syn, syn_report)
        self.proxy.connection_opened(self)
        refusal = self.proxy.access.admit(self.peer[0])
        if refusal is not None:
            fail(self, "access", f"refused: {refusal}")
            return
        self.admitted = True
        self.last_activity = self.loop.time()
        self.timers = ClientTimers(self)
        start = start_for(self.proxy, self.mode, self.target, sock)
        if isinstance(start, (HttpFront, SocksFront)):
            self.front = start
        else:
            after_front(self, FrontStep(decision=start))

    def connection_lost(self, exc) -> None:
        if self.stage == Stage.CLOSED:
            return
        self.stage = Stage.CLOSED
        for timer in (self.timers, self.watch):
            if timer is not None:
                timer.cancel()
        for relay in (self.tls_relay, self.plain):
            if relay is not None:
                relay.close()
        if self.admitted:
            self.proxy.access.release(self.peer[0])
        self._finish_record()
        self.proxy.connection_closed(self)
        # each part holds the connection back: dropped now, they are freed at once instead of
        # waiting, with everything they hold, for the cyclic garbage collector
        self.timers = self.watch = self.front = self.tls_relay = self.plain = None

    # ------------------------------------------------------------------ input from the client
    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        try:
            self._receive(data)
        except WireError as exc:
            refuse(self, exc)
        except ssl.SSLError as exc:
            client_tls_failed(self, exc)

    def eof_received(self):
        """Plain relays pass a half-close on; once both directions have ended, both close."""
        if self.stage not in (Stage.PLAIN, Stage.RAW) or self.plain is None:
            return None
        self.plain.client_eof()
        return True

    def _receive(self, data: bytes) -> None:
        stage, relay = self.stage, self.tls_relay
        if stage is TLS and relay is not None:
            relay.client_bytes(data)
        elif (stage is PLAIN or stage is RAW) and self.plain is not None:
            self.plain.client_bytes(data)
        elif stage is FRONT and self.front is not None:
            after_front(self, self.front.receive(data))
        elif stage is FIRST:
            after_first_bytes(self, self.first.receive(data))
        elif stage is CONNECTING and relay is not None:
            relay.receive_early(data)
        elif stage is ERROR and relay is not None and relay.error is not None:
            relay.error.receive(data)

    # ------------------------------------------------------------------ relays
    def start_plain(self, protocol: str, first: bytes) -> None:
        self.plain = PlainRelay(self)
        self.plain.start(protocol, first)

    def send_to_client(self, data: bytes) -> None:
        """Bytes for the client (encrypted once its TLS is ours)."""
        if not data or self.transport is None:
            return
        if self.tls_relay is not None and self.tls_relay.tls is not None:
            self.tls_relay.send(data)
        else:
            self.transport.write(data)

    # ------------------------------------------------------------------ flow control
    def pause_writing(self) -> None:
        for upstream in self._upstreams():
            upstream.pause_reading()

    def resume_writing(self) -> None:
        for upstream in self._upstreams():
            upstream.resume_reading()

    def _upstreams(self) -> list:
        pipe = self.tls_relay.pipe if self.tls_relay is not None else None
        return [up for up in (self.plain and self.plain.upstream, pipe) if up is not None]

    def pause_client(self) -> None:
        if not self.client_paused and self.transport is not None:
            self.transport.pause_reading()
            self.client_paused = True

    def resume_client(self) -> None:
        if self.client_paused and self.transport is not None and self.stage != Stage.CLOSED:
            self.client_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ endings
    def close_both(self) -> None:
        self.close_client()
        if self.plain is not None:
            self.plain.close()

    def close_client(self, abort: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._finish_record()     # handed to the store before the client can see the close
        if abort:
            abort_with_reset(self.transport)     # a reset upstream is passed on as a reset
        else:
            self.transport.close()

    def _finish_record(self) -> None:
        if capture_record.finish_record(self.record, self.bytes_up, self.bytes_down,
                                        self.observer):
            self.proxy.store_record(self.record)
