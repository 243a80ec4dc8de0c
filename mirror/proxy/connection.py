"""One client connection through the proxy, from accept to the capture record.

1. Front: where is the client going? Transparent: the original destination (REDIRECT or
   TPROXY). Explicit HTTP: a CONNECT, or an absolute-form request for plain HTTP. SOCKS5: the
   CONNECT request.
2. First bytes: a TLS ClientHello (read whole, kept raw), a plain HTTP request, or anything
   else (relayed as raw bytes). ``--ignore-hosts`` matches and hellos that cannot be parsed as
   ours to terminate are passed through untouched.
3. TLS, upstream first: the upstream connection is opened (by the event loop's libcurl multi
   handle) with the client's hello mirrored (``emit``), and the client's handshake is finished
   only then, with a leaf minted for its SNI, offering the one protocol the server chose (or
   none). A client that offered h2 to an HTTP/1.1-only server therefore speaks HTTP/1.1 itself.
4. Relay: the client's plaintext goes upstream unchanged (its HTTP/1 heads in their order and
   case, its HTTP/2 frames as sent), after the observer has recorded and checked it; the
   server's bytes come back unchanged. Failures reach the client as 502 / 504 with the reason.
5. The end: one capture record goes to the store; its full reports are made there, from the
   raw hello and SYNs (``store.deferred``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import struct
import time

import orjson

from mirror.emit.relay_plan import cached_relay_plan
from mirror.emit.upstream import UpstreamTarget
from mirror.fingerprint.hello_diff import sent_hello_report
from mirror.fingerprint.report import jsonable
from mirror.net.listen import unmapped
from mirror.net.saved_syn import client_syn
from mirror.net.tls_server import ServerTls
from mirror.proxy.error_reply import (
    H2ErrorResponder,
    goaway,
    h2_error_headers,
    h2_settings_empty,
    http1_error,
    rst_stream,
)
from mirror.proxy.observe import Http1Observer, Http2Observer, observer_for
from mirror.proxy.original_dst import OriginalDestinationError, original_destination
from mirror.proxy.plain_upstream import PlainUpstream
from mirror.proxy.response_timeout import STAGE as RESPONSE_TIMEOUT
from mirror.proxy.response_timeout import (
    ResponseDeadlines,
    ResponseTimer,
    StreamWaits,
    unsent_bytes,
)
from mirror.proxy.upstream_io import UpstreamPipe
from mirror.store import record_values
from mirror.store.deferred import Deferred
from mirror.store.record_values import (
    emitted_fingerprint_of,
    fidelity_report,
    plan_fidelity_of,
    syn_report_of,
    tls_report_of,
)
from mirror.wire import socks5
from mirror.wire.errors import WireError
from mirror.wire.http1 import parse_request_head
from mirror.wire.proxy_request import (
    parse_connect_target,
    proxy_authorization,
    rewrite_request_for_origin,
    split_absolute_form,
)
from mirror.wire.tls import looks_like_tls, read_client_hello

log = logging.getLogger("mirror.proxy")

CLIENT_WRITE_HIGH = 1 << 18  # bytes queued towards the client before the upstream is paused
HIGH_WATER = 1 << 20          # bytes buffered towards one side before reading the other pauses
MAX_FIRST_BYTES = record_values.MAX_FIRST_BYTES   # a larger front request / ClientHello is refused
HTTP_REQUEST_START = re.compile(rb"[A-Z]{1,20} [^ \r\n]+ HTTP/1\.[01]\r?\n|[A-Z]{1,20} [^ \r\n]{0,8192}$")
HTTP_METHOD_PREFIX = re.compile(rb"[A-Z]{1,20}")

# alerts a client sends when it does not accept the certificate it was shown
CERT_REFUSALS = frozenset({"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                           "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                           "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR"})


_PLAN_VIEWS: dict[int, tuple] = {}


def _plan_views_json(plan) -> bytes:
    """A plan's emitted fingerprint and TLS verdicts, encoded once per plan (plans are shared
    between hellos of one shape) for the store process, which then needs no libcurl."""
    entry = _PLAN_VIEWS.get(id(plan))
    if entry is None or entry[0] is not plan:
        if len(_PLAN_VIEWS) >= 512:
            _PLAN_VIEWS.clear()
        tls = {name: (f.status, f.detail) for name, f in plan.fidelity.items()}
        views = orjson.dumps([jsonable(plan.plan.fingerprint), fidelity_report(tls, {})],
                             default=repr, option=orjson.OPT_NON_STR_KEYS)   # never raises
        entry = _PLAN_VIEWS[id(plan)] = (plan, views)
    return entry[1]


def _timeout_response() -> dict:
    """What the capture records as the response to a request --upstream-response-timeout
    gave up on."""
    return {"status": 504, "reason": "Gateway Timeout", "headers": [], "made_by": "mirror",
            "error": RESPONSE_TIMEOUT, "time": time.time()}


# stages
FRONT, FIRST, CONNECTING, TLS, PLAIN, RAW, ERROR, CLOSED = range(8)


class ProxyConnection(asyncio.Protocol):
    """The client side of one proxied connection (an asyncio Protocol)."""

    def __init__(self, proxy, mode: str, target: tuple[str, str, int] | None = None) -> None:
        self.proxy = proxy
        self.mode = mode
        self.target = target          # reverse mode: the one origin (scheme, host, port)
        self.loop = proxy.loop
        self.transport: asyncio.Transport | None = None
        self.stage = FRONT if mode in ("http", "socks5") else FIRST
        self.buffer = bytearray()
        self.dst: tuple[str, int, str] | None = None
        self.sni: str | None = None
        self.tcp_fidelity: dict = {}  # what our SYN carried, per field (filled once connected)
        self.tls: ServerTls | None = None
        self.pipe: UpstreamPipe | None = None
        self.plain: PlainUpstream | None = None
        self.observer = None
        self.error_h2: H2ErrorResponder | None = None
        self.socks_state = "greeting"
        self.timer: asyncio.TimerHandle | None = None
        self.client_paused = False
        self.record: dict = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.peer = ("?", 0)
        self.error_status = (502, "upstream", "")
        self.client_eof = False
        self.admitted = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.waits: ResponseDeadlines | None = None    # --upstream-response-timeout
        self.response_timer: ResponseTimer | None = None
        self.h2_cancel: list[int] = []    # streams to reset upstream once the client is

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = (unmapped(host), port)
        sock = transport.get_extra_info("socket")
        self.syn, syn_report = client_syn(sock, report=False)
        if syn_report is None:
            syn_report = Deferred(syn_report_of, self.syn.raw)   # made by the store's writer
        self.record = {
            "started": time.time(), "ended": None, "mode": self.mode,
            "client": {"addr": self.peer[0], "port": self.peer[1]},
            "destination": None, "sni": None, "protocol": None, "alpn": None,
            "tcp": syn_report, "tls": None, "http": None, "emitted": None,
            "upstream": {"route": "direct", "error": None}, "error": None,
            "bytes": {"up": 0, "down": 0},
        }
        self.proxy.connection_opened(self)
        refusal = self.proxy.access.admit(self.peer[0])
        if refusal is not None:
            self._fail("access", f"refused: {refusal}")
            return
        self.admitted = True
        self.timer = self.loop.call_later(self.proxy.config.first_bytes_timeout, self._first_timeout)
        self.last_activity = self.loop.time()
        self.idle_timer = self.loop.call_later(self.proxy.config.idle_timeout, self._idle_check)
        if self.mode == "reverse":
            self._set_destination(self.target[1], self.target[2], "reverse")
        elif self.mode == "transparent":
            try:
                host, port, how = original_destination(sock, tproxy=self.proxy.config.tproxy)
            except OriginalDestinationError as exc:
                self._fail("front", str(exc))
                return
            try:
                self._set_destination(host, port, how)
            except WireError as exc:
                self._refuse(exc)

    def connection_lost(self, exc) -> None:
        if self.stage == CLOSED:
            return
        self.stage = CLOSED
        if self.timer:
            self.timer.cancel()
        if self.idle_timer:
            self.idle_timer.cancel()
        if self.response_timer is not None:
            self.response_timer.cancel()
        if self.pipe is not None:
            self.pipe.close()
        if self.plain is not None:
            self.plain.close()
        if self.admitted:
            self.proxy.access.release(self.peer[0])
        self._finish_record()
        self.proxy.connection_closed(self)

    def _idle_check(self) -> None:
        """Close a connection on which nothing moved, either way, for --idle-timeout."""
        if self.stage == CLOSED:
            return
        idle = self.loop.time() - self.last_activity
        limit = self.proxy.config.idle_timeout
        if idle >= limit:
            log.info("%s:%s: idle for %.0fs, closing", *self.peer, idle)
            self.record["error"] = self.record["error"] or {
                "stage": "idle", "message": f"nothing sent either way for {idle:.0f}s"}
            self._close_client()
            if self.plain is not None:
                self.plain.close()
            return
        self.idle_timer = self.loop.call_later(limit - idle, self._idle_check)

    def _first_timeout(self) -> None:
        """A client that has not finished its start in time (a slowloris trickle included) is
        closed: the proxy request or SOCKS5 exchange, the ClientHello, the TLS handshake, the
        first HTTP/1 request head on a plain relay."""
        starting = (self.stage in (FRONT, FIRST)
                    or (self.stage == TLS and not self.tls.handshake_done)
                    or (self.stage == PLAIN and self.observer is not None
                        and self.observer.count == 0))
        if starting:
            self._fail("client-timeout", f"the client did not finish its start (request head, "
                                         f"ClientHello or TLS handshake) within "
                                         f"{self.proxy.config.first_bytes_timeout:.0f}s")

    # ------------------------------------------------------------------ input from the client
    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        try:
            self._receive(data)
        except WireError as exc:
            self._refuse(exc)
        except ssl.SSLError as exc:
            self._client_tls_failed(exc)

    def eof_received(self):
        """Plain relays pass a half-close on; once both directions have ended, both close."""
        if self.stage not in (PLAIN, RAW) or self.plain is None:
            return None
        self.client_eof = True
        self.plain.write_eof()
        if self.plain.eof:
            self._close_both()
        return True

    def _receive(self, data: bytes) -> None:
        stage = self.stage
        if stage == TLS:
            self._client_tls_bytes(data)
        elif stage == PLAIN or stage == RAW:
            self._to_plain_upstream(data)
        elif stage == FRONT:
            self.buffer += data
            self._front()
        elif stage == FIRST:
            self.buffer += data
            self._first_bytes()
        elif stage == CONNECTING:
            self.buffer += data
            if len(self.buffer) > HIGH_WATER:
                self._pause_client()
        elif stage == ERROR:
            self._error_bytes(data)

    # ------------------------------------------------------------------ front (explicit modes)
    def _front(self) -> None:
        if self.mode == "socks5":
            self._socks()
            return
        head = parse_request_head(bytes(self.buffer), **self.proxy.head_limits)
        if head is None:
            return
        if not self.proxy.access.check(*(proxy_authorization(head) or (None, None))):
            log.warning("%s:%s: refused: proxy authentication required or wrong", *self.peer)
            self.record["error"] = {"stage": "access", "message": "proxy authentication failed"}
            self.transport.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b'Proxy-Authenticate: Basic realm="mirror"\r\n'
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            self._close_client()
            return
        if head.method == "CONNECT":
            host, port = parse_connect_target(head.target)
            rest = bytes(self.buffer[head.length:])
            self.buffer = bytearray()
            self._set_destination(host, port, "connect")
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.stage = FIRST
            if rest:
                self._receive(rest)
            return
        target = split_absolute_form(head.target)
        if target.scheme != "http":
            raise WireError(f"a proxy request for {target.scheme}:// must use CONNECT",
                            layer="http1")
        self._set_destination(target.host, target.port, "absolute-form")
        origin = (target.host, target.port)

        def rewrite(next_head):
            if next_head.target.startswith("/"):
                return rewrite_request_for_origin(next_head.raw, next_head, next_head.target)
            again = split_absolute_form(next_head.target)
            if (again.host, again.port) != origin:
                raise WireError(f"request for {again.host}:{again.port} on a connection to "
                                f"{origin[0]}:{origin[1]}; open a new connection",
                                layer="http1")
            return rewrite_request_for_origin(next_head.raw, next_head, again.origin_form,
                                              host_header=again.host_header_value)

        self.observer = Http1Observer(rewrite=rewrite, **self.proxy.head_limits)
        data = bytes(self.buffer)
        self.buffer = bytearray()
        self._start_plain("http", data)

    def _socks(self) -> None:
        try:
            self._socks_steps()
        except socks5.RequestError as exc:
            self.transport.write(socks5.reply(exc.reply_code))
            raise

    def _socks_steps(self) -> None:
        while True:
            if self.socks_state == "greeting":
                greeting = socks5.parse_greeting(bytes(self.buffer))
                if greeting is None:
                    return
                del self.buffer[:greeting.length]
                method = socks5.choose_method(
                    greeting, require_auth=self.proxy.access.credentials is not None)
                self.transport.write(socks5.method_reply(method))
                if method == socks5.METHOD_NONE_ACCEPTABLE:
                    self._fail("front", "SOCKS5 client offered no acceptable method")
                    return
                self.socks_state = "auth" if method == socks5.METHOD_USERPASS else "request"
            elif self.socks_state == "auth":
                # checked against --proxy-auth if set (else any is accepted); never recorded
                credentials = socks5.parse_userpass(bytes(self.buffer))
                if credentials is None:
                    return
                del self.buffer[:credentials.length]
                accepted = self.proxy.access.check(credentials.username, credentials.password)
                self.transport.write(socks5.userpass_reply(accepted))
                if not accepted:
                    self._fail("access", "refused: SOCKS5 username/password")
                    return
                self.socks_state = "request"
            elif self.socks_state == "request":
                request = socks5.parse_request(bytes(self.buffer))
                if request is None:
                    return
                del self.buffer[:request.length]
                if request.command != socks5.CMD_CONNECT:
                    self.transport.write(socks5.reply(socks5.COMMAND_NOT_SUPPORTED))
                    self._fail("front", f"SOCKS5 command {request.command} is not supported")
                    return
                try:
                    self._set_destination(request.host, request.port, "socks5")
                except WireError as exc:
                    raise socks5.RequestError(str(exc), socks5.NOT_ALLOWED) from None
                self.transport.write(socks5.reply(socks5.REP_SUCCEEDED))
                self.stage = FIRST
                self.socks_state = "done"
                if self.buffer:
                    self._first_bytes()
                return

    def _set_destination(self, host: str, port: int, how: str) -> None:
        self.dst = (host, port, how)
        self.record["destination"] = {"host": host, "port": port, "source": how}
        if self.proxy.is_own_address(host, port):
            loop = WireError(f"{host}:{port} is this proxy's own listener (a loop)", layer="front")
            loop.stage = "loop"           # what X-Mirror-Error and the record say
            raise loop

    # ------------------------------------------------------------------ first bytes
    def _first_bytes(self) -> None:
        data = bytes(self.buffer)
        kind = looks_like_tls(data)
        if kind is None:
            return
        if self.target is not None and kind != (self.target[0] == "https"):
            raise WireError(f"this listener forwards to {self.target[0]}://{self.target[1]}:"
                            f"{self.target[2]}; the client must speak "
                            f"{'TLS' if self.target[0] == 'https' else 'plain HTTP'}",
                            layer="front")
        if kind:
            hello = read_client_hello(data, max_size=MAX_FIRST_BYTES)
            if hello is None:
                return
            self.buffer = bytearray()
            self._start_tls(hello, data)
            return
        self.buffer = bytearray()
        looks_http = HTTP_REQUEST_START.match(data)
        if looks_http is None and len(data) < 24 and HTTP_METHOD_PREFIX.fullmatch(data):
            self.buffer = bytearray(data)         # too few bytes to tell yet
            return
        if looks_http is not None:
            self.observer = Http1Observer(**self.proxy.head_limits)
            self._start_plain("http", data)
        else:
            self._start_plain("raw", data)

    def _source(self) -> str | None:
        """The address upstream connections leave from: the client's with --spoof-source."""
        return self.peer[0] if self.proxy.config.spoof_source else None

    def _record_tcp(self, result) -> None:
        """What our upstream SYN carried, next to what was emitted for TLS."""
        emitted = self.record["emitted"] = self.record["emitted"] or {
            "tls": None, "fidelity": Deferred(fidelity_report, {}, self.tcp_fidelity)}
        emitted["tcp"] = {"syn": result.syn}
        self.tcp_fidelity.update({name: (f.status, f.detail) for name, f in result.fidelity.items()})

    def _record_sent_hello(self, up, first: bytes) -> None:
        """The hello written upstream (BoringSSL's message callback saw it) compared with the
        client's, field by field: the record's TLS fidelity measured, not predicted."""
        tls = (self.record.get("emitted") or {}).get("tls")
        sent = getattr(up, "sent_hello", None)
        if isinstance(tls, dict) and sent is not None:
            tls["hello"] = Deferred(sent_hello_report, first, sent,
                                    tls["hello"]["predicted_exact"])

    def _route(self, host: str):
        """The upstream proxy for this destination (None: direct), recorded in the capture."""
        proxy = self.proxy.router.choose(host)
        self.record["upstream"]["route"] = "direct" if proxy is None else f"via {proxy.display}"
        if proxy is not None:
            tunnel = "HTTP CONNECT" if proxy.tunnels_http else "SOCKS5"
            self.record["upstream"]["proxy_exchange"] = (
                f"{tunnel} with the upstream proxy, made by mirror (not the client's)")
        return proxy

    def _ignored(self, sni: str | None) -> bool:
        pattern = self.proxy.config.ignore_hosts
        if pattern is None:
            return False
        names = [n for n in (sni, self.dst[0] if self.dst else None) if n]
        return any(pattern.search(n) for n in names)

    # ------------------------------------------------------------------ TLS, upstream first
    def _start_tls(self, hello, first: bytes) -> None:
        self.sni = hello.sni
        self.record["sni"] = hello.sni
        # made by the store's writer, from the raw bytes (a parsed hello is not kept around)
        self.record["tls"] = Deferred(tls_report_of, first)
        self.record["alpn"] = {"offered": hello.alpn, "upstream": None, "client": None}
        if self._ignored(hello.sni) or self.proxy.is_unterminable(hello.sni or self.dst[0],
                                                                  self.dst[1]):
            self._start_plain("passthrough", first)
            return
        plan = cached_relay_plan(hello)
        views = _plan_views_json(plan)
        self.record["emitted"] = {
            "tls": {"fingerprint": Deferred(emitted_fingerprint_of, views),
                    "hello": {"measured": False, "predicted_exact": plan.hello_exact}},
            "fidelity": Deferred(plan_fidelity_of, views, self.tcp_fidelity)}
        impossible = {k: v.detail for k, v in plan.fidelity.items() if v.status == "impossible"}
        if impossible:
            policy = self.proxy.config.on_mismatch
            summary = "; ".join(f"{name}: {why}" for name, why in impossible.items())
            if policy == "strict":
                self._fail("strict", f"refused (--on-mismatch strict): this ClientHello cannot "
                                     f"be mirrored exactly: {summary}")
                return
            if policy == "passthrough":
                log.warning("%s:%s: passed through untouched (--on-mismatch passthrough): %s",
                            *self.peer, summary)
                self.record["emitted"] = None
                self._start_plain("passthrough", first)
                return
            self.proxy.warn_once(plan.ja4_o,
                                 "%s:%s: mirrored with differences (logged once per JA4_o): %s",
                                 *self.peer, summary)
        self.record["protocol"] = "tls"
        self.stage = CONNECTING
        self._pause_client()
        host, port, _ = self.dst
        target = UpstreamTarget(self.proxy.resolve(host, port), port, hello.sni or host)
        route = self._route(hello.sni or host)
        opening = self.proxy.open_upstream(target, plan, hello, route, self.syn,
                                           self._source())
        opening.add_done_callback(lambda done: self._upstream_opened(done, first))

    def _upstream_opened(self, future: asyncio.Future, first: bytes) -> None:
        up, context, error, tcp = future.result()
        if tcp is not None:
            self._record_tcp(tcp)
        if self.stage == CLOSED:
            if up is not None:
                up.close()
            return
        self.tls = tls = ServerTls(context)
        data = bytes(self.buffer)         # what the client sent after its ClientHello
        self.buffer = bytearray()
        try:
            tls.receive(first)            # its ClientHello: our flight is made now
        except ssl.SSLError as exc:
            if up is not None:
                up.close()
            self._client_tls_failed(exc)
            return
        if error is not None:
            self._upstream_failed(error, data)
            return
        self.record["alpn"]["upstream"] = up.alpn
        self._record_sent_hello(up, first)
        self.pipe = UpstreamPipe(self.loop, up, self._from_upstream, self._upstream_closed,
                                 self._upstream_drained)
        self.observer = observer_for(up.alpn, **self.proxy.head_limits)
        self._watch_responses()
        self.stage = TLS
        try:
            self._client_tls_bytes(data)
        except WireError as exc:
            self._refuse(exc)
            return
        except ssl.SSLError as exc:
            self._client_tls_failed(exc)
            return
        if self.stage == TLS:
            self._resume_client()

    def _upstream_failed(self, error: Exception, data: bytes) -> None:
        stage = getattr(error, "stage", "upstream-connect")
        message = str(error)
        self.record["upstream"]["error"] = message
        self.record["error"] = {"stage": stage, "message": message}
        log.warning("%s:%s -> %s:%s: %s: %s", *self.peer, self.dst[0], self.dst[1], stage, message)
        status = 504 if getattr(error, "timeout", False) else 502
        self.stage = ERROR
        self.error_status = (status, stage, message)
        self._resume_client()
        self._error_bytes(data)

    def _error_bytes(self, data: bytes) -> None:
        """Finish the client's handshake and answer its request(s) with the error."""
        tls = self.tls
        try:
            plaintext = tls.receive(data) if tls is not None else data
        except ssl.SSLError as exc:
            self._client_tls_failed(exc)
            return
        if tls is not None:
            self._flush_tls()
            if not tls.handshake_done:
                return
            alpn = tls.alpn
            self.record["alpn"]["client"] = alpn
        else:
            alpn = None
        status, stage, message = self.error_status
        if alpn == "h2":
            if self.error_h2 is None:
                self.error_h2 = H2ErrorResponder(status, stage, message)
                self._send_plain(self.error_h2.initial())
            if plaintext:
                self._send_plain(self.error_h2.receive(plaintext))
            if self.error_h2.done:
                self._close_client()
        else:
            self._send_plain(http1_error(status, stage, message))
            self._close_client()

    def _client_tls_bytes(self, data: bytes) -> None:
        tls = self.tls
        was_done = tls.handshake_done
        plaintext = tls.receive(data)
        if not was_done:
            self._flush_tls()
            if not tls.handshake_done:
                return
            self.record["alpn"]["client"] = tls.alpn
            self.pipe.start()      # server bytes can go to the client from now on
        if plaintext:
            self.bytes_up += len(plaintext)
            forward = self.observer.feed(plaintext)
            self.observer.stamp(time.time())
            self.pipe.write(forward)
            if self.waits is not None:
                self._tls_wait()
            if self.pipe.buffered > HIGH_WATER:
                self._pause_client()
        if tls.closed:
            self._close_client()

    def _from_upstream(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.bytes_down += len(data)
        self.observer.server_bytes(data)
        self.observer.stamp(time.time())
        self.tls.send(data)
        self._flush_tls()
        if self.waits is not None:
            self._tls_wait(server=True)

    def _upstream_drained(self) -> None:
        self._resume_client()

    def _upstream_closed(self, error: Exception | None) -> None:
        if error is not None:
            self.record["error"] = {"stage": getattr(error, "stage", "relay"), "message": str(error)}
            log.info("%s:%s: upstream closed: %s", *self.peer, error)
            # a reset upstream is passed on as a reset: a clean close_notify + FIN would let
            # a body delimited by the connection's end look complete
            self._close_client(abort=True)
            return
        if self.tls is not None and self.transport is not None:
            self.tls.close()
            self._flush_tls()
        self._close_client()

    def _flush_tls(self) -> None:
        out = self.tls.outgoing()
        if out and self.transport is not None:
            self.transport.write(out)

    def _send_plain(self, data: bytes) -> None:
        if not data or self.transport is None:
            return
        if self.tls is not None:
            self.tls.send(data)
            self._flush_tls()
        else:
            self.transport.write(data)

    # ------------------------------------------------------------------ plain TCP upstream
    def _start_plain(self, protocol: str, first: bytes) -> None:
        self.record["protocol"] = protocol
        self.stage = PLAIN if protocol == "http" else RAW
        self.plain = PlainUpstream(self)
        if protocol in ("http", "passthrough"):
            self._watch_responses()
        self._to_plain_upstream(first)
        host, port, _ = self.dst
        route = self._route(host)
        task = self.loop.create_task(self.plain.connect(
            self.proxy.resolve(host, port), port, self.proxy.config.connect_timeout,
            route, self.proxy.proxy_tls,
            self.proxy.tcp if route is None and self.syn is not None else None, self.syn,
            self._source()))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _to_plain_upstream(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_up += len(data)
        if self.observer is not None and self.stage == PLAIN:
            data = self.observer.feed(data)
            self.observer.stamp(time.time())
        self.plain.write(data)
        if self.waits is not None:
            self._plain_wait()
        if self.plain.buffered() > HIGH_WATER:
            self._pause_client()

    def plain_failed(self, stage: str, message: str, timeout: bool) -> None:
        self.record["upstream"]["error"] = message
        self.record["error"] = {"stage": stage, "message": message}
        log.warning("%s:%s -> %s:%s: %s: %s", *self.peer, self.dst[0], self.dst[1], stage, message)
        if self.stage == PLAIN and self.transport is not None:
            self.transport.write(http1_error(504 if timeout else 502, stage, message))
        self._close_client()

    def plain_data(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.waits is not None:
            self._plain_wait(server=True)
        self.bytes_down += len(data)
        if self.observer is not None:
            self.observer.server_bytes(data)
            self.observer.stamp(time.time())
        if self.transport is not None:
            self.transport.write(data)

    def plain_eof(self) -> None:
        if self.client_eof or self.transport is None or not self.transport.can_write_eof():
            self._close_both()
        else:
            self.transport.write_eof()

    def _close_both(self) -> None:
        self._close_client()
        if self.plain is not None:
            self.plain.close()

    # ------------------------------------------------------------------ upstream response timeout
    def _watch_responses(self) -> None:
        """Time requests sent whole until their response head (mirror.proxy.response_timeout)."""
        timeout = self.proxy.config.upstream_response_timeout
        if timeout <= 0:
            return
        self.waits = ResponseDeadlines(timeout, self.loop.time)
        self.response_timer = ResponseTimer(self.loop, self.waits, self._responses_overdue)
        if isinstance(self.observer, Http2Observer):
            self.observer.waits = StreamWaits(self.waits)

    def upstream_ready(self) -> None:
        """The plain upstream is connected (and tunnelled): what was queued has gone out."""
        if self.waits is not None:
            self._plain_wait()

    def _plain_wait(self, server: bool = False) -> None:
        if self.stage == RAW:          # passthrough TLS: only until the server's first byte
            if server:
                self.waits = None
                self.response_timer.cancel()
            elif self.plain.ready:
                self.waits.waiting("raw")
                self.response_timer.update()
            return
        self._h1_wait(server, self.plain.ready)

    def _tls_wait(self, server: bool = False) -> None:
        if isinstance(self.observer, Http1Observer):
            self._h1_wait(server, True)
            return
        if self.observer.waits.owed:
            self._answer_late_streams()
        if self.h2_cancel:
            self._cancel_upstream_streams()
        self.response_timer.update()

    def _h1_wait(self, server: bool, sent: bool) -> None:
        if server:
            self.waits.answered("h1")          # any server byte ends a wait
        if sent and self.observer.awaiting_response():
            self.waits.waiting("h1")
        else:
            self.waits.answered("h1")
        self.response_timer.update()

    def _responses_overdue(self, keys: list) -> None:
        timeout = self.waits.timeout
        if self.stage != RAW and self._request_unsent():
            # the server has not taken the whole request yet (a slow reader of a large
            # body): the wait starts over from now
            for key in keys:
                self.waits.waiting(key)
            return
        if self.stage == RAW:
            message = (f"the server sent nothing within {timeout:g}s of the client's "
                       f"ClientHello (a passthrough tunnel: closed, no HTTP answer possible)")
            self.record["upstream"]["error"] = message
            self.record["error"] = {"stage": RESPONSE_TIMEOUT, "message": message}
            log.warning("%s:%s -> %s:%s: %s: %s", *self.peer, self.dst[0], self.dst[1],
                        RESPONSE_TIMEOUT, message)
            self._close_both()
            return
        message = f"the server sent no response head within {timeout:g}s of the request"
        response = _timeout_response()
        if self.stage == PLAIN:
            self.observer.mark_response(response)
            self.plain_failed(RESPONSE_TIMEOUT, message, timeout=True)
            self.plain.close()
        elif self.stage == TLS and isinstance(self.observer, Http1Observer):
            self.observer.mark_response(response)
            self.record["upstream"]["error"] = message
            self.record["error"] = {"stage": RESPONSE_TIMEOUT, "message": message}
            log.warning("%s:%s -> %s:%s: %s: %s", *self.peer, self.dst[0], self.dst[1],
                        RESPONSE_TIMEOUT, message)
            self._send_plain(http1_error(504, RESPONSE_TIMEOUT, message))
            self._close_client()
            self.pipe.close()
        elif self.stage == TLS:
            self.observer.waits.owe(keys)
            self._answer_late_streams()
            if self.h2_cancel:
                self._cancel_upstream_streams()

    def _request_unsent(self) -> bool:
        """Bytes towards the server still in our buffer or unacknowledged in the kernel's."""
        if self.plain is not None:
            sock = self.plain.transport.get_extra_info("socket") if self.plain.transport else None
            return bool(self.plain.buffered() or (sock is not None
                                                  and unsent_bytes(sock.fileno())))
        if self.pipe is not None:
            return bool(self.pipe.buffered or unsent_bytes(self.pipe.up.fd))
        return False

    def _answer_late_streams(self) -> None:
        """A 504 HEADERS frame on each overdue HTTP/2 stream, put between the server's frames
        (a server that has not even sent its SETTINGS gets the connection closed)."""
        state = self.observer.server_state()
        if state == "mid-frame":
            return                       # after the frame under way (the next server bytes)
        streams = self.observer.waits.take_owed()
        if state == "lost" or not streams:   # "lost": the server's frames are not followed
            return
        message = f"the server sent no response head within {self.waits.timeout:g}s"
        self.record["error"] = self.record["error"] or {
            "stage": RESPONSE_TIMEOUT, "message": f"stream {streams[0]}: {message}"}
        log.warning("%s:%s -> %s:%s: %s: HTTP/2 stream(s) %s: %s", *self.peer, self.dst[0],
                    self.dst[1], RESPONSE_TIMEOUT, streams, message)
        frames = [h2_settings_empty()] if state == "silent" else []
        for stream in streams:
            frames.append(h2_error_headers(stream, 504, RESPONSE_TIMEOUT, message))
            self.observer.mark_response(stream, dict(_timeout_response(), stream_id=stream))
        self.h2_cancel += streams
        if state == "silent":
            frames.append(goaway(self.observer.highest_stream, 0, "the server sent nothing"))
            self._send_plain(b"".join(frames))
            self._close_client()
            self.pipe.close()
            return
        self._send_plain(b"".join(frames))

    def _cancel_upstream_streams(self) -> None:
        """RST_STREAM (CANCEL) upstream for streams answered with a 504, between the client's
        frames, so the server does not answer them late."""
        if self.pipe is not None and self.observer.reader.at_frame_boundary:
            self.pipe.write(b"".join(rst_stream(stream) for stream in self.h2_cancel))
            self.h2_cancel = []

    # ------------------------------------------------------------------ flow control
    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_reading()
        if self.plain is not None:
            self.plain.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_reading()
        if self.plain is not None:
            self.plain.resume_reading()

    def _pause_client(self) -> None:
        if not self.client_paused and self.transport is not None:
            self.transport.pause_reading()
            self.client_paused = True

    def _resume_client(self) -> None:
        if self.client_paused and self.transport is not None and self.stage != CLOSED:
            self.client_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ endings
    def _refuse(self, exc: WireError) -> None:
        """Bad input from the client: log it, answer 400 where HTTP is spoken, close."""
        layer = getattr(exc, "layer", "wire")
        message = str(exc) if str(exc).startswith(f"{layer}:") else f"{layer}: {exc}"
        log.warning("%s:%s: refused: %s", *self.peer, message)
        stage = getattr(exc, "stage", "parse")
        self.record["error"] = {"stage": stage, "message": message}
        speaks_h1 = (self.stage in (FRONT, PLAIN) and self.mode != "socks5") or (
            self.stage == TLS and isinstance(self.observer, Http1Observer)) or (
            self.stage == FIRST and HTTP_REQUEST_START.match(bytes(self.buffer)) is not None)
        if speaks_h1 and self.transport is not None:
            self._send_plain(http1_error(400, stage, message))
        elif self.stage == TLS and isinstance(self.observer, Http2Observer):
            # HTTP/2: tell the client why with a GOAWAY (our own frame: nothing of its is sent
            # upstream past the bad bytes), then close
            self._send_plain(goaway(self.observer.highest_stream, self.observer.error_code,
                                    message))
        self._close_client()

    def _client_tls_failed(self, exc: ssl.SSLError) -> None:
        """The client refused our handshake. If it refused our certificate (pinning, or a CA
        it does not trust), later connections to this host are passed through untouched."""
        reason = exc.reason or str(exc)
        if self.tls is not None and not self.tls.handshake_done and reason in CERT_REFUSALS \
                and self.dst is not None:
            host = self.sni or self.dst[0]
            self.proxy.remember_unterminable(host, self.dst[1])
            log.warning("%s:%s: the client refused the certificate for %s (%s); passing %s:%s "
                        "through untouched from now on", *self.peer, host, reason, host, self.dst[1])
        self._fail("client-tls", f"TLS with the client failed: {reason}")

    def _fail(self, stage: str, message: str) -> None:
        log.warning("%s:%s: %s: %s", *self.peer, stage, message)
        self.record["error"] = {"stage": stage, "message": message}
        self._close_client()

    def _close_client(self, abort: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._finish_record()     # handed to the store before the client can see the close
        if abort:
            # an RST, as the server sent: a FIN would make a body delimited by the end of
            # the connection look complete
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()

    def _finish_record(self) -> None:
        record = self.record
        if record.get("ended") is not None:
            return
        record["ended"] = time.time()
        record["bytes"] = {"up": self.bytes_up, "down": self.bytes_down}
        if self.observer is not None:
            record["http"] = self.observer.report()
        self.proxy.store_record(record)
