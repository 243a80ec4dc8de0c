"""The TLS half of a relay, upstream first: the mirrored upstream is opened, then the client's
handshake is finished with a leaf for its SNI offering the protocol the server chose; then
the client's plaintext goes through the observer to the upstream and the server's back.

An upstream that could not be opened is told to the client once its handshake is done
(``ErrorAnswer``: a 502/504 over HTTP/1, or an HTTP/2 connection that answers every
request with it). ``conn`` is the ProxyConnection: the client side, its record and stage.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from mirror.net.tls_server import ServerTls, answer_hello
from mirror.proxy.capture_record import record_engine, record_error, record_sent_hello, record_tcp
from mirror.proxy.error_reply import H2ErrorResponder, http1_error
from mirror.proxy.observe import observer_for
from mirror.proxy.record_sizes import RecordSizes
from mirror.proxy.refusals import client_tls_failed, refuse
from mirror.proxy.response_watch import ResponseWatch
from mirror.proxy.stage import Stage
from mirror.proxy.upstream_route import source_address
from mirror.upstream.connection import UpstreamTarget
from mirror.upstream.engine import EngineChoice
from mirror.upstream.pipe import UpstreamPipe
from mirror.wire.errors import WireError

log = logging.getLogger("mirror.proxy")

HIGH_WATER = 1 << 20          # bytes buffered towards one side before reading the other pauses

# alerts a client sends when it does not accept the certificate it was shown
CERT_REFUSALS = frozenset({"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                           "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                           "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR"})


class TlsRelay:
    def __init__(self, conn) -> None:
        self.conn = conn
        self.tls: ServerTls | None = None
        self.pipe: UpstreamPipe | None = None
        self.early = bytearray()          # what the client sent while the upstream opened
        self.error: ErrorAnswer | None = None
        self.sizes = RecordSizes()        # the client's record lengths of what goes upstream

    def open(self, hello, plan, first: bytes, target: UpstreamTarget, route,
             choice: EngineChoice) -> None:
        """Open the mirrored upstream for ``hello`` (``first``: the raw bytes it came in) at
        ``target`` through ``route`` with the engine ``choice`` names."""
        conn = self.conn
        conn.record["protocol"] = "tls"
        conn.stage = Stage.CONNECTING
        conn.pause_client()
        opening = conn.proxy.open_upstream(target, plan, hello, route, conn.syn,
                                           source_address(conn), choice)
        opening.add_done_callback(lambda done: self._opened(done, first))

    @property
    def client_tls(self) -> ServerTls:
        """The client's TLS, made once the upstream has opened (the relay's stages after
        CONNECTING)."""
        if self.tls is None:
            raise RuntimeError("the client's TLS is made when the upstream has opened")
        return self.tls

    @property
    def upstream(self) -> UpstreamPipe:
        """The opened upstream (stage TLS)."""
        if self.pipe is None:
            raise RuntimeError("the upstream is not open")
        return self.pipe

    def receive_early(self, data: bytes) -> None:
        self.early += data
        if len(self.early) > HIGH_WATER:
            self.conn.pause_client()

    def _opened(self, future: asyncio.Future, first: bytes) -> None:
        conn = self.conn
        up, context, error, tcp = future.result()
        record_engine(conn.record, up, error)
        if tcp is not None:
            record_tcp(conn.record, conn.tcp_fidelity, tcp)
        if conn.stage == Stage.CLOSED:
            if up is not None:
                up.close()
            return
        tls = ServerTls(context)
        # its ClientHello: our flight (key exchange, signature) is made now, on a worker
        # thread (OpenSSL releases the interpreter lock); the client's later bytes keep
        # going to ``early`` meanwhile, and ``self.tls`` is set only once it is done
        answering = answer_hello(conn.loop, conn.proxy.executor, tls, first)
        answering.add_done_callback(lambda done: self._hello_answered(done, tls, first, up, error))

    def _hello_answered(self, answering: asyncio.Future, tls: ServerTls, first: bytes, up,
                        error: Exception | None) -> None:
        conn = self.conn
        if conn.stage == Stage.CLOSED or answering.cancelled():
            if up is not None:
                up.close()
            return
        self.tls = tls
        data = bytes(self.early)          # what the client sent after its ClientHello
        self.early = bytearray()
        failure = answering.exception()
        if failure is not None:
            if up is not None:
                up.close()
            if not isinstance(failure, ssl.SSLError):
                raise failure
            client_tls_failed(conn, failure)
            return
        if error is not None:
            self._upstream_failed(error, data)
            return
        conn.record["alpn"]["upstream"] = up.alpn
        record_sent_hello(conn.record, up, first)
        self.pipe = UpstreamPipe(conn.loop, up, self._from_upstream, self._upstream_closed,
                                 conn.resume_client)
        conn.observer = observer_for(up.alpn, **conn.proxy.head_limits)
        conn.watch = ResponseWatch.start(conn)
        conn.stage = Stage.TLS
        try:
            self.client_bytes(data)
        except WireError as exc:
            refuse(conn, exc)
            return
        except ssl.SSLError as exc:
            client_tls_failed(conn, exc)
            return
        if conn.stage == Stage.TLS:
            conn.resume_client()

    def _upstream_failed(self, error: Exception, data: bytes) -> None:
        conn = self.conn
        stage = getattr(error, "stage", "upstream-connect")
        message = str(error)
        record_error(conn.record, stage, message, upstream=True)
        log.warning("%s:%s -> %s:%s: %s: %s", *conn.peer, conn.dst.host, conn.dst.port, stage,
                    message)
        status = 504 if getattr(error, "timeout", False) else 502
        conn.stage = Stage.ERROR
        self.error = ErrorAnswer(self, status, stage, message)
        conn.resume_client()
        self.error.receive(data)

    def client_bytes(self, data: bytes) -> None:
        """The client's TLS bytes: its handshake, then plaintext for the upstream."""
        conn = self.conn
        tls, pipe = self.client_tls, self.upstream
        was_done = tls.handshake_done
        plaintext = tls.receive(data)
        if not was_done:
            self.flush()
            if not tls.handshake_done:
                return
            conn.record["alpn"]["client"] = tls.alpn
            pipe.start()           # server bytes can go to the client from now on
        if plaintext:
            conn.bytes_up += len(plaintext)
            forward = conn.observer.feed(plaintext)
            conn.observer.stamp(time.time())
            pipe.write(forward, self.sizes.forward(tls.record_sizes, len(forward)))
            if conn.watch is not None:
                conn.watch.tls()
            if pipe.buffered > HIGH_WATER:
                conn.pause_client()
        if tls.closed:
            conn.close_client()

    def _from_upstream(self, data: bytes | memoryview) -> None:
        conn = self.conn
        conn.last_activity = conn.loop.time()
        conn.bytes_down += len(data)
        conn.observer.server_bytes(data)
        conn.observer.stamp(time.time())
        self.client_tls.send(data)
        self.flush()
        if conn.watch is not None:
            conn.watch.tls(server=True)

    def _upstream_closed(self, error: Exception | None) -> None:
        conn = self.conn
        if error is not None:
            conn.record["error"] = {"stage": getattr(error, "stage", "relay"), "message": str(error)}
            log.info("%s:%s: upstream closed: %s", *conn.peer, error)
            # a reset upstream is passed on as a reset: a clean close_notify + FIN would let
            # a body delimited by the connection's end look complete
            conn.close_client(abort=True)
            return
        if self.tls is not None and conn.transport is not None:
            self.tls.close()
            self.flush()
        conn.close_client()

    def client_refused(self, reason: str) -> None:
        """The client refused our handshake for ``reason``. If it refused our certificate
        (pinning, or a CA it does not trust), later connections to this host and port are
        passed through untouched."""
        conn = self.conn
        if self.tls is None or self.tls.handshake_done or reason not in CERT_REFUSALS:
            return
        host = conn.record["sni"] or conn.dst.host
        conn.proxy.remember_unterminable(host, conn.dst.port)
        log.warning("%s:%s: the client refused the certificate for %s (%s); passing %s:%s "
                    "through untouched from now on", *conn.peer, host, reason, host,
                    conn.dst.port)

    def flush(self) -> None:
        out = self.client_tls.outgoing()
        if out and self.conn.transport is not None:
            self.conn.transport.write(out)

    def send(self, data: bytes) -> None:
        """Plaintext to the client, encrypted."""
        self.client_tls.send(data)
        self.flush()

    def close(self) -> None:
        """Close the upstream and let go of it (its pipe holds this relay's callbacks)."""
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


class ErrorAnswer:
    """Finish the client's handshake and answer its request(s) with the upstream's failure."""

    def __init__(self, relay: TlsRelay, status: int, stage: str, message: str) -> None:
        self.relay = relay
        self.status, self.stage, self.message = status, stage, message
        self.h2: H2ErrorResponder | None = None

    def receive(self, data: bytes) -> None:
        conn = self.relay.conn
        tls = self.relay.client_tls
        try:
            plaintext = tls.receive(data)
        except ssl.SSLError as exc:
            client_tls_failed(conn, exc)
            return
        self.relay.flush()
        if not tls.handshake_done:
            return
        alpn = conn.record["alpn"]["client"] = tls.alpn
        if alpn == "h2":
            if self.h2 is None:
                self.h2 = H2ErrorResponder(self.status, self.stage, self.message)
                conn.send_to_client(self.h2.initial())
            if plaintext:
                conn.send_to_client(self.h2.receive(plaintext))
            if self.h2.done:
                conn.close_client()
        else:
            conn.send_to_client(http1_error(self.status, self.stage, self.message))
            conn.close_client()
