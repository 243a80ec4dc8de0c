"""One client connection through the proxy, from accept to the capture record: the I/O glue
that feeds the sans-I/O parts and acts on what they decide, stage by stage (``Stage``).

1. Front: transparent, the original destination (REDIRECT or TPROXY); explicit HTTP, a CONNECT
   or an absolute-form request (``http_front``); SOCKS5, its CONNECT (``socks_front``).
2. First bytes (``sniff``): a whole TLS ClientHello, plain HTTP, or anything else (raw). A
   hello is mirrored, refused or passed through untouched (``tls_start``, ``tls_decision``).
3. Relay: TLS upstream first (``tls_relay``), or over TCP (``plain_relay``); the observer
   records and checks the client's bytes, which go upstream unchanged, as the server's come
   back. Failures reach the client as 502 / 504 with the reason (``response_watch`` times
   responses, ``client_timers`` the client's start and idleness).
4. The end: one capture record (``capture_record``) goes to the store.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from mirror.net.listen import unmapped
from mirror.net.reset import abort_with_reset
from mirror.net.saved_syn import client_syn
from mirror.proxy import capture_record
from mirror.proxy.client_timers import ClientTimers
from mirror.proxy.error_reply import goaway
from mirror.proxy.front_events import (
    Destination,
    Forward,
    FrontStep,
    PlainHttp,
    RawBytes,
    Refusal,
    TlsHello,
    Tunnel,
    loop_error,
    refusal_of,
)
from mirror.proxy.http_front import HttpFront
from mirror.proxy.observe import Http1Observer, Http2Observer
from mirror.proxy.original_dst import OriginalDestinationError, original_destination
from mirror.proxy.plain_relay import PlainRelay
from mirror.proxy.response_watch import ResponseWatch
from mirror.proxy.sniff import FirstBytes
from mirror.proxy.socks_front import SocksFront
from mirror.proxy.stage import CONNECTING, ERROR, FIRST, FRONT, PLAIN, RAW, TLS, Stage
from mirror.proxy.tls_relay import TlsRelay
from mirror.proxy.tls_start import start_tls
from mirror.wire.errors import WireError
from mirror.wire.tls import DEFAULT_MAX_HELLO

log = logging.getLogger("mirror.proxy")

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
            self.fail("access", f"refused: {refusal}")
            return
        self.admitted = True
        self.last_activity = self.loop.time()
        self.timers = ClientTimers(self)
        if self.mode == "http":
            self.front = HttpFront(self.proxy.access, self.proxy.head_limits,
                                   self.proxy.is_own_address)
        elif self.mode == "socks5":
            self.front = SocksFront(self.proxy.access, self.proxy.is_own_address)
        elif self.mode == "reverse" and self.target is not None:
            self._set_destination(Destination(self.target[1], self.target[2], "reverse"))
        elif self.mode == "transparent":
            try:
                host, port, how = original_destination(sock, tproxy=self.proxy.config.tproxy)
            except OriginalDestinationError as exc:
                self.fail("front", str(exc))
                return
            try:
                self._set_destination(Destination(host, port, how))
            except WireError as exc:
                self.refuse(exc)

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

    # ------------------------------------------------------------------ input from the client
    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        try:
            self._receive(data)
        except WireError as exc:
            self.refuse(exc)
        except ssl.SSLError as exc:
            self.client_tls_failed(exc)

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
            self._front_step(self.front.receive(data))
        elif stage is FIRST:
            self._first_step(self.first.receive(data))
        elif stage is CONNECTING and relay is not None:
            relay.receive_early(data)
        elif stage is ERROR and relay is not None and relay.error is not None:
            relay.error.receive(data)

    def _front_step(self, step: FrontStep) -> None:
        if step.reply and self.transport is not None:
            self.transport.write(step.reply)
        decision = step.decision
        if isinstance(decision, Refusal):
            if decision.destination is not None:
                self._set_destination(decision.destination, check=False)
            self._close_refused(decision)
        elif isinstance(decision, Tunnel):
            self._set_destination(decision.destination, check=False)
            self.stage = Stage.FIRST
            if decision.rest:
                self._first_step(self.first.receive(decision.rest))
        elif isinstance(decision, Forward):
            self._set_destination(decision.destination, check=False)
            self.observer = Http1Observer(rewrite=decision.rewrite, **self.proxy.head_limits)
            self.start_plain("http", decision.data)

    def _first_step(self, step: FrontStep) -> None:
        decision = step.decision
        if isinstance(decision, Refusal):
            if step.reply:
                self.send_to_client(step.reply)
            self._close_refused(decision)
        elif isinstance(decision, TlsHello):
            start_tls(self, decision.hello, decision.raw)
        elif isinstance(decision, PlainHttp):
            self.observer = Http1Observer(**self.proxy.head_limits)
            self.start_plain("http", decision.data)
        elif isinstance(decision, RawBytes):
            self.start_plain("raw", decision.data)

    def _set_destination(self, destination: Destination, check: bool = True) -> None:
        self.dst = destination
        self.record["destination"] = {"host": destination.host, "port": destination.port,
                                      "source": destination.how}
        if check and self.proxy.is_own_address(destination.host, destination.port):
            raise loop_error(destination)

    def source(self) -> str | None:
        """The address upstream connections leave from: the client's with --spoof-source."""
        return self.peer[0] if self.proxy.config.spoof_source else None

    def route(self, host: str):
        """The upstream proxy for this destination (None: direct), recorded in the capture."""
        proxy = self.proxy.router.choose(host)
        capture_record.record_route(self.record, proxy)
        return proxy

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
    def refuse(self, exc: WireError) -> None:
        """Bad input from the client: log it, answer 400 where HTTP is spoken (a GOAWAY over
        HTTP/2: nothing of its is sent upstream past the bad bytes), close."""
        observer = self.observer
        speaks_h1 = (self.stage in (Stage.FRONT, Stage.PLAIN) and self.mode != "socks5") or (
            self.stage == Stage.TLS and isinstance(observer, Http1Observer))
        refusal, reply = refusal_of(exc, speaks_h1=speaks_h1)
        if self.stage == Stage.TLS and isinstance(observer, Http2Observer):
            reply = goaway(observer.highest_stream, observer.error_code, refusal.message)
        self.send_to_client(reply)
        self._close_refused(refusal)

    def _close_refused(self, refusal: Refusal) -> None:
        log.warning("%s:%s: %s", *self.peer, refusal.log_line)
        capture_record.record_error(self.record, refusal.stage, refusal.message)
        self.close_client()

    def client_tls_failed(self, exc: ssl.SSLError) -> None:
        """The client refused our handshake (``TlsRelay.client_refused`` remembers why)."""
        reason = exc.reason or str(exc)
        if self.tls_relay is not None:
            self.tls_relay.client_refused(reason)
        self.fail("client-tls", f"TLS with the client failed: {reason}")

    def fail(self, stage: str, message: str) -> None:
        self._close_refused(Refusal(stage, message))

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
